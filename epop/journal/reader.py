"""
Reading the relay's journal back, for C{epop journal} and C{epop connections}.

The original e-POP server showed its "Journal d'écoute" and "Connexions" in
a window, live.  Here the journal is a file of JSON lines (see
L{epop.journal.writer}); this module reads it (rotated files included), filters it
the way the manual's window did, follows it as it grows (across rotations),
and computes the connections it describes.  A torn last line (the relay
crashed, or is writing it right now) is skipped; any other line that is not
a record is reported and skipped, and reading goes on.

Only regular files are read (L{open_journal}): a device such as
C{/dev/zero} or C{/dev/full} never ends and has no newline, and a FIFO
would block the reader.  And a line is read up to L{MAX_LINE} bytes only:
a longer one (a wrong file, a corrupted one) is reported and skipped in
bounded chunks, so memory stays small whatever the file holds.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import IO, Any

from twisted.internet.task import LoopingCall

from epop.journal.writer import rotated_files
from epop.messages import Text
from epop.printable import printable
from epop.journal.process import GONE, process_state

__all__ = [
    "DEFAULT_JOURNAL",
    "ConnectionSummary",
    "RELAY_GONE",
    "RELAY_RESTARTED",
    "RunChecker",
    "JournalFilter",
    "JournalFollower",
    "MAX_LINE",
    "NotAJournalFile",
    "Problem",
    "check_journal_path",
    "connection_summaries",
    "connections_table",
    "describe_record",
    "journal_files",
    "journal_header",
    "journal_row",
    "journal_table",
    "open_journal",
    "parse_connection",
    "parse_since",
    "read_file",
    "read_journal",
    "record_time",
    "type_name",
]

DEFAULT_JOURNAL = "epop-journal.jsonl"

_READ_SIZE = 1 << 20

#: The longest line read as a record, newline excluded.  The relay's lines
#: are a few hundred bytes: its longest fields (a path, an error) are cut
#: well below this.
MAX_LINE = 1 << 20
_MAX_LINE_TEXT = Text("1 MiB")


@dataclass(frozen=True)
class Problem:
    """A line that is not a journal record: reported, then skipped."""

    path: str
    line: int
    #: Longer than L{MAX_LINE}: not even read whole.
    too_long: bool = False

    def describe(self) -> Text:
        if self.too_long:
            return Text(
                "{path}, line {line}: longer than {limit}, not a journal record, skipped",
                path=self.path,
                line=self.line,
                limit=_MAX_LINE_TEXT,
            )
        return Text(
            "{path}, line {line}: not a journal record, skipped", path=self.path, line=self.line
        )


ProblemHandler = Callable[[Problem], None]


def _ignore(problem: Problem) -> None:
    pass


class NotAJournalFile(OSError):
    """The path names a device, a FIFO, a directory...: not a file the relay wrote."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path}: not a regular file")
        self.filename = path

    def describe(self) -> Text:
        return Text(
            "Cannot read {path}: not a regular file (a relay's journal is the file "
            "named by its --journal).",
            path=self.filename,
        )


