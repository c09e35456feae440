"""
The relay's journal: one JSON object per line, one line per event.

The relay logs its events with L{twisted.logger} like any other message; a
L{JournalObserver} picks out the ones that belong to its relay and hands a
record of them to an L{IJournalWriter}.  Only the fields named in
L{RECORD_FIELDS} are ever copied, so bodies, form fields, credentials and
query strings cannot leak into the file whatever an event carries.  Every
field is documented in ``docs/journal.md``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from typing import Any, Callable

from twisted.application.service import Service
from twisted.logger import (
    ILogObserver,
    LogLevel,
    LogPublisher,
    formatEvent,
    globalLogPublisher,
)
from zope.interface import Interface, implementer

__all__ = [
    "EVENT_TYPES",
    "RECORD_FIELDS",
    "IJournalWriter",
    "FileJournalWriter",
    "MemoryJournalWriter",
    "JournalObserver",
    "JournalService",
    "journal_record",
    "strip_query",
]

EVENT_TYPES = (
    "listening-opened",
    "listening-closed",
    "connection-opened",
    "connection-closed",
    "object-instantiated",
    "object-released",
)

#: Event keys copied into a record, beyond time, type and description.
RECORD_FIELDS = (
    "connection",
    "client",
    "address",
    "port",
    "kind",
    "method",
    "path",
    "length",
    "integrity",
    "status",
    "outcome",
    "error",
    "epmsi_address",
    "duration",
    "bytes_in",
    "bytes_out",
    "reason",
)


def strip_query(path: str) -> str:
    """Query strings and fragments may carry passwords: never journal them."""
    return path.split("?", 1)[0].split("#", 1)[0]


def journal_record(event: dict[str, Any]) -> dict[str, Any]:
    """Build the journal line for one relay event."""
    when = datetime.fromtimestamp(event["log_time"], tz=timezone.utc)
    record: dict[str, Any] = {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "type": event["epop_event"],
        "run": event["epop_relay"],
    }
    for key in RECORD_FIELDS:
        if key in event:
            record[key] = event[key]
    if isinstance(record.get("path"), str):
        record["path"] = strip_query(record["path"])
    record["description"] = formatEvent(event)
    return record


class IJournalWriter(Interface):
    """Where journal records go: a file in production, a list in tests."""

    def write(record: dict[str, Any]) -> None:
        """Store one record."""

    def close() -> None:
        """Release what the writer holds; no write follows."""


@implementer(IJournalWriter)
class MemoryJournalWriter:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.closed = False

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def close(self) -> None:
        self.closed = True


@implementer(IJournalWriter)
class FileJournalWriter:
    """
    Appends JSON lines and flushes each one, so a crash loses at most the
    line being written.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "ab")
        os.chmod(path, 0o640)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        self._file.write(line.encode("utf-8") + b"\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@implementer(ILogObserver)
class JournalObserver:
    """Picks one relay's events out of the log stream and journals them."""

    def __init__(self, writer: IJournalWriter, relay_id: str) -> None:
        self._writer = writer
        self._relay_id = relay_id

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("epop_relay") != self._relay_id or "epop_event" not in event:
            return
        self._writer.write(journal_record(event))


class JournalService(Service):
    """
    Adds the journal observer when the relay starts and removes it when it
    stops; the writer is opened here, not when the service is built.
    """

    name = "journal"

    def __init__(self, relay_id: str, open_writer: Callable[[], IJournalWriter]) -> None:
        self._relay_id = relay_id
        self._open_writer = open_writer
        self._publisher: LogPublisher = globalLogPublisher
        self._observer: JournalObserver | None = None
        self._writer: IJournalWriter | None = None

    def startService(self) -> None:
        self._writer = self._open_writer()
        self._observer = JournalObserver(self._writer, self._relay_id)
        self._publisher.addObserver(self._observer)
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        if self._observer is not None:
            self._publisher.removeObserver(self._observer)
            self._observer = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def emit(
    log: Any,
    relay_id: str,
    event_type: str,
    format: str,
    *,
    level: LogLevel = LogLevel.info,
    **fields: Any,
) -> None:
    """Log one journal event; the text also reaches the ordinary twistd log."""
    assert event_type in EVENT_TYPES, event_type
    log.emit(level, format, epop_event=event_type, epop_relay=relay_id, **fields)
