"""
The whole chain over real loopback sockets: workstation, relay, and the
e-PMSI sandbox over HTTPS with trustme certificates.
"""

from __future__ import annotations

import hashlib
import json

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from epop.workstation.client import send_file, test_connection
from epop.errors import EpopError
from epop.multipart import MultipartFileBody, make_cooperator
from epop.wire import FrameType, encode_message
from tests.relaying import HELLO, exchange, raw_connect, start_relay
from tests.support import (
    TestSandbox,
    connect_to_epmsi,
    free_port,
    make_trustme_sandbox,
    poll_until,
    socket_of,
    write_random_file,
)

MiB = 1024 * 1024


def _settled(sandbox: TestSandbox) -> bool:
    """The sandbox has no connection open and no upload in progress."""
    partial = sandbox.upload_directory.isdir() and any(
        child.basename().startswith(".") for child in sandbox.upload_directory.children()
    )
    return not partial and not sandbox.site._channels


def _multipart_bytes(path: str) -> tuple[str, bytes]:
    """A small multipart body held in memory, to send as raw e-POP bytes."""
    body = MultipartFileBody(path, field="theFile", cooperator=make_cooperator(reactor))
    chunks: list[bytes] = []

    class Sink:
        write = staticmethod(chunks.append)

    for _ in body._chunks(open(path, "rb"), Sink()):
        pass
    return body.content_type, b"".join(chunks)


class UploadTests(TestCase):
    """Files arrive whole and unchanged, through the relay or directly."""

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)
        self.path = self.mktemp()
        self.size = 64 * MiB
        self.sha = write_random_file(self.path, self.size, seed=7)

    async def test_through_relay(self) -> None:
        """A 64 MiB file sent through the relay reaches e-PMSI with its SHA-256."""
        reply = await send_file(
            reactor,
            self.path,
            to="/syriusUpload.do?session=1",
            field="theFile",
            fields=[("userId", "dim"), ("year", "2026")],
            relay=self.relay.endpoint,
        )
        self.assertEqual(reply.status, 200)
        receipt = json.loads(reply.body)
        self.assertEqual(receipt["files"][0]["sha256"], self.sha)
        self.assertEqual(receipt["files"][0]["size"], self.size)
        self.assertEqual(receipt["files"][0]["field"], "theFile")
        self.assertEqual(receipt["path"], "/syriusUpload.do")
        [stored] = self.sandbox.complete_files()
        self.assertEqual(self.sandbox.sha256_of(stored), self.sha)

    async def test_direct(self) -> None:
        """The same file sent straight to e-PMSI arrives with its SHA-256."""
        reply = await send_file(
            reactor,
            self.path,
            to="/syriusUpload.do",
            field="theFile",
            epmsi=self.sandbox.url,
            ca_file=self.sandbox.ca_path,
        )
        self.assertEqual(reply.status, 200)
        receipt = json.loads(reply.body)
        self.assertEqual(receipt["files"][0]["sha256"], self.sha)
        [stored] = self.sandbox.complete_files()
        self.assertEqual(self.sandbox.sha256_of(stored), self.sha)

    async def test_journal_of_one_transfer(self) -> None:
        """One upload journals its events in order, with no query string."""
        await send_file(
            reactor, self.path, to="/syriusUpload.do?userPwd=secret", relay=self.relay.endpoint
        )
        self.assertTrue(
            await poll_until(reactor, lambda: "connection-closed" in self.relay.types())
        )
        self.assertEqual(
            self.relay.types(),
            [
                "listening-opened",
                "connection-opened",
                "object-instantiated",
                "object-released",
                "connection-closed",
            ],
        )
        released = self.relay.records("object-released")[0]
        self.assertEqual(released["integrity"], "ok")
        self.assertEqual(released["status"], 200)
        self.assertEqual(released["outcome"], "completed")
        self.assertEqual(released["path"], "/syriusUpload.do")
        self.assertNotIn("secret", json.dumps(self.relay.journal.records))
        closed = self.relay.records("connection-closed")[0]
        self.assertGreater(closed["bytes_in"], self.size)
        self.assertEqual(closed["reason"], "closed-by-client")