def _refuse_unless_regular(path: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise NotAJournalFile(path)


def check_journal_path(path: str) -> None:
    """
    Refuse now what L{open_journal} would refuse, for a follower that may
    wait for the file: a missing path is fine, it may appear.

    @raise NotAJournalFile: if C{path} exists and is not a regular file.
    """
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return
    _refuse_unless_regular(path, found.st_mode)


def open_journal(path: str) -> IO[bytes]:
    """
    C{path} open for reading, if it is a regular file.  It is opened
    without blocking, so that a FIFO is refused rather than waited on.

    @raise NotAJournalFile: for a device, a FIFO, a directory, a socket.
    @raise OSError: if it cannot be opened.
    """
    # Windows has no FIFO to block on, nor O_NONBLOCK; it needs O_BINARY.
    nonblock = getattr(os, "O_NONBLOCK", 0)
    flags = os.O_RDONLY | nonblock | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        _refuse_unless_regular(path, os.fstat(fd).st_mode)
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _Lines:
    """
    Cuts bytes read in chunks into lines, numbered from 1, holding at most
    L{MAX_LINE} bytes of a line: the rest of a longer one is dropped as it
    comes, and the line is handed on as None.
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self.number = 0
        self._pending = b""
        self._too_long = False

    @property
    def pending(self) -> bool:
        """Part of a line, with no newline yet, has been read."""
        return bool(self._pending) or self._too_long

    def feed(self, chunk: bytes) -> Iterator[tuple[int, bytes | None]]:
        """The lines that C{chunk} ends (newline excluded), or None for a too long one."""
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            piece = chunk[start:end]
            start = end + 1
            self.number += 1
            if self._too_long or len(self._pending) + len(piece) > self.limit:
                line = None
            else:
                line = self._pending + piece
            self._pending, self._too_long = b"", False
            yield self.number, line
        rest = chunk[start:]
        if self._too_long or len(self._pending) + len(rest) > self.limit:
            self._pending, self._too_long = b"", True
        else:
            self._pending += rest

    def end(self) -> tuple[int, bool] | None:
        """
        The number of a last line with no newline, and whether it is too
        long; None if there is none.  Forgets it.
        """
        if not self.pending:
            return None
        found = (self.number + 1, self._too_long)
        self._pending, self._too_long = b"", False
        return found


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("type"), str):
        return None
    if record_time(record) is None:
        return None
    return record


def record_time(record: dict[str, Any]) -> datetime | None:
    """When the event happened (aware, UTC), or None if C{time} is unusable."""
    text = record.get("time")
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def read_file(path: str, on_problem: ProblemHandler = _ignore) -> Iterator[dict[str, Any]]:
    """
    The records of one journal file, in order.  The last line is skipped if
    it is torn (no newline, or not JSON): that is a crash's, or a line being
    written.  Other bad lines go to C{on_problem}, as does a last line too
    long to be one being written.

    @raise NotAJournalFile: if C{path} is not a regular file.
    """
    with open_journal(path) as f:
        lines = _Lines()
        previous: tuple[int, bytes | None] | None = None
        while chunk := f.read(_READ_SIZE):
            for number, raw in lines.feed(chunk):
                if previous is not None:
                    yield from _checked(path, *previous, on_problem)
                previous = (number, raw)
        torn = lines.end()
        if previous is not None:
            number, raw = previous
            if torn is not None or raw is None:
                yield from _checked(path, number, raw, on_problem)
            else:
                # The last line, whole: a record, or skipped as torn.
                record = _parse_line(raw)
                if record is not None:
                    yield record
        if torn is not None and torn[1]:
            on_problem(Problem(path, torn[0], too_long=True))


def _checked(
    path: str, number: int, raw: bytes | None, on_problem: ProblemHandler
) -> Iterator[dict[str, Any]]:
    """The record of a line that is not the last one, or a problem."""
    if raw is None:
        on_problem(Problem(path, number, too_long=True))
        return
    record = _parse_line(raw)
    if record is not None:
        yield record
    elif raw.strip():
        on_problem(Problem(path, number))


def journal_files(path: str, since: datetime | None = None) -> list[str]:
    """
    The files to read, oldest first: the rotated ones that may hold events
    at or after C{since} (none without C{since}), then C{path} itself.
    """
    files: list[str] = []
    if since is not None:
        limit = since.timestamp()
        for rotated in rotated_files(path):
            try:
                # A rotated file is never written again: its last event is
                # no later than its modification time.
                if os.stat(rotated).st_mtime >= limit:
                    files.append(rotated)
            except OSError:
                continue
    files.append(path)
    return files


def read_journal(
    path: str,
    since: datetime | None = None,
    on_problem: ProblemHandler = _ignore,
    *,
    current: bool = True,
) -> Iterator[dict[str, Any]]:
    """
    The records of the journal C{path}, with its rotated files when C{since}
    reaches back into them; C{current=False} leaves C{path} itself out (for
    a follower that reads it).

    @raise FileNotFoundError: if C{path} does not exist (and C{current}).
    """
    files = journal_files(path, since)
    if not current:
        files.pop()
    for name in files:
        try:
            yield from read_file(name, on_problem)
        except FileNotFoundError:
            if name == path:
                raise
            # deleted by the relay's retention while we were reading


def parse_connection(text: str) -> tuple[str | None, int]:
    """C{ID} or C{RUN:ID} (RUN may be abbreviated) from C{--connection}."""
    run, sep, number = text.strip().rpartition(":")
    if not number.isdigit() or (sep and not run):
        raise ValueError(f"--connection {text}: expected a connection number, or RUN:NUMBER")
    return (run.lower() if sep else None), int(number)


_DURATION = re.compile(r"(\d+)\s*([smhd])", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: float, tz: tzinfo | None = None) -> datetime:
    """
    The start of C{--since}: an ISO date or time (local time unless it says
    otherwise), C{today}, C{yesterday}, or a duration back from C{now} such
    as C{30m}, C{1h}, C{2d}.

    @param tz: the local time zone; the system's by default.
    """
    try:
        return _since(text.strip(), now, tz)
    except OverflowError:
        raise ValueError(f"--since {text}: too far back for a date") from None
    except ValueError:
        raise ValueError(
            f"--since {text}: expected a date or time (2026-11-25, 2026-11-25T08:30), "
            "today, yesterday, or a duration such as 30m, 1h, 2d"
        ) from None


def _since(value: str, now: float, tz: tzinfo | None) -> datetime:
    """L{parse_since}'s reading; dates past what datetime holds raise L{OverflowError}."""
    local_now = datetime.fromtimestamp(now, tz=timezone.utc).astimezone(tz)
    if value.lower() in ("today", "yesterday"):
        midnight = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight - timedelta(days=1) if value.lower() == "yesterday" else midnight
    match = _DURATION.fullmatch(value)
    if match:
        delta = timedelta(**{_UNITS[match[2].lower()]: int(match[1])})
        return datetime.fromtimestamp(now, tz=timezone.utc) - delta
    when = datetime.fromisoformat(value)
    if when.tzinfo is None:
        try:
            when = when.replace(tzinfo=tz) if tz is not None else when.astimezone()
        except ValueError:  # the local time of year 1 falls in year 0
            raise OverflowError(value) from None
    # Compared with UTC times later: make sure that works for this one.
    when.astimezone(timezone.utc)
    return when


@dataclass(frozen=True)
class JournalFilter:
    """
    Which events to show: those of some connections (the manual's
    multi-selection), of some types, from some time on.  Empty means all.
    """

    connections: Sequence[tuple[str | None, int]] = ()
    types: Sequence[str] = ()
    since: datetime | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        if self.types and record.get("type") not in self.types:
            return False
        if self.since is not None:
            when = record_time(record)
            if when is None or when < self.since:
                return False
        if self.connections:
            number = record.get("connection")
            run = str(record.get("run", ""))
            if not any(
                number == wanted and (prefix is None or run.startswith(prefix))
                for prefix, wanted in self.connections
            ):
                return False
        return True


# What people read: type names as the original manual gives them.

_TYPE_NAMES = {
    "listening-opened": Text("Listening opened"),
    "listening-closed": Text("Listening closed"),
    "connection-opened": Text("Connection opened"),
    "connection-closed": Text("Connection closed"),
    "object-instantiated": Text("Object instantiated"),
    "object-released": Text("Object released"),
    "settings-reloaded": Text("Settings reloaded"),
}


def type_name(event_type: str, language: str) -> str:
    """The event type as the original journal named it (French) or in English."""
    name = _TYPE_NAMES.get(event_type)
    return name.render(language) if name is not None else event_type


def _client_ip(client: Any) -> str:
    """The address part of C{ip:port} or C{[ipv6]:port}; other clients as they are."""
    if not isinstance(client, str):
        return ""
    host, sep, port = client.rpartition(":")
    if sep and port.isdigit() and host:
        return host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return client


def _outcome(record: dict[str, Any]) -> str:
    outcome = str(record.get("outcome"))
    return f"{outcome} ({record['error']})" if record.get("error") else outcome


def _description(record: dict[str, Any], language: str) -> Text:
    kind = record["type"]
    if kind == "listening-opened":
        return Text("Listening on {address} (run {run})", address=record["address"], run=record["run"])
    if kind == "listening-closed":
        return Text("Stopped listening on {address} (run {run})", address=record["address"], run=record["run"])
    if kind == "connection-opened":
        return Text(
            "Connection id: {connection}, from {client}",
            connection=record["connection"],
            client=record["client"],
        )
    if kind == "connection-closed":
        return Text(
            "Connection id: {connection}, {reason}; {bytes_in} bytes received, "
            "{bytes_out} sent, in {duration}",
            connection=record["connection"],
            reason=record["reason"],
            bytes_in=record["bytes_in"],
            bytes_out=record["bytes_out"],
            duration=_duration(record["duration"], language),
        )
    if kind == "object-instantiated":
        if "method" in record:
            return Text(
                "Instantiated object: {kind} {method} {path} ({length} bytes)",
                kind=record["kind"],
                method=record["method"],
                path=record["path"],
                length=record["length"],
            )
        return Text("Instantiated object: {kind}", kind=record["kind"])
    if kind == "object-released":
        status = (
            Text(", e-PMSI answered {status}", status=record["status"])
            if record.get("status") is not None
            else ""
        )
        if "method" in record:
            return Text(
                "Released object: {kind} {method} {path}: {outcome}{status}",
                kind=record["kind"],
                method=record["method"],
                path=record["path"],
                outcome=_outcome(record),
                status=status,
            )
        return Text(
            "Released object: {kind}: {outcome}{status}",
            kind=record["kind"],
            outcome=_outcome(record),
            status=status,
        )
    raise KeyError(kind)


def describe_record(record: dict[str, Any], language: str) -> str:
    """
    The event in the reader's language, from its fields; the record's own
    (English) C{description} if its fields are not the expected ones.
    """
    try:
        return _description(record, language).render(language)
    except (KeyError, TypeError, ValueError):
        return str(record.get("description", ""))


def _local(when: datetime | None, language: str, tz: tzinfo | None) -> str:
    if when is None:
        return "?"
    local = when.astimezone(tz)
    return local.strftime("%d/%m/%Y %H:%M:%S" if language == "fr" else "%Y-%m-%d %H:%M:%S")


_IP_WIDTH = 15  # an IPv4 address
_DATE_WIDTH = 19


def _widths(language: str, rows: Iterable[Sequence[str]] = ()) -> list[int]:
    header = _header_cells(language)
    widths = [
        max(_IP_WIDTH, len(header[0])),
        max(_DATE_WIDTH, len(header[1])),
        max(len(header[2]), *(len(name.render(language)) for name in _TYPE_NAMES.values())),
    ]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=False)]
    return widths


