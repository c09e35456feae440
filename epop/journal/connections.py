"""
The connections a journal describes, for C{epop connections}: the manual's
"Connexions" window, computed from the records, with the connections a
relay that stopped without closing them left behind marked lost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from epop.journal.process import GONE, process_state
from epop.journal.reader import read_file, record_time
from epop.journal.table import duration_text, local_time, outcome_label, table_line
from epop.journal.writer import rotated_files
from epop.messages import Text
from epop.printable import printable

__all__ = [
    "ConnectionSummary",
    "RELAY_GONE",
    "RELAY_RESTARTED",
    "RunChecker",
    "connection_summaries",
    "connections_table",
]


@dataclass
class ConnectionSummary:
    """
    One workstation connection as the journal tells it.

    C{state} is C{open}, C{closed}, or C{lost}: never closed in the journal
    although the relay that had it is no longer running (it was killed, or
    the machine stopped).  A lost connection's C{reason} says how the
    reader knows: L{RELAY_RESTARTED} or L{RELAY_GONE}.

    C{user} is the user an HTTP client named (C{--tunnel-users}), from any
    of its records: an open tunnel's is known before it closes.

    C{kind} is C{tunnel} once one of its operations is an HTTPS tunnel
    (C{object-instantiated} of kind C{tunnel}), else C{e-pop}.
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
    user: str | None = None
    kind: str = "e-pop"

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
            **({"user": self.user} if self.user is not None else {}),
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
        if isinstance(record.get("user"), str):
            summary.user = record["user"]
        if kind == "connection-opened":
            summary.opened = when
        elif kind == "object-instantiated":
            summary.operations += 1
            if record.get("kind") == "tunnel":
                summary.kind = "tunnel"
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


_LOST = {
    RELAY_RESTARTED: Text("never closed: the relay stopped, and started again since"),
    RELAY_GONE: Text("never closed: the relay's process is gone (killed, or the machine stopped)"),
}


def connections_table(
    summaries: Sequence[ConnectionSummary], language: str, tz: tzinfo | None = None
) -> list[str]:
    """
    The manual's "Connexions" window as a table: id (C{run:id} when the
    journal holds several runs), client, its user when any connection has
    one (C{--tunnel-users}), opened, closed or "open", duration, bytes in
    and out, and why it closed.
    """
    with_run = len({s.run for s in summaries}) > 1
    with_user = any(s.user is not None for s in summaries)
    header = [
        Text("Connection").render(language),
        Text("Client").render(language),
        *([Text("User").render(language)] if with_user else []),
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
            closed = local_time(s.closed, language, tz)
        outcome = "" if s.reason is None else outcome_label(s.reason).render(language)
        if s.state == "lost":
            outcome = _LOST.get(str(s.reason), _LOST[RELAY_RESTARTED]).render(language)
        row = [
            s.ident(with_run),
            s.client,
            *([s.user or ""] if with_user else []),
            local_time(s.opened, language, tz),
            closed,
            duration_text(s.duration, language) if s.state != "lost" else "?",
            "" if s.bytes_in is None else str(s.bytes_in),
            "" if s.bytes_out is None else str(s.bytes_out),
            outcome,
        ]
        rows.append([printable(cell) for cell in row])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = [table_line(header, widths), table_line(["-" * w for w in widths] + ["-" * 7], widths)]
    lines.extend(table_line(row, widths) for row in rows)
    return lines