class IntegrityTests(TestCase):
    """e-PMSI never receives a complete file that the workstation did not send."""

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)
        path = self.mktemp()
        write_random_file(path, 3 * MiB, seed=3)
        self.content_type, self.body = _multipart_bytes(path)

    def _request(self) -> bytes:
        return encode_message(
            FrameType.REQUEST,
            {
                "method": "POST",
                "path": "/syriusUpload.do",
                "headers": [["Content-Type", self.content_type]],
                "length": len(self.body),
            },
        )

    async def _send(self, sha256: str) -> list[dict]:
        client = await raw_connect(self, reactor, self.relay.port)
        client.transport.write(HELLO + self._request())
        client.transport.write(self.body)
        client.transport.write(encode_message(FrameType.BODY_END, {"sha256": sha256}))
        await poll_until(
            reactor,
            lambda: any(f.kind in (FrameType.RESPONSE_END, FrameType.ERROR) for f in client.frames),
            attempts=200,
        )
        return client.messages(FrameType.ERROR)

    async def test_honest_hash_delivers(self) -> None:
        """The raw path used below does deliver a file when the hash is right."""
        errors = await self._send(hashlib.sha256(self.body).hexdigest())
        self.assertEqual(errors, [])
        self.assertEqual(len(self.sandbox.complete_files()), 1)

    async def test_lying_hash_is_refused(self) -> None:
        """A wrong SHA-256 gets an integrity error and e-PMSI keeps no file."""
        errors = await self._send("0" * 64)
        self.assertEqual([e["code"] for e in errors], ["integrity-mismatch"])
        self.assertIn("SHA-256", errors[0]["message"])
        self.assertTrue(
            await poll_until(reactor, lambda: "connection-closed" in self.relay.types())
        )
        # Give the sandbox time to see the aborted request, then look.
        self.assertTrue(await poll_until(reactor, lambda: _settled(self.sandbox), attempts=100))
        self.assertEqual(self.sandbox.complete_files(), [])
        released = self.relay.records("object-released")[0]
        self.assertEqual(released["integrity"], "mismatch")
        self.assertEqual(released["outcome"], "integrity-mismatch")

    async def test_short_body_is_never_delivered(self) -> None:
        """A workstation that stops mid-body leaves no file on e-PMSI."""
        client = await raw_connect(self, reactor, self.relay.port)
        client.transport.write(HELLO + self._request() + self.body[: len(self.body) // 2])
        self.assertTrue(
            await poll_until(reactor, lambda: "object-instantiated" in self.relay.types())
        )
        client.transport.loseConnection()
        await client.closed
        self.assertTrue(
            await poll_until(reactor, lambda: "connection-closed" in self.relay.types())
        )
        self.assertTrue(await poll_until(reactor, lambda: _settled(self.sandbox), attempts=100))
        self.assertEqual(self.sandbox.complete_files(), [])
        released = self.relay.records("object-released")[0]
        self.assertEqual(released["integrity"], "short-body")
        self.assertEqual(self.relay.records("connection-closed")[0]["reason"], "short-body")


class FailureTests(TestCase):
    """Each way the chain can break is reported with its cause."""

    async def test_epmsi_down(self) -> None:
        """With e-PMSI down, uploads and tests name the refused connection."""
        sandbox = make_trustme_sandbox(self, reactor)
        relay = start_relay(self, reactor, f"https://127.0.0.1:{free_port()}", sandbox.ca_path)
        path = self.mktemp()
        write_random_file(path, MiB)
        error = await self.assertFailure(
            send_file(reactor, path, to="/syriusUpload.do", relay=relay.endpoint), EpopError
        )
        self.assertEqual((error.code, error.cause), ("epmsi-unreachable", "refused"))
        self.assertIn("connection refused", error.message)
        report = await test_connection(reactor, relay=relay.endpoint)
        self.assertEqual(report.failed_step, "epmsi")
        self.assertEqual(report.error.cause, "refused")
        self.assertIsNotNone(report.relay_elapsed)

    async def test_untrusted_certificate(self) -> None:
        """A relay that does not trust e-PMSI's certificate says it is TLS."""
        sandbox = make_trustme_sandbox(self, reactor)
        other = self.mktemp()
        import trustme

        trustme.CA().cert_pem.write_to_path(other)
        relay = start_relay(self, reactor, sandbox.url, other)
        report = await test_connection(reactor, relay=relay.endpoint)
        self.assertEqual(report.failed_step, "epmsi")
        self.assertEqual(report.error.cause, "tls")
        self.assertIn("certificate", report.error.message)

    async def test_wrong_host_name(self) -> None:
        """A certificate for another name fails host name verification."""
        sandbox = make_trustme_sandbox(self, reactor)
        port = sandbox.port.getHost().port
        relay = start_relay(self, reactor, f"https://localhost.localdomain:{port}", sandbox.ca_path)
        report = await test_connection(reactor, relay=relay.endpoint)
        self.assertEqual(report.failed_step, "epmsi")
        self.assertIn(report.error.cause, ("tls", "dns"))

    async def test_relay_not_listening(self) -> None:
        """Nothing listening on the relay's port: connection refused, with hints."""
        from epop.workstation.client import RelayAddress

        report = await test_connection(reactor, relay=RelayAddress("127.0.0.1", free_port()))
        self.assertEqual(report.failed_step, "relay")
        self.assertEqual(report.error.cause, "refused")
        self.assertIn("Is the relay started and listening?", report.error.message)

    async def test_relay_silent(self) -> None:
        """A machine that accepts but never answers: no answer in time."""
        from epop.workstation.client import RelayAddress

        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        report = await test_connection(
            reactor, relay=RelayAddress("127.0.0.1", port.getHost().port), timeout=0.3
        )
        self.assertEqual(report.failed_step, "relay")
        self.assertEqual(report.error.cause, "timeout")
        self.assertIn("no answer in time", report.error.message)

    async def test_epmsi_silent(self) -> None:
        """An e-PMSI that accepts but never answers TLS is 'no answer in time'."""
        sandbox = make_trustme_sandbox(self, reactor)
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        report = await test_connection(
            reactor,
            epmsi=f"https://127.0.0.1:{port.getHost().port}",
            ca_file=sandbox.ca_path,
            timeout=0.3,
        )
        self.assertEqual(report.failed_step, "epmsi")
        self.assertEqual(report.error.cause, "timeout")
        self.assertIn("no answer in time (0.3 s)", report.error.message)

    async def test_test_succeeds(self) -> None:
        """The test operation reports the address reached and the time taken."""
        sandbox = make_trustme_sandbox(self, reactor)
        relay = start_relay(self, reactor, sandbox.url, sandbox.ca_path)
        report = await test_connection(reactor, relay=relay.endpoint)
        self.assertTrue(report.ok, report.describe())
        self.assertEqual(report.epmsi.address, f"127.0.0.1:{sandbox.port.getHost().port}")
        self.assertEqual(report.epmsi.status, 200)
        self.assertIn("reached at 127.0.0.1", report.describe())
        direct = await test_connection(reactor, epmsi=sandbox.url, ca_file=sandbox.ca_path)
        self.assertTrue(direct.ok, direct.describe())


class MalformedInputTests(TestCase):
    """Garbage gets an error frame and a closed connection; others carry on."""

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)

    async def _error_for(self, data: bytes) -> dict:
        client = await raw_connect(self, reactor, self.relay.port)
        client.transport.write(data)
        await client.closed
        [error] = client.messages(FrameType.ERROR)
        return error

    async def test_http_garbage(self) -> None:
        """
        An HTTP request on the relay's port is answered in HTTP (the relay
        is an HTTPS proxy for e-PMSI, tests.test_tunnel); a byte that is
        neither HTTP, TLS nor e-POP is told it is not e-POP.
        """
        answer = await exchange(reactor, self.relay.port, b"PUT / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 405 "), answer)
        error = await self._error_for(b"\xff / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(error["code"], "bad-frame")

    async def test_oversized_frame(self) -> None:
        """A frame longer than the limit is refused before it is buffered."""
        error = await self._error_for(HELLO + bytes([FrameType.REQUEST]) + (2**31).to_bytes(4, "big"))
        self.assertEqual(error["code"], "frame-too-large")

    async def test_bad_json(self) -> None:
        """A control frame that is not JSON is a bad frame."""
        error = await self._error_for(bytes([FrameType.HELLO]) + (3).to_bytes(4, "big") + b"{{{")
        self.assertEqual(error["code"], "bad-frame")

    async def test_unknown_version(self) -> None:
        """A workstation speaking only a future version is told so."""
        error = await self._error_for(
            encode_message(FrameType.HELLO, {"protocol": "e-pop", "versions": [7]})
        )
        self.assertEqual(error["code"], "unsupported-version")
        self.assertIn("7", error["message"])

    async def test_open_proxy_refused(self) -> None:
        """A request for an absolute URL is refused: the relay is not an open proxy."""
        error = await self._error_for(
            HELLO
            + encode_message(
                FrameType.REQUEST,
                {"method": "GET", "path": "http://elsewhere.example/", "headers": [], "length": 0},
            )
        )
        self.assertEqual(error["code"], "bad-request")

    async def test_truncated_frame_then_others_served(self) -> None:
        """A truncated frame is journaled, and the relay keeps serving others."""
        client = await raw_connect(self, reactor, self.relay.port)
        client.transport.write(HELLO[:7])
        self.assertTrue(
            await poll_until(reactor, lambda: "connection-opened" in self.relay.types())
        )
        client.transport.loseConnection()
        await client.closed
        self.assertTrue(
            await poll_until(reactor, lambda: "connection-closed" in self.relay.types())
        )
        self.assertEqual(self.relay.records("connection-closed")[0]["reason"], "truncated-frame")
        report = await test_connection(reactor, relay=self.relay.endpoint)
        self.assertTrue(report.ok, report.describe())


class StoppingTests(TestCase):
    async def test_stop_tells_connected_workstations(self) -> None:
        """Stopping the relay tells connected workstations why, and journals it."""
        sandbox = make_trustme_sandbox(self, reactor)
        relay = start_relay(self, reactor, sandbox.url, sandbox.ca_path)
        client = await raw_connect(self, reactor, relay.port)
        client.transport.write(HELLO)
        await client.next_frame()
        await relay.service.stopService()
        await client.closed
        self.assertEqual([e["code"] for e in client.messages(FrameType.ERROR)], ["relay-stopping"])
        self.assertEqual(relay.records("connection-closed")[0]["reason"], "relay-stopping")
        self.assertEqual(relay.types()[-1], "connection-closed")
        self.assertTrue(relay.journal.closed)

    async def test_stop_tells_silent_connections(self) -> None:
        """A connection that has not said a word yet is told and journaled when the relay stops."""
        sandbox = make_trustme_sandbox(self, reactor)
        relay = start_relay(self, reactor, sandbox.url, sandbox.ca_path)
        client = await raw_connect(self, reactor, relay.port)
        await relay.service.stopService()
        await client.closed
        self.assertEqual([e["code"] for e in client.messages(FrameType.ERROR)], ["relay-stopping"])
        self.assertEqual(relay.records("connection-closed")[0]["reason"], "relay-stopping")


class TuningTests(TestCase):
    async def test_workstation_socket_reads_large_chunks(self) -> None:
        """
        The relay reads a workstation's socket 64 KiB at a time until an
        upload streams, then 256 KiB at a time when it is the only one (see
        epop.tuning).
        """
        from twisted.internet.task import deferLater

        from epop.tuning import MIN_READ_SIZE, READ_SIZE

        sandbox = make_trustme_sandbox(self, reactor)
        relay = start_relay(self, reactor, sandbox.url, sandbox.ca_path)
        client = await raw_connect(self, reactor, relay.port)
        client.transport.write(HELLO)
        await client.next_frame()
        [protocol] = relay.service.factory.connections.values()
        socket = socket_of(protocol.transport)
        self.assertEqual(socket.bufferSize, MIN_READ_SIZE)
        request = {"method": "POST", "path": "/syriusUpload.do", "headers": [], "length": 1 << 20}
        client.transport.write(encode_message(FrameType.REQUEST, request) + b"x" * 65536)
        for _ in range(500):  # at most 5 s for e-PMSI's connection to be ready
            if socket.bufferSize != MIN_READ_SIZE:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(socket.bufferSize, READ_SIZE)

    async def test_epmsi_socket_sends_large_writes(self) -> None:
        """The connection to e-PMSI hands the kernel up to SEND_LIMIT per send."""
        from epop.tuning import SEND_LIMIT

        sandbox = make_trustme_sandbox(self, reactor)
        protocol = await connect_to_epmsi(self, reactor, sandbox)
        self.assertEqual(socket_of(protocol.transport).SEND_LIMIT, SEND_LIMIT)