def _header_cells(language: str) -> list[str]:
    return [
        Text("Client IP").render(language),
        Text("Date").render(language),
        Text("Type").render(language),
        Text("Description").render(language),
    ]


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=False)]
    return "  ".join([*padded, *cells[len(widths) :]]).rstrip()


def _cells(record: dict[str, Any], language: str, tz: tzinfo | None) -> list[str]:
    # Whatever the journal holds (a PROXY header's junk, a forged file) is
    # shown, never obeyed, by the reader's terminal.
    return [
        printable(_client_ip(record.get("client"))),
        _local(record_time(record), language, tz),
        printable(type_name(str(record.get("type")), language)),
        printable(describe_record(record, language)),
    ]


def journal_header(language: str) -> list[str]:
    """The header of the journal table, with fixed widths (for C{--follow})."""
    widths = _widths(language)
    return [_line(_header_cells(language), widths), _line(["-" * w for w in widths] + ["-" * 11], widths)]


def journal_row(record: dict[str, Any], language: str, tz: tzinfo | None = None) -> str:
    """One event as a row of the fixed-width journal table (for C{--follow})."""
    return _line(_cells(record, language, tz), _widths(language))


def journal_table(
    records: Iterable[dict[str, Any]], language: str, tz: tzinfo | None = None
) -> list[str]:
    """
    The manual's "Journal d'écoute": client IP, local date, type,
    description, one event a line, under a header.
    """
    rows = [_cells(record, language, tz) for record in records]
    widths = _widths(language, rows)
    lines = [_line(_header_cells(language), widths), _line(["-" * w for w in widths] + ["-" * 11], widths)]
    lines.extend(_line(row, widths) for row in rows)
    return lines


