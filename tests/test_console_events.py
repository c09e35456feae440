"""
Live events: the hub's numbering and ring, the SSE stream with replay,
C{reset} and keep-alive (on a Clock), and a real stream over HTTP.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from epop.console.events import KEEP_ALIVE, RING_SIZE, EventHub
from epop.messages import Text
from tests.console_fakes import LiveConsole
from tests.support import poll_until


def _stream(hub: EventHub, last: str | None = None, language: str = "en") -> DummyRequest:
    request = DummyRequest([b"api", b"events"])
    hub.subscribe(request, language, last)
    return request


def _text(request: DummyRequest) -> str:
    return b"".join(request.written).decode("utf-8")


class HubTests(SynchronousTestCase):
    def test_publish(self) -> None:
        """Each event has the next id, its kind and its data as JSON on one data: line, Texts rendered."""
        hub = EventHub(Clock())
        fr = _stream(hub, language="fr")
        en = _stream(hub)
        self.assertEqual(hub.publish("journal", {"description": "a\nb"}), 1)
        self.assertEqual(hub.publish("state", {"message": Text("true or false")}), 2)
        self.assertEqual(
            _text(en),
            ': connected\n\nid: 1\nevent: journal\ndata: {"description":"a\\nb"}\n\n'
            'id: 2\nevent: state\ndata: {"message":"true or false"}\n\n',
        )
        self.assertTrue(_text(fr).endswith('data: {"message":"true ou false"}\n\n'))

    def test_replay(self) -> None:
        """With Last-Event-ID K, every later event still in the ring first."""
        hub = EventHub(Clock())
        for n in range(5):
            hub.publish("journal", {"n": n})
        request = _stream(hub, "3")
        self.assertEqual(
            _text(request),
            ': connected\n\nid: 4\nevent: journal\ndata: {"n":3}\n\nid: 5\nevent: journal\ndata: {"n":4}\n\n',
        )
        up_to_date = _stream(hub, "5")
        self.assertEqual(_text(up_to_date), ": connected\n\n")

    def test_reset(self) -> None:
        """K older than the ring, from another run (higher than any), or not a number: one reset."""
        hub = EventHub(Clock())
        for n in range(RING_SIZE + 10):
            hub.publish("journal", {"n": n})
        last = RING_SIZE + 10
        edge = _stream(hub, "10")  # event 11 is the oldest kept: nothing lost
        self.assertNotIn("event: reset", _text(edge))
        self.assertEqual(_text(edge).count("event: journal"), RING_SIZE)
        for k in ["9", "0", str(last + 1), "x"]:
            request = _stream(hub, k)
            self.assertEqual(_text(request), f": connected\n\nid: {last}\nevent: reset\ndata: {{}}\n\n", k)

    def test_keep_alive(self) -> None:
        """A comment every 15 s, stopped when the stream ends; then it gets nothing more."""
        clock = Clock()
        hub = EventHub(clock)
        request = _stream(hub)
        clock.advance(KEEP_ALIVE - 0.1)
        self.assertEqual(_text(request), ": connected\n\n")
        clock.advance(0.1)
        clock.advance(KEEP_ALIVE)
        self.assertEqual(_text(request), ": connected\n\n: keep-alive\n\n: keep-alive\n\n")
        request.processingFailed(Failure(ConnectionError("gone")))
        self.assertEqual(hub.subscribers(), 0)
        self.assertEqual(clock.getDelayedCalls(), [])
        hub.publish("journal", {})
        self.assertNotIn("id: 1", _text(request))

    def test_close_all(self) -> None:
        clock = Clock()
        hub = EventHub(clock)
        request = _stream(hub)
        hub.close_all()
        self.assertEqual(request.finished, 1)
        self.assertEqual(hub.subscribers(), 0)
        self.assertEqual(clock.getDelayedCalls(), [])


class _Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(None)


class StreamTests(TestCase):
    """A real stream from a listening console, fed by the backend's watch."""

    async def open(self, console: LiveConsole, cookie: str, last: str | None = None) -> tuple[Any, _Collect]:
        headers = {"Cookie": f"epop_console={cookie}"}
        if last is not None:
            headers["Last-Event-ID"] = last
        response = await console.request("GET", "/api/events", headers=headers)
        collect = _Collect()
        response.deliverBody(collect)
        self.addCleanup(lambda: collect.done)
        self.addCleanup(collect.transport.stopProducing)
        return response, collect

    async def test_events_arrive(self) -> None:
        console = LiveConsole(self)
        self.assertEqual(len(console.backend.listeners), 1)
        cookie, csrf = await console.sign_in()
        response, collect = await self.open(console, cookie)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), [b"text/event-stream; charset=utf-8"])
        self.assertEqual(response.headers.getRawHeaders(b"Cache-Control"), [b"no-store"])
        record = {"type": "session-opened", "id": "R1:7", "description": "x"}
        console.backend._emit("journal", record)
        stop = await console.post("/api/listening", cookie, csrf, {"listening": False})
        await stop.content()
        self.assertTrue(await poll_until(console.reactor, lambda: b"event: state" in collect.data))
        self.assertIn(
            b'id: 1\nevent: journal\ndata: {"type":"session-opened","id":"R1:7","description":"x"}\n\n',
            collect.data,
        )
        self.assertIn(b'id: 2\nevent: state\ndata: {"listening":false', collect.data)

    async def test_replay_over_http(self) -> None:
        console = LiveConsole(self)
        cookie, _ = await console.sign_in()
        for n in range(3):
            console.backend._emit("journal", {"n": n})
        _, collect = await self.open(console, cookie, "1")
        self.assertTrue(await poll_until(console.reactor, lambda: b"id: 3" in collect.data))
        self.assertNotIn(b"id: 1\n", collect.data)
        self.assertIn(b'id: 2\nevent: journal\ndata: {"n":1}', collect.data)

    async def test_disconnect_and_stop(self) -> None:
        """A stream that ends is forgotten; a stopped console stops watching the backend."""
        console = LiveConsole(self)
        cookie, _ = await console.sign_in()
        _, collect = await self.open(console, cookie)
        self.assertTrue(await poll_until(console.reactor, lambda: console.service.hub.subscribers() == 1))
        collect.transport.stopProducing()
        self.assertTrue(await poll_until(console.reactor, lambda: console.service.hub.subscribers() == 0))
        await console.service.stopService()
        self.assertEqual(console.backend.listeners, [])

    async def test_signed_out(self) -> None:
        console = LiveConsole(self)
        response = await console.request("GET", "/api/events")
        self.assertEqual(response.code, 401)
        self.assertEqual(await response.json(), {"error": "signed-out"})
