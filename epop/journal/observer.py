"""
What connects the relay's log to its journal: an observer that picks one
relay's events out of the log stream, and the service that adds it while
the relay runs.

A record's C{time} is read on the clock the relay is timed with (the
reactor), like the C{duration}s it holds, not on the logger's wall clock.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, LogPublisher, globalLogPublisher
from zope.interface import implementer

from epop.journal.events import journal_record
from epop.journal.process import process_fields
from epop.journal.writer import IJournalWriter, open_writer

__all__ = ["JournalObserver", "JournalService"]


@implementer(ILogObserver)
class JournalObserver:
    """Picks one relay's events out of the log stream and journals them."""

    def __init__(self, writer: IJournalWriter, relay_id: str, clock: IReactorTime) -> None:
        self._writer = writer
        self._relay_id = relay_id
        self._clock = clock
        self._process = process_fields()

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("epop_relay") != self._relay_id or "epop_event" not in event:
            return
        self._writer.write(journal_record(event, self._clock.seconds(), self._process))


class JournalService(Service):
    """
    Adds the journal observer when the relay starts and removes it when it
    stops; the writer is opened here, not when the service is built.

    @param language: the language of what it logs when the journal cannot
        be opened.
    """

    name = "journal"

    def __init__(
        self,
        relay_id: str,
        open_writer: Callable[[], IJournalWriter],
        clock: IReactorTime,
        language: str = "en",
    ) -> None:
        self._relay_id = relay_id
        self._language = language
        self._open_writer = open_writer
        self._clock = clock
        self._publisher: LogPublisher = globalLogPublisher
        self._observer: JournalObserver | None = None
        self._writer: IJournalWriter | None = None

    def startService(self) -> None:
        self._writer = open_writer(self._open_writer, self._language)
        self._observer = JournalObserver(self._writer, self._relay_id, self._clock)
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