# Connections.


@dataclass
class ConnectionSummary:
    """
    One workstation connection as the journal tells it.

    C{state} is C{open}, C{closed}, or C{lost}: never closed in the journal
    although the relay that had it is no longer running (it was killed, or
    the machine stopped).  A lost connection's C{reason} says how the
    reader knows: L{RELAY_RESTARTED} or L{RELAY_GONE}.
    """

    run: str
    connection: int
    client: str
    opened: datetime | None = None
    closed: datetime | None = None
    duration: float | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    reason: str | None = None
    operations: int = 0
    state: str = "open"

    def ident(self, with_run: bool) -> str:
        return f"{self.run}:{self.connection}" if with_run else str(self.connection)

    def to_json(self) -> dict[str, Any]:
        def iso(when: datetime | None) -> str | None:
            if when is None:
                return None
            utc = when.astimezone(timezone.utc)
            return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")

        return {
            "run": self.run,
            "connection": self.connection,
            "client": self.client,
            "state": self.state,
            "opened": iso(self.opened),
            "closed": iso(self.closed),
            "duration": self.duration,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "reason": self.reason,
            "operations": self.operations,
        }


#: A lost connection's reason: a later run of the relay started on the journal.
RELAY_RESTARTED = "relay-restarted"
#: A lost connection's reason: the relay's process no longer runs.
RELAY_GONE = "relay-gone"


