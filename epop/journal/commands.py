"""
C{epop journal} and C{epop connections}: a relay's journal read by a person,
event by event or connection by connection.

They only read the file (L{epop.journal.reader}), as it is, so that they
work on a running relay's journal and on a copy of it alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python import usage

from epop.command import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Command, CommandOptions, output_lost
from epop.journal.connections import RunChecker, connection_summaries, connections_table
from epop.journal.events import EVENT_TYPES
from epop.journal.filters import JournalFilter, parse_connection, parse_since
from epop.journal.reader import (
    DEFAULT_JOURNAL,
    JournalFollower,
    NotAJournalFile,
    Problem,
    check_journal_path,
    read_journal,
)
from epop.journal.table import journal_header, journal_row, journal_table
from epop.journal.writer import rotated_files
from epop.messages import Text, reason_of, system_reason
from epop.printable import safe_json

__all__ = ["ConnectionsOptions", "JournalOptions", "connections", "journal"]


class _ReadingOptions(CommandOptions):
    """A journal's path (by default the relay's) and how far back to read it."""

    def parseArgs(self, path: str = DEFAULT_JOURNAL) -> None:
        self["path"] = path

    def postOptions(self) -> None:
        if self["since"] is not None:
            try:
                parse_since(self["since"], 0.0)
            except ValueError as e:
                raise usage.UsageError(reason_of(e)) from None


class JournalOptions(_ReadingOptions):
    synopsis = "[PATH] [--connection ID]... [--type TYPE]... [--since TIME] [--follow] [--json]"
    longdesc = (
        "Show a relay's journal (the manual's 'Journal d'ecoute'): client IP, local "
        "date, type and description of each event. PATH is the relay's --journal "
        f"file [default: {DEFAULT_JOURNAL}]; with --since, its rotated files are "
        "read too when they hold events that recent."
    )
    optFlags = [
        ["follow", "f", "Then print new events as the relay writes them, across rotations, until Ctrl-C."],
        ["json", None, "Print the records as they are, one JSON object a line."],
    ]
    optParameters = [
        ["since", None, None, "Only events from then on: 2026-11-25, 2026-11-25T08:30 (local time), today, yesterday, or a duration back from now: 30m, 1h, 2d."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["connections"] = []
        self["types"] = []

    def opt_connection(self, value: str) -> None:
        """Only the events of this connection: ID, or RUN:ID as connection numbers restart at each run (repeatable)."""
        try:
            self["connections"].append(parse_connection(value))
        except ValueError as e:
            raise usage.UsageError(reason_of(e)) from None

    def opt_type(self, value: str) -> None:
        """Only the events of this type, e.g. connection-closed (repeatable; the types are in docs/journal.md)."""
        if value not in EVENT_TYPES:
            raise usage.UsageError(
                Text("--type {value}: expected one of {types}", value=value, types=", ".join(EVENT_TYPES))
            )
        self["types"].append(value)


class ConnectionsOptions(_ReadingOptions):
    synopsis = "[PATH] [--since TIME] [--json]"
    longdesc = (
        "List the workstation connections a relay's journal tells of, open and "
        "closed (the manual's 'Connexions'): id, client, when opened and closed, "
        "duration, bytes in and out, and why it closed. It reads the journal as it "
        f"is, so it works on a running relay. PATH defaults to {DEFAULT_JOURNAL}."
    )
    optFlags = [["json", None, "Print one JSON object a connection."]]
    optParameters = [
        ["since", None, None, "Also read the rotated files back to then (same forms as 'epop journal --since'); connections closed before are left out."],
    ]


def _since(command: Command, options: _ReadingOptions) -> float | None:
    text = options["since"]
    return parse_since(text, command.reactor.seconds()) if text else None


def _problem(command: Command) -> Callable[[Problem], None]:
    """What to do with a line the reader cannot use: say so, and go on."""
    return lambda problem: command.tell(problem.describe())


#: Where the relay's journal is in the installation docs/install.md describes.
_EXAMPLE_JOURNAL = "/var/lib/epop/journal.jsonl"

#: Rotated files named in full in the hint; more are shortened to the oldest and newest.
_NAMED_ROTATED = 3


def _older_files_hint(command: Command, name: str, path: str) -> None:
    """
    Without --since only C{path} itself is read: say so when its rotated
    files hold older events, and how to read them too.
    """
    rotated = rotated_files(path)
    if not rotated:
        return
    names = [os.path.basename(each) for each in rotated]
    if len(names) > _NAMED_ROTATED:
        names = [names[0], "...", names[-1]]
    command.tell(
        Text("(older events are in {count} rotated file(s): {names}; --since reads them too, "
             "e.g. epop {command} {path} --since 2d)",
             count=len(rotated), names=", ".join(names), command=name, path=path)
    )


def _unreadable(command: Command, name: str, path: str, error: OSError) -> Deferred[int]:
    if isinstance(error, FileNotFoundError) and error.filename in (None, path):
        # The usual cause: run in a folder other than the relay's, with the default path.
        command.complain(
            Text("no journal at {path}: give the relay's journal file (its --journal), e.g. epop {command} {example}",
                 path=os.path.abspath(path), command=name, example=_EXAMPLE_JOURNAL)
        )
        return succeed(EXIT_USAGE)
    if isinstance(error, NotAJournalFile):
        message = error.describe()
    else:
        # The file that failed: the journal, or one of its rotated files.
        named = error.filename if isinstance(error.filename, str) else path
        message = Text("Cannot read {path}: {why}.", path=named, why=system_reason(error))
    command.tell(message)
    return succeed(EXIT_FAILED)


def journal(command: Command, options: JournalOptions) -> Deferred[int]:
    """C{epop journal}: the events, as a table or as JSON, then new ones with --follow."""
    path = options["path"]
    wanted = JournalFilter(tuple(options["connections"]), tuple(options["types"]), _since(command, options))
    if options["follow"]:
        try:
            # A device would be read forever, a FIFO would block: refused
            # now, not waited for.
            check_journal_path(path)
        except OSError as e:
            return _unreadable(command, "journal", path, e)
        return _follow(command, path, wanted, options["json"])
    try:
        records = [r for r in read_journal(path, wanted.since, _problem(command)) if wanted.matches(r)]
    except OSError as e:
        return _unreadable(command, "journal", path, e)
    if options["json"]:
        for record in records:
            command.say(safe_json(record))
    else:
        for line in journal_table(records, command.language):
            command.say(line)
    if wanted.since is None:
        _older_files_hint(command, "journal", path)
    return succeed(EXIT_OK)


def _follow(command: Command, path: str, wanted: JournalFilter, as_json: bool) -> Deferred[int]:
    # Follows until the reactor stops (Ctrl-C), or the reader of our
    # output goes away (epop journal -f | grep -m1 ...).
    done: Deferred[int] = Deferred()
    follower: JournalFollower | None = None

    def show(record: dict[str, Any]) -> None:
        if done.called or not wanted.matches(record):
            return
        try:
            if as_json:
                command.say(safe_json(record))
            else:
                command.say(journal_row(record, command.language))
            command.stdout.flush()
        except OSError as e:
            status = output_lost(e, command.stderr, command.language)
            if status is None:
                raise
            if follower is not None:
                follower.stop()
            done.callback(status)

    if not as_json:
        for line in journal_header(command.language):
            command.say(line)
    if wanted.since is not None:
        try:
            for record in read_journal(path, wanted.since, _problem(command), current=False):
                show(record)
                if done.called:
                    return done
        except OSError as e:
            return _unreadable(command, "journal", path, e)
    else:
        _older_files_hint(command, "journal", path)
    follower = JournalFollower(path, show, command.reactor, on_problem=_problem(command))
    follower.start()
    if follower.waiting:
        command.tell(Text("Waiting for {path} to appear.", path=path))
    command.reactor.addSystemEventTrigger("before", "shutdown", follower.stop)
    return done


def connections(command: Command, options: ConnectionsOptions) -> Deferred[int]:
    """C{epop connections}: one line (or JSON object) a connection, open or closed."""
    path = options["path"]
    since = _since(command, options)
    try:
        records = list(read_journal(path, since, _problem(command)))
    except OSError as e:
        return _unreadable(command, "connections", path, e)
    summaries = [
        summary
        for summary in connection_summaries(records, command.reactor.seconds(), RunChecker(path, records))
        if since is None or summary.closed is None or summary.closed >= since
    ]
    if options["json"]:
        for summary in summaries:
            command.say(safe_json(summary.to_json()))
    elif not summaries:
        command.tell(Text("No connections in {path}.", path=path))
    else:
        for line in connections_table(summaries, command.language):
            command.say(line)
    if since is None:
        _older_files_hint(command, "connections", path)
    return succeed(EXIT_OK)
