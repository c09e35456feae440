"""
Faults on each leg of an upload, over real loopback sockets: e-PMSI resets or
hangs, the corporate proxy drops its tunnel, the workstation vanishes.

Each test checks the three places a fault shows: what the workstation is
told (the L{epop.workstation.client} API's error, or the C{epop send} process' exit
status and standard error), what the relay's journal says, and that e-PMSI
(the sandbox) keeps nothing complete.  Faults are injected after a byte
count (L{tests.faults.FaultyLink}) or at a gate in the body
(L{tests.faults.GatedBody}), never after a delay, so no test depends on how
fast loopback is.
"""

from __future__ import annotations

import io
import random
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from epop.workstation import RelayClientProtocol, connect_to_relay, test_connection
from epop.errors import EpopError, RelayError
from epop.epmsi.proxy import ProxyConfig
from tests.faults import (
    EpopProcess,
    FaultyLink,
    GatedBody,
    in_flight,
    multipart_form,
    serve_big_answers,
    spawn_epop,
    start_faulty_link,
)
from tests.relaying import RunningRelay, start_relay
from tests.squid import Squid, start_squid
from tests.support import make_trustme_sandbox, poll_until, write_random_file

MiB = 1024 * 1024

#: Bytes that reach e-PMSI before a fault: past TLS and the headers, well
#: short of the body's end.
CUT_AFTER = MiB

#: How long a process or a polled condition may take, at most.
BOUND = 30.0


def _form(size: int, seed: int) -> tuple[str, bytes]:
    """A multipart form with one field and a C{size}-byte file."""
    data = random.Random(seed).randbytes(size)
    return multipart_form(
        "epopFaultBoundary", [("year", None, b"2026"), ("theFile", "rss.zip", data)]
    )


class _FaultCase(TestCase):
    maxDiff = None
    """One sandbox per test, and the checks every fault test makes."""

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.sandbox_port = self.sandbox.port.getHost().port

    def relay_to(self, link: FaultyLink, **settings: Any) -> RunningRelay:
        """A relay whose e-PMSI is reached through C{link}."""
        return start_relay(
            self, reactor, f"https://127.0.0.1:{link.url_port}", self.sandbox.ca_path, **settings
        )

    async def connect(self, relay: RunningRelay) -> RelayClientProtocol:
        protocol = await connect_to_relay(reactor, relay.endpoint)
        self.addCleanup(protocol.transport.abortConnection)
        return protocol

    async def upload_fails(self, relay: RunningRelay, body: GatedBody, content_type: str) -> RelayError:
        """Send C{body} through the relay with the client API; it must fail."""
        protocol = await self.connect(relay)
        request = protocol.request(
            "POST", "/syriusUpload.do", [("Content-Type", content_type)], body
        )
        return await self.assertFailure(request, RelayError)

    async def journal(self, relay: RunningRelay) -> tuple[dict[str, Any], dict[str, Any]]:
        """The operation's C{object-released} and the C{connection-closed} after it."""
        closed = await poll_until(reactor, lambda: "connection-closed" in relay.types(), 200)
        self.assertTrue(closed, relay.types())
        [released] = relay.records("object-released")
        [connection] = relay.records("connection-closed")
        return released, connection

    async def assert_cut_at_epmsi(self, relay: RunningRelay) -> None:
        """
        The journal tells of an upload whose connection to e-PMSI was lost
        before the hash was checked, and e-PMSI kept nothing.
        """
        released, closed = await self.journal(relay)
        self.assertEqual(
            (released["outcome"], released.get("error"), released["integrity"]),
            ("epmsi-unreachable", "connection-lost", "pending"),
        )
        self.assertEqual(closed["reason"], "epmsi-unreachable")
        await self.assert_nothing_stored(relay)

    async def assert_nothing_stored(self, relay: RunningRelay | None = None) -> None:
        """
        e-PMSI kept nothing: no complete file, no partial upload left, no
        connection still open; and the relay holds no connection either.
        """
        settled = await poll_until(reactor, lambda: not in_flight(self.sandbox), 200)
        self.assertTrue(settled, in_flight(self.sandbox))
        self.assertEqual(self.sandbox.complete_files(), [])
        self.assertEqual(self.sandbox.upload_directory.children(), [])
        if relay is not None:
            self.assertEqual(relay.service.factory.connections, {})
            cached = relay.service.upstream.pool._connections
            self.assertEqual(sum(map(len, cached.values())), 0, cached)

    async def upload_succeeds(self, relay: RunningRelay) -> None:
        """The relay is not left broken: the next upload is delivered whole."""
        content_type, form = _form(256 * 1024, seed=99)
        protocol = await self.connect(relay)
        reply = await protocol.request(
            "POST", "/syriusUpload.do", [("Content-Type", content_type)], GatedBody(form, len(form))
        )
        self.assertEqual(reply.status, 200, reply.body)
        [stored] = self.sandbox.complete_files()
        self.assertEqual(stored.getsize(), 256 * 1024)