def connection_summaries(
    records: Iterable[dict[str, Any]],
    now: float,
    run_gone: Callable[[str], bool] | None = None,
) -> list[ConnectionSummary]:
    """
    The connections of a journal, in the order they opened.  An open one's
    duration runs to C{now} (seconds since the epoch).

    A connection never closed is lost if a later run started after its own
    (L{RELAY_RESTARTED}), or if C{run_gone} says its run's relay process no
    longer runs (L{RELAY_GONE}; see L{RunChecker}).
    """
    found: dict[tuple[str, int], ConnectionSummary] = {}
    runs: list[str] = []
    for record in records:
        run = str(record.get("run", ""))
        if run not in runs:
            runs.append(run)
        number = record.get("connection")
        if not isinstance(number, int):
            continue
        key = (run, number)
        summary = found.get(key)
        if summary is None:
            summary = found[key] = ConnectionSummary(run, number, str(record.get("client", "")))
        kind = record.get("type")
        when = record_time(record)
        if kind == "connection-opened":
            summary.opened = when
        elif kind == "object-instantiated":
            summary.operations += 1
        elif kind == "connection-closed":
            summary.state = "closed"
            summary.closed = when
            duration = record.get("duration")
            summary.duration = duration if isinstance(duration, (int, float)) else None
            summary.bytes_in = record.get("bytes_in")
            summary.bytes_out = record.get("bytes_out")
            summary.reason = record.get("reason")
            if summary.opened is None and when is not None and summary.duration is not None:
                # opened in a rotated file: its time follows from the duration
                summary.opened = when - timedelta(seconds=summary.duration)
    latest = runs[-1] if runs else None
    gone: dict[str, bool] = {}
    for summary in found.values():
        if summary.state != "open":
            continue
        if summary.run != latest:
            summary.state, summary.reason = "lost", RELAY_RESTARTED
            continue
        if run_gone is not None:
            if summary.run not in gone:
                gone[summary.run] = run_gone(summary.run)
            if gone[summary.run]:
                summary.state, summary.reason = "lost", RELAY_GONE
                continue
        if summary.opened is not None:
            summary.duration = max(0.0, now - summary.opened.timestamp())
    far = datetime.max.replace(tzinfo=timezone.utc)
    return sorted(found.values(), key=lambda s: (s.opened or far, runs.index(s.run), s.connection))


