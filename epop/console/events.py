"""
Live changes for the page: L{EventHub} numbers what the backend reports
(journal lines, state changes) and keeps the last ones, and
L{EventsResource} streams them as server-sent events.

A page that reconnects (EventSource does so by itself, with
C{Last-Event-ID}) first gets what it missed, or, when that has left the
ring, one C{reset} event: it then reloads its lists instead of showing a
gap without knowing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from epop.console.rendering import json_bytes

#: Events kept for replay.
RING_SIZE = 1000
#: Seconds between two keep-alive comments, so that proxies and browsers
#: do not close a quiet stream.
KEEP_ALIVE = 15.0


class _Subscriber:
    """One open event stream: its request, language and keep-alive timer."""

    def __init__(self, hub: EventHub, request: Request, language: str) -> None:
        self.hub = hub
        self.request = request
        self.language = language
        self.timer: IDelayedCall | None = None
        self.open = True

    def send(self, event_id: int, kind: str, data: Any) -> None:
        self.request.write(
            b"id: %d\nevent: %s\ndata: %s\n\n"
            % (event_id, kind.encode("ascii"), json_bytes(data, self.language))
        )

    def keep_alive(self) -> None:
        self.timer = self.hub.clock.callLater(KEEP_ALIVE, self._beat)

    def _beat(self) -> None:
        self.timer = None
        if self.open:
            self.request.write(b": keep-alive\n\n")
            self.keep_alive()

    def close(self) -> None:
        self.open = False
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class EventHub:
    """
    Numbers the backend's live changes, keeps the last L{RING_SIZE} and
    sends each to every open stream.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._ring: deque[tuple[int, str, Any]] = deque(maxlen=RING_SIZE)
        self._last = 0
        self._subscribers: list[_Subscriber] = []

    @property
    def last_id(self) -> int:
        return self._last

    def publish(self, kind: str, data: Any) -> int:
        """Send C{kind}, C{data} to every stream; returns its event id."""
        self._last += 1
        self._ring.append((self._last, kind, data))
        for subscriber in list(self._subscribers):
            try:
                subscriber.send(self._last, kind, data)
            except Exception:
                self.log.failure("Console: an event stream failed; closing it")
                self._drop(subscriber)
                subscriber.request.loseConnection()
        return self._last

    def subscribe(self, request: Request, language: str, last_event_id: str | None) -> None:
        """
        Stream to C{request} from now on, after what it missed since
        C{last_event_id} (or a C{reset} when that is gone), until it ends.
        """
        subscriber = _Subscriber(self, request, language)
        request.write(b": connected\n\n")
        self._replay(subscriber, last_event_id)
        self._subscribers.append(subscriber)
        subscriber.keep_alive()
        request.notifyFinish().addBoth(lambda _: self._drop(subscriber))

    def _replay(self, subscriber: _Subscriber, last_event_id: str | None) -> None:
        if last_event_id is None:
            return
        try:
            after = int(last_event_id)
        except ValueError:
            after = -1
        oldest = self._ring[0][0] if self._ring else self._last + 1
        if after < oldest - 1 or after > self._last:
            # Gone from the ring, or numbered by an earlier relay run.
            subscriber.request.write(b"id: %d\nevent: reset\ndata: {}\n\n" % self._last)
            return
        for event_id, kind, data in self._ring:
            if event_id > after:
                subscriber.send(event_id, kind, data)

    def _drop(self, subscriber: _Subscriber) -> None:
        subscriber.close()
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)

    def subscribers(self) -> int:
        """How many streams are open."""
        return len(self._subscribers)

    def close_all(self) -> None:
        """End every stream (the console stops)."""
        for subscriber in list(self._subscribers):
            self._drop(subscriber)
            subscriber.request.finish()

    def watch(self, watch: Callable[[Callable[[str, Any], None]], Callable[[], None]]) -> Callable[[], None]:
        """Subscribe to a backend's C{watch}; returns what stops it."""
        return watch(self.publish)


class EventsResource(Resource):
    """C{GET /api/events}: the hub's events as C{text/event-stream}."""

    isLeaf = True

    def __init__(self, hub: EventHub, language: Callable[[Request], str]) -> None:
        super().__init__()
        self.hub = hub
        self.language = language

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        last = request.getHeader(b"Last-Event-ID")
        self.hub.subscribe(request, self.language(request), last.decode("ascii", "replace") if last else None)
        return NOT_DONE_YET