class EpmsiResetTests(_FaultCase):
    """e-PMSI resets the connection in the middle of an upload."""

    async def test_reset_mid_upload(self) -> None:
        """The workstation is told e-PMSI's connection was lost; the journal says so; e-PMSI keeps nothing."""
        link = start_faulty_link(self, reactor, self.sandbox_port, after=CUT_AFTER, fault="reset")
        relay = self.relay_to(link)
        content_type, form = _form(8 * MiB, seed=1)
        error = await self.upload_fails(relay, GatedBody(form, len(form)), content_type)
        self.assertEqual((error.code, error.cause), ("epmsi-unreachable", "connection-lost"))
        self.assertEqual(
            error.message,
            f"Could not reach e-PMSI at https://127.0.0.1:{link.url_port}: "
            "the connection was closed before an answer.",
        )
        released, closed = await self.journal(relay)
        self.assertEqual(
            (released["outcome"], released.get("error"), released["integrity"], released["status"]),
            ("epmsi-unreachable", "connection-lost", "pending", None),
        )
        self.assertLess(released["length"], len(form))
        self.assertEqual(closed["reason"], "epmsi-unreachable")
        await self.assert_nothing_stored(relay)
        await self.upload_succeeds(relay)

    async def _epop_send_through_reset(self) -> tuple[EpopProcess, str, str]:
        """
        Run `epop send --quiet` (no progress, errors only) of 16 MiB through a
        relay whose e-PMSI resets after CUT_AFTER bytes.
        """
        link = start_faulty_link(self, reactor, self.sandbox_port, after=CUT_AFTER, fault="reset")
        relay = self.relay_to(link)
        path = self.mktemp()
        write_random_file(path, 16 * MiB, seed=2)
        child = spawn_epop(
            self, reactor, "send", path, "--relay", str(relay.endpoint),
            "--to", "/syriusUpload.do", "--field", "theFile", "-F", "year=2026", "--quiet",
        )
        self.assertEqual(await child.finished(reactor, BOUND), (1, None), child.stderr)
        released, closed = await self.journal(relay)
        self.assertEqual((released["outcome"], released.get("error")), ("epmsi-unreachable", "connection-lost"))
        self.assertEqual(closed["reason"], "epmsi-unreachable")
        await self.assert_nothing_stored(relay)
        message = (
            f"epop: Could not reach e-PMSI at https://127.0.0.1:{link.url_port}: "
            "the connection was closed before an answer."
        )
        outcome = (
            f"epop: {path} was not delivered: e-PMSI did not receive it "
            "(failed step: sending the file through the relay)."
        )
        return child, message, outcome

    async def test_reset_mid_upload_epop_send(self) -> None:
        """`epop send` exits 1 and its first line on stderr says why; nothing on stdout."""
        child, message, _ = await self._epop_send_through_reset()
        self.assertEqual(child.stderr.decode().splitlines()[0], message)
        self.assertEqual(child.stdout, b"")

    async def test_reset_mid_upload_epop_send_no_traceback(self) -> None:
        """`epop send` says why in one sentence and prints no traceback."""
        child, message, outcome = await self._epop_send_through_reset()
        self.assertEqual(child.stderr.decode(), message + "\n" + outcome + "\n")