class RunChecker:
    """
    Tells whether the relay process of a run is gone, from the run's
    C{listening-opened} record: among the records read, or else in the
    journal's rotated files, newest first (a relay that has run for days
    started in an older file).

    @param check: L{epop.journal.process.process_state}, or a stand-in.
    """

    def __init__(
        self,
        path: str,
        records: Iterable[dict[str, Any]],
        check: Callable[[dict[str, Any]], str] = process_state,
    ) -> None:
        self._path = path
        self._check = check
        self._starts: dict[str, dict[str, Any] | None] = {}
        for record in records:
            if record.get("type") == "listening-opened":
                self._starts[str(record.get("run", ""))] = record

    def _start(self, run: str) -> dict[str, Any] | None:
        if run not in self._starts:
            self._starts[run] = None
            for name in reversed(rotated_files(self._path)):
                try:
                    for record in read_file(name):
                        if record.get("type") == "listening-opened" and record.get("run") == run:
                            self._starts[run] = record
                            return record
                except OSError:
                    continue
        return self._starts[run]

    def __call__(self, run: str) -> bool:
        start = self._start(run)
        return start is not None and self._check(start) == GONE


def _duration(seconds: float | None, language: str = "en") -> str:
    """Seconds for people: 0.010 s, 12.5 s, 1:02:03 (a decimal comma in French)."""
    if seconds is None:
        return "?"
    if seconds < 60:
        text = f"{seconds:.3f} s" if seconds < 1 else f"{seconds:.1f} s"
        return text.replace(".", ",") if language == "fr" else text
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


_LOST = {
    RELAY_RESTARTED: Text("never closed: the relay stopped, and started again since"),
    RELAY_GONE: Text("never closed: the relay's process is gone (killed, or the machine stopped)"),
}


def connections_table(
    summaries: Sequence[ConnectionSummary], language: str, tz: tzinfo | None = None
) -> list[str]:
    """
    The manual's "Connexions" window as a table: id (C{run:id} when the
    journal holds several runs), client, opened, closed or "open",
    duration, bytes in and out, and why it closed.
    """
    with_run = len({s.run for s in summaries}) > 1
    header = [
        Text("Connection").render(language),
        Text("Client").render(language),
        Text("Opened").render(language),
        Text("Closed").render(language),
        Text("Duration").render(language),
        Text("Bytes in").render(language),
        Text("Bytes out").render(language),
        Text("Outcome").render(language),
    ]
    rows = []
    for s in summaries:
        if s.state == "open":
            closed = Text("open").render(language)
        elif s.state == "lost":
            closed = "?"
        else:
            closed = _local(s.closed, language, tz)
        outcome = "" if s.reason is None else str(s.reason)
        if s.state == "lost":
            outcome = _LOST.get(outcome, _LOST[RELAY_RESTARTED]).render(language)
        row = [
            s.ident(with_run),
            s.client,
            _local(s.opened, language, tz),
            closed,
            _duration(s.duration, language) if s.state != "lost" else "?",
            "" if s.bytes_in is None else str(s.bytes_in),
            "" if s.bytes_out is None else str(s.bytes_out),
            outcome,
        ]
        rows.append([printable(cell) for cell in row])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = [_line(header, widths), _line(["-" * w for w in widths] + ["-" * 7], widths)]
    lines.extend(_line(row, widths) for row in rows)
    return lines