class EpmsiCutsItsAnswerTests(_FaultCase):
    """e-PMSI resets the connection while its answer streams back."""

    async def test_answer_cut_short(self) -> None:
        """The workstation gets part of the answer, then an error; the journal says the answer was cut."""
        size = 32 * MiB
        serve_big_answers(self, self.sandbox, size)
        link = start_faulty_link(
            self, reactor, self.sandbox_port, after=4 * MiB, fault="reset", counting="answer"
        )
        relay = self.relay_to(link)
        protocol = await self.connect(relay)
        received = io.BytesIO()
        error = await self.assertFailure(protocol.request("GET", "/big", output=received), RelayError)
        self.assertEqual((error.code, error.cause), ("epmsi-unreachable", "connection-lost"))
        self.assertTrue(error.message.startswith("e-PMSI's answer was cut short: "), error.message)
        self.assertLess(len(received.getvalue()), size)
        released, closed = await self.journal(relay)
        self.assertEqual(
            (released["kind"], released["outcome"], released.get("error"), released["status"], released["integrity"]),
            ("request", "epmsi-unreachable", "connection-lost", 200, "none"),
        )
        self.assertEqual(closed["reason"], "epmsi-unreachable")
        await self.assert_nothing_stored(relay)

    async def test_receipt_lost_after_complete_upload(self) -> None:
        """
        e-PMSI got the whole file and its receipt is lost: the journal says
        integrity ok with epmsi-unreachable, the documented "check on
        e-PMSI" case, and the file is indeed there.
        """
        content_type, form = _form(2 * MiB, seed=9)
        # The receipt comes only after the whole body: count from then on.
        link = start_faulty_link(
            self, reactor, self.sandbox_port, after=20, fault="reset",
            counting="answer", answer_after=len(form),
        )
        relay = self.relay_to(link)
        error = await self.upload_fails(relay, GatedBody(form, len(form)), content_type)
        self.assertEqual((error.code, error.cause), ("epmsi-unreachable", "connection-lost"))
        released, closed = await self.journal(relay)
        self.assertEqual(
            (released["outcome"], released.get("error"), released["integrity"], released["length"]),
            ("epmsi-unreachable", "connection-lost", "ok", len(form)),
        )
        self.assertEqual(closed["reason"], "epmsi-unreachable")
        [stored] = self.sandbox.complete_files()
        self.assertEqual(stored.getsize(), 2 * MiB)


class EpmsiStallTests(_FaultCase):
    """e-PMSI stops reading in the middle of an upload."""

    async def test_stall_mid_upload(self) -> None:
        """--epmsi-timeout cancels the upload: the workstation is told, the journal says stalled, nothing is kept."""
        link = start_faulty_link(self, reactor, self.sandbox_port, after=CUT_AFTER, fault="stall")
        relay = self.relay_to(link, epmsi_timeout=0.5)
        content_type, form = _form(32 * MiB, seed=3)
        started = reactor.seconds()
        error = await self.upload_fails(relay, GatedBody(form, len(form)), content_type)
        self.assertLess(reactor.seconds() - started, 10)
        self.assertEqual((error.code, error.cause), ("stalled", None))
        self.assertIn("Nothing moved between the workstation and e-PMSI for 0.5 s", error.message)
        released, closed = await self.journal(relay)
        self.assertEqual(
            (released["outcome"], released["integrity"], released["status"]),
            ("stalled", "pending", None),
        )
        self.assertNotIn("error", released)
        self.assertGreaterEqual(released["duration"], 0.5)
        self.assertEqual(closed["reason"], "stalled")
        # The hung e-PMSI reads again: it then sees the relay gone, and drops the upload.
        link.release()
        await self.assert_nothing_stored(relay)
        await self.upload_succeeds(relay)


class ProxyTunnelTests(_FaultCase):
    """The corporate proxy drops the CONNECT tunnel in the middle of an upload."""

    def relay_through(self, link: FaultyLink) -> RunningRelay:
        proxy = ProxyConfig("127.0.0.1", link.url_port)
        return start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path, proxy=proxy)

    async def _tunnel_cut(self, fault: str) -> None:
        link = start_faulty_link(
            self, reactor, self.sandbox_port, after=CUT_AFTER, fault=fault, tunnel=True
        )
        relay = self.relay_through(link)
        content_type, form = _form(8 * MiB, seed=4)
        error = await self.upload_fails(relay, GatedBody(form, len(form)), content_type)
        self.assertEqual(
            link.connect_requests[0].split(b"\r\n")[0],
            b"CONNECT 127.0.0.1:%d HTTP/1.1" % (self.sandbox_port,),
        )
        self.assertEqual((error.code, error.cause), ("epmsi-unreachable", "connection-lost"))
        self.assertEqual(
            error.message,
            f"Could not reach e-PMSI at {self.sandbox.url} through the proxy 127.0.0.1:{link.url_port}: "
            "the connection was closed before an answer.",
        )
        self.assertEqual(
            error.render("fr"),
            f"Impossible de joindre e-PMSI à {self.sandbox.url} par le proxy 127.0.0.1:{link.url_port} : "
            "la connexion a été fermée avant la réponse.",
        )
        await self.assert_cut_at_epmsi(relay)
        await self.upload_succeeds(relay)

    async def test_silent_tunnel_names_the_proxy(self) -> None:
        """A tunnel through which nothing comes back: the test's timeout names e-PMSI and the proxy."""
        link = start_faulty_link(self, reactor, self.sandbox_port, after=0, fault="stall", tunnel=True)
        report = await test_connection(
            reactor,
            epmsi=self.sandbox.url,
            ca_file=self.sandbox.ca_path,
            proxy=ProxyConfig("127.0.0.1", link.url_port),
            timeout=0.5,
        )
        self.assertEqual((report.failed_step, report.error.cause), ("epmsi", "timeout"))
        self.assertEqual(
            report.error.message,
            f"Could not reach e-PMSI at {self.sandbox.url} through the proxy 127.0.0.1:{link.url_port}: "
            "no answer in time (0.5 s).",
        )
        link.release()
        await self.assert_nothing_stored()

    async def test_tunnel_closed_mid_upload(self) -> None:
        """A proxy that closes the tunnel (FIN) mid-upload: epmsi-unreachable, connection-lost, nothing kept."""
        await self._tunnel_cut("close")

    async def test_tunnel_reset_mid_upload(self) -> None:
        """A proxy that resets the tunnel (RST) mid-upload: epmsi-unreachable, connection-lost, nothing kept."""
        await self._tunnel_cut("reset")