# Following.


class JournalFollower:
    """
    Reads the records appended to a journal file, polling with the reactor
    (no thread), and goes on in the new file when the relay rotates it (the
    file at C{path} is another one) or when it is truncated
    (C{copytruncate}).  It starts at the beginning of the file: a caller
    that wants only new events filters on time.

    A line is handled once its newline has arrived; a line without one
    left behind in a rotated or truncated file is dropped as torn.  If the
    file was rotated several times between two polls, the rotated files in
    between are read too.
    """

    def __init__(
        self,
        path: str,
        on_record: Callable[[dict[str, Any]], None],
        clock: Any,
        *,
        interval: float = 0.5,
        on_problem: ProblemHandler = _ignore,
    ) -> None:
        self.path = path
        self.interval = interval
        self._on_record = on_record
        self._on_problem = on_problem
        self._file: IO[bytes] | None = None
        self._identity: tuple[int, int] | None = None
        self._position = 0
        self._lines = _Lines()
        self._call = LoopingCall(self.poll)
        self._call.clock = clock

    @property
    def waiting(self) -> bool:
        """No file to read yet (the relay has not created it)."""
        return self._file is None

    def start(self) -> None:
        """Read what is there now, then poll every C{interval} seconds."""
        self._call.start(self.interval, now=True)

    def stop(self) -> None:
        if self._call.running:
            self._call.stop()
        self._close()

    def poll(self) -> None:
        """Read new lines, then switch files if the journal was rotated."""
        if self._file is None and not self._open():
            return
        self._read()
        try:
            now = os.stat(self.path)
        except OSError:
            return  # being rotated: the new file is not there yet
        if (now.st_dev, now.st_ino) != self._identity:
            self._read()  # the last lines written before the rotation
            previous = self._identity
            self._close()
            # Rotated more than once since the last poll: read the files in
            # between, oldest first.
            for name in self._rotated_after(previous):
                try:
                    for record in read_file(name, self._on_problem):
                        self._on_record(record)
                except OSError:
                    continue
            if self._open():
                self._read()
        elif now.st_size < self._position:
            assert self._file is not None
            self._file.seek(0)
            self._position = 0
            self._lines = _Lines()
            self._read()

    def _rotated_after(self, identity: tuple[int, int] | None) -> list[str]:
        """The rotated files written after the one with C{identity}, oldest first."""
        files = rotated_files(self.path)
        for index, name in enumerate(files):
            try:
                found = os.stat(name)
            except OSError:
                continue
            if (found.st_dev, found.st_ino) == identity:
                return files[index + 1 :]
        return []

    def _open(self) -> bool:
        try:
            # Not a device or a FIFO, which would never end or block.
            self._file = open_journal(self.path)
        except OSError:
            return False
        found = os.fstat(self._file.fileno())
        self._identity = (found.st_dev, found.st_ino)
        self._position = 0
        self._lines = _Lines()
        return True

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        torn = self._lines.end()
        if torn is not None and torn[1]:
            # Too long to be a line being written when the file was left.
            self._on_problem(Problem(self.path, torn[0], too_long=True))

    def _read(self) -> None:
        assert self._file is not None
        while chunk := self._file.read(_READ_SIZE):
            self._position += len(chunk)
            for number, raw in self._lines.feed(chunk):
                record = _parse_line(raw) if raw is not None else None
                if record is not None:
                    self._on_record(record)
                elif raw is None:
                    self._on_problem(Problem(self.path, number, too_long=True))
                elif raw.strip():
                    self._on_problem(Problem(self.path, number))