class SquidTests(_FaultCase):
    """
    Through the hospital's real proxy (squid, Basic authentication), which
    dies, or whose far side resets, in the middle of an upload.  Skipped
    without squid, unless C{EPOP_REQUIRE_SQUID=1}.
    """

    def relay_through(self, squid: Squid, epmsi: str) -> RunningRelay:
        proxy = ProxyConfig(squid.host, squid.port, squid.user, squid.password)
        return start_relay(self, reactor, epmsi, self.sandbox.ca_path, proxy=proxy)

    async def test_squid_killed_mid_upload(self) -> None:
        """squid killed with half the body through: epmsi-unreachable, connection-lost, nothing kept."""
        squid = start_squid(self, allow_ports=[self.sandbox_port])
        relay = self.relay_through(squid, self.sandbox.url)
        content_type, form = _form(8 * MiB, seed=7)
        body = GatedBody(form, len(form) // 2)
        protocol = await self.connect(relay)
        request = protocol.request("POST", "/syriusUpload.do", [("Content-Type", content_type)], body)
        started = await poll_until(reactor, lambda: bool(in_flight(self.sandbox)), 200)
        self.assertTrue(started, "the upload never reached e-PMSI through squid")
        squid.process.kill()
        error = await self.assertFailure(request, RelayError)
        self.assertEqual((error.code, error.cause), ("epmsi-unreachable", "connection-lost"))
        self.assertEqual(
            error.message,
            f"Could not reach e-PMSI at {self.sandbox.url} through the proxy {squid.host}:{squid.port}: "
            "the connection was closed before an answer.",
        )
        await self.assert_cut_at_epmsi(relay)

    async def test_far_side_resets_behind_squid(self) -> None:
        """e-PMSI resets behind squid: squid drops the tunnel, the relay says so, nothing kept."""
        link = start_faulty_link(self, reactor, self.sandbox_port, after=CUT_AFTER, fault="reset")
        squid = start_squid(self, allow_ports=[link.url_port])
        relay = self.relay_through(squid, f"https://127.0.0.1:{link.url_port}")
        content_type, form = _form(8 * MiB, seed=8)
        error = await self.upload_fails(relay, GatedBody(form, len(form)), content_type)
        self.assertEqual((error.code, error.cause), ("epmsi-unreachable", "connection-lost"))
        self.assertIn(f"through the proxy {squid.host}:{squid.port}", error.message)
        await self.assert_cut_at_epmsi(relay)
        await self.upload_succeeds(relay)


class WorkstationVanishesTests(_FaultCase):
    """The workstation goes away while its upload or e-PMSI's answer is on its way."""

    async def test_mid_upload(self) -> None:
        """A workstation gone halfway through its body: short-body, and e-PMSI keeps nothing."""
        link = start_faulty_link(self, reactor, self.sandbox_port)
        relay = self.relay_to(link)
        content_type, form = _form(4 * MiB, seed=5)
        body = GatedBody(form, len(form) // 2)
        protocol = await self.connect(relay)
        request = protocol.request("POST", "/syriusUpload.do", [("Content-Type", content_type)], body)
        arrived = await poll_until(reactor, lambda: bool(in_flight(self.sandbox)) and link.forwarded > MiB, 200)
        self.assertTrue(arrived, "the first half never reached e-PMSI")
        protocol.transport.abortConnection()
        error = await self.assertFailure(request, EpopError)
        self.assertEqual(error.code, "relay-closed")
        released, closed = await self.journal(relay)
        self.assertEqual(
            (released["outcome"], released["integrity"], released["status"]),
            ("short-body", "short-body", None),
        )
        self.assertLess(released["length"], len(form))
        self.assertEqual(closed["reason"], "short-body")
        await self.assert_nothing_stored(relay)
        self.assertTrue(body.stopped.called, "the body was not told to stop")

    async def _kill_mid_upload(
        self, link: FaultyLink, held: bool = False, **settings: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """
        Start `epop send` through C{link}, SIGKILL it once e-PMSI has part of
        the body (C{held}: and once the relay has stopped reading it).
        """
        relay = self.relay_to(link, **settings)
        path = self.mktemp()
        write_random_file(path, 32 * MiB, seed=6)
        child = spawn_epop(self, reactor, "send", path, "--relay", str(relay.endpoint), "--to", "/syriusUpload.do")
        arrived = await poll_until(reactor, lambda: link.forwarded >= CUT_AFTER, 200)
        self.assertTrue(arrived, child.stderr)
        if held:
            connections = relay.service.factory.connections
            holding = await poll_until(
                reactor, lambda: bool(connections) and all(p.holding_client for p in connections.values()), 200
            )
            self.assertTrue(holding, "the relay never held the workstation back")
        child.kill()
        self.assertEqual(await child.finished(reactor, BOUND), (None, 9))
        return await self.journal(relay)

    async def test_mid_upload_process_killed(self) -> None:
        """`epop send` killed mid-upload (its kernel closes the socket): short-body, nothing kept."""
        # A slow line to e-PMSI (32 MiB take 8 s): the kill lands mid-body.
        link = start_faulty_link(self, reactor, self.sandbox_port, rate=4 * MiB)
        released, closed = await self._kill_mid_upload(link)
        self.assertEqual((released["outcome"], released["integrity"]), ("short-body", "short-body"))
        self.assertLess(released["length"], 16 * MiB)
        self.assertEqual(closed["reason"], "short-body")
        await self.assert_nothing_stored(relay=None)

    async def test_killed_while_epmsi_hangs(self) -> None:
        """
        A workstation killed while e-PMSI has stopped taking its upload: the
        relay is not reading that workstation then (flow control), so it
        learns of the loss from --epmsi-timeout, which releases everything
        and journals stalled; e-PMSI keeps nothing.
        """
        link = start_faulty_link(self, reactor, self.sandbox_port, after=CUT_AFTER, fault="stall")
        started = reactor.seconds()
        released, closed = await self._kill_mid_upload(link, held=True, epmsi_timeout=3)
        link.release()
        await self.assert_nothing_stored(relay=None)
        self.assertEqual((released["outcome"], closed["reason"]), ("stalled", "stalled"))
        self.assertEqual(released["integrity"], "pending")
        self.assertLess(reactor.seconds() - started, 3 + BOUND)

    async def test_mid_answer(self) -> None:
        """A workstation gone while e-PMSI's answer streams back: client-disconnected, all released."""
        size = 32 * MiB
        serve_big_answers(self, self.sandbox, size)
        relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)
        protocol = await self.connect(relay)

        class LeavingSink:
            """Takes e-PMSI's answer, and vanishes with the connection after 2 MiB."""

            received = 0

            def write(self, data: bytes) -> None:
                self.received += len(data)
                if self.received >= 2 * MiB:
                    protocol.transport.abortConnection()

        sink = LeavingSink()
        error = await self.assertFailure(protocol.request("GET", "/big", output=sink), EpopError)
        self.assertEqual(error.code, "relay-closed")
        self.assertLess(sink.received, size)
        released, closed = await self.journal(relay)
        self.assertEqual(
            (released["kind"], released["outcome"], released["status"], released["integrity"]),
            ("request", "client-disconnected", 200, "none"),
        )
        self.assertEqual(closed["reason"], "closed-by-client")
        self.assertLess(closed["bytes_out"], size)
        # e-PMSI's half-read answer is not kept in the pool: its connection is closed.
        await self.assert_nothing_stored(relay)


class WorkstationStopsReadingTests(_FaultCase):
    """The workstation stays connected but stops reading e-PMSI's answer."""

    async def test_stops_reading_the_answer(self) -> None:
        """
        A workstation that stops reading e-PMSI's answer: --epmsi-timeout
        cancels it (stalled), e-PMSI's connection is closed, the connection
        is closed within the grace a closing connection gets.
        """
        size = 64 * MiB
        serve_big_answers(self, self.sandbox, size)
        relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path, epmsi_timeout=0.5)
        protocol = await self.connect(relay)

        class StuckSink:
            """Takes the first MiB of the answer, then reads no more."""

            received = 0

            def write(self, data: bytes) -> None:
                self.received += len(data)
                if self.received >= MiB:
                    protocol.transport.pauseProducing()

        sink = StuckSink()
        request = protocol.request("GET", "/big", output=sink)
        request.addErrback(lambda _: None)  # the relay's ERROR is never read
        released = await poll_until(reactor, lambda: bool(relay.records("object-released")), 200)
        self.assertTrue(released, relay.types())
        [record] = relay.records("object-released")
        self.assertEqual((record["outcome"], record["status"]), ("stalled", 200))
        self.assertTrue(await poll_until(reactor, lambda: not self.sandbox.site._channels, 200))
        closed = await poll_until(reactor, lambda: bool(relay.records("connection-closed")), 200)
        self.assertTrue(closed, relay.types())
        self.assertEqual(relay.records("connection-closed")[0]["reason"], "stalled")
        await self.assert_nothing_stored(relay)
