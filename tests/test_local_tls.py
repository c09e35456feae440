"""
Encryption of the local hop, over real loopback sockets: same port for
plain and TLS, --require-tls, mutual TLS, and every certificate failure.
"""

from __future__ import annotations

import json

import trustme
from twisted.internet import reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop.workstation.client import send_file, test_connection
from epop.local_tls import ClientTLS, RelayTLS
from epop.messages import reason_of
from epop.relay.session import SessionChoiceFactory, _RecordBatcher
from tests.relaying import start_relay
from tests.support import make_trustme_sandbox, poll_until, write_random_file


class LocalTLSTests(TestCase):
    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.ca = trustme.CA()
        self.ca_path = self.write(self.ca.cert_pem.bytes())
        relay_cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert = self.write(relay_cert.cert_chain_pems[0].bytes())
        self.key = self.write(relay_cert.private_key_pem.bytes())

    def write(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def relay(self, **tls: object):  # type: ignore[no-untyped-def]
        settings = RelayTLS(self.cert, self.key, **tls)  # type: ignore[arg-type]
        return start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path, tls=settings)

    async def test_tls_and_plain_on_one_port(self) -> None:
        """The same port serves an encrypted upload and a plain test."""
        relay = self.relay()
        path = self.mktemp()
        sha = write_random_file(path, 16 * 1024 * 1024, seed=21)
        reply = await send_file(
            reactor, path, to="/syriusUpload.do", relay=relay.endpoint,
            tls=ClientTLS(relay_ca=self.ca_path),
        )
        self.assertEqual(json.loads(reply.body)["files"][0]["sha256"], sha)
        plain = await test_connection(reactor, relay=relay.endpoint)
        self.assertTrue(plain.ok, plain.describe())
        self.assertTrue(await poll_until(reactor, lambda: len(relay.records("connection-closed")) == 2))
        self.assertEqual({r["client"].split(":")[0] for r in relay.records("connection-opened")}, {"127.0.0.1"})

    async def test_encrypted_upload_reads_large_chunks(self) -> None:
        """
        A lone encrypted upload reads its socket READ_SIZE at a time, as a
        plain one does: the read size the relay picks reaches the socket
        under the TLS layer.
        """
        from epop.tuning import READ_SIZE
        from tests.support import socket_of

        relay = self.relay()
        path = self.mktemp()
        sha = write_random_file(path, 64 * 1024 * 1024, seed=22)
        sent = send_file(
            reactor, path, to="/syriusUpload.do", relay=relay.endpoint,
            tls=ClientTLS(relay_ca=self.ca_path),
        )
        connections = relay.service.factory.connections

        def reading_large() -> bool:
            return any(socket_of(p.transport).bufferSize == READ_SIZE for p in connections.values())

        seen = await poll_until(reactor, reading_large, attempts=2000, interval=0.005)
        reply = await sent
        self.assertEqual(json.loads(reply.body)["files"][0]["sha256"], sha)
        self.assertTrue(seen)

    async def test_require_tls(self) -> None:
        """With --require-tls, a plain session is refused with a message saying so."""
        relay = self.relay(require=True)
        report = await test_connection(reactor, relay=relay.endpoint)
        self.assertEqual((report.failed_step, report.error.code), ("relay", "tls-required"))
        self.assertIn("encrypted connections only", report.error.message)
        self.assertTrue(await poll_until(reactor, lambda: "connection-closed" in relay.types()))
        self.assertEqual(relay.records("connection-closed")[0]["reason"], "tls-required")
        # Its bytes were not read, but they arrived.
        self.assertGreater(relay.records("connection-closed")[0]["bytes_in"], 0)
        encrypted = await test_connection(reactor, relay=relay.endpoint, tls=ClientTLS(self.ca_path))
        self.assertTrue(encrypted.ok, encrypted.describe())

    async def test_relay_without_tls(self) -> None:
        """Asking a relay without a certificate for TLS says it does not speak TLS."""
        relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)
        report = await test_connection(reactor, relay=relay.endpoint, tls=ClientTLS(self.ca_path))
        self.assertEqual((report.failed_step, report.error.cause), ("relay", "tls"))
        self.assertIn("does not speak TLS: connect without --tls, or ask its administrator to turn encryption on (twistd epop --tls-cert auto).", report.error.message)
        self.assertTrue(await poll_until(reactor, lambda: "connection-closed" in relay.types()))
        [closed] = relay.records("connection-closed")
        self.assertEqual(closed["reason"], "tls-not-configured")
        self.assertGreater(closed["bytes_in"], 0)  # the ClientHello, unread but counted

    async def test_unknown_authority(self) -> None:
        """
        A relay certificate from another authority than --relay-ca is an
        error, never plain text; from none the system trusts, too.
        """
        relay = self.relay()
        other = self.write(trustme.CA().cert_pem.bytes())
        report = await test_connection(reactor, relay=relay.endpoint, tls=ClientTLS(other))
        self.assertEqual(report.error.code, "relay-tls")
        self.assertIn("does not trust", report.error.message)
        unknown = await test_connection(reactor, relay=relay.endpoint, tls=ClientTLS())
        self.assertEqual(unknown.error.code, "relay-tls")
        self.assertIn("could not be verified", unknown.error.message)
        # The relay's journal says the handshake failed, in OpenSSL's words.
        self.assertTrue(await poll_until(reactor, lambda: len(relay.records("connection-closed")) == 2))
        for closed in relay.records("connection-closed"):
            self.assertEqual(closed["reason"], "tls-failed")
            self.assertIn("unknown ca", closed["error"])

    async def test_name_mismatch(self) -> None:
        """A relay certificate for another name fails the host name check."""
        other = self.ca.issue_cert("relay.chu.local")
        self.cert = self.write(other.cert_chain_pems[0].bytes())
        self.key = self.write(other.private_key_pem.bytes())
        relay = self.relay()
        report = await test_connection(reactor, relay=relay.endpoint, tls=ClientTLS(self.ca_path))
        self.assertEqual(report.error.code, "relay-tls")
        self.assertIn("does not match", report.error.message)

    async def test_mutual_tls(self) -> None:
        """With --tls-client-ca, only workstations with a certificate from that CA get in."""
        clients = trustme.CA()
        relay = self.relay(client_ca=self.write(clients.cert_pem.bytes()))
        without = await test_connection(reactor, relay=relay.endpoint, tls=ClientTLS(self.ca_path))
        self.assertEqual(without.error.code, "relay-tls")
        self.assertIn("client certificate", without.error.message)
        self.assertTrue(await poll_until(reactor, lambda: "connection-closed" in relay.types()))
        [closed] = relay.records("connection-closed")
        self.assertEqual(closed["reason"], "tls-failed")
        self.assertIn("certificate", closed["error"])
        mine = clients.issue_cert("poste-dim-01")
        tls = ClientTLS(
            self.ca_path,
            self.write(mine.cert_chain_pems[0].bytes()),
            self.write(mine.private_key_pem.bytes()),
        )
        report = await test_connection(reactor, relay=relay.endpoint, tls=tls)
        self.assertTrue(report.ok, report.describe())

    async def test_allowlist_comes_first(self) -> None:
        """
        A client outside the allowlist learns only that it is not allowed,
        whether its choice of TLS or plain would also have been refused.
        """
        relay = start_relay(
            self, reactor, self.sandbox.url, self.sandbox.ca_path,
            tls=RelayTLS(self.cert, self.key, require=True), allow=("10.0.0.0/8",),
        )
        plain = await test_connection(reactor, relay=relay.endpoint)
        self.assertEqual((plain.failed_step, plain.error.code), ("relay", "not-authorized"))
        self.assertTrue(await poll_until(reactor, lambda: "connection-closed" in relay.types()))
        without_tls = start_relay(
            self, reactor, self.sandbox.url, self.sandbox.ca_path, allow=("10.0.0.0/8",)
        )
        await test_connection(reactor, relay=without_tls.endpoint, tls=ClientTLS(self.ca_path))
        self.assertTrue(await poll_until(reactor, lambda: "connection-closed" in without_tls.types()))
        for each in (relay, without_tls):
            [closed] = each.records("connection-closed")
            self.assertEqual(closed["reason"], "not-authorized")
            self.assertGreater(closed["bytes_in"], 0)

    def test_bad_files(self) -> None:
        """Unusable certificate or key files are refused when the relay is built, naming them."""
        from epop.relay.service import RelaySettings, make_relay_service

        for tls, text in [
            (RelayTLS("/nonexistent.pem", self.key), "cannot read the certificate"),
            (RelayTLS(self.cert, self.write(b"junk")), "not a PEM private key"),
            (RelayTLS(self.cert, self.write(trustme.CA().issue_cert("x").private_key_pem.bytes())),
             "is not the key of the certificate"),
        ]:
            error = self.assertRaises(
                ValueError, make_relay_service, reactor, RelaySettings(tls=tls, listen=())
            )
            self.assertIn(text, str(error))

    def test_key_of_another_certificate_in_french(self) -> None:
        """A key that is not the certificate's is said in French too, without the library's English."""
        other_key = self.write(trustme.CA().issue_cert("x").private_key_pem.bytes())
        error = self.assertRaises(ValueError, RelayTLS(self.cert, other_key).options)
        said = reason_of(error).render("fr")
        self.assertEqual(
            said,
            f"la clé privée {other_key} n'est pas celle du certificat {self.cert} : "
            "indiquez la clé créée avec ce certificat",
        )

    async def test_command_line(self) -> None:
        """`epop test --tls --relay-ca` works, and TLS flags out of place are usage errors."""
        import io
        import os

        from epop import cli

        relay = self.relay(require=True)
        env = {"EPOP_CONFIG": os.path.abspath(self.mktemp())}

        async def epop(*argv: str) -> tuple[int, str]:
            stderr = io.StringIO()
            code = await cli.run(reactor, list(argv), stdout=io.BytesIO(), stderr=stderr, environ=env)
            return code, stderr.getvalue()

        where = str(relay.endpoint)
        self.assertEqual((await epop("test", "--relay", where, "--tls", "--relay-ca", self.ca_path))[0], 0)
        code, err = await epop("test", "--relay", where)
        self.assertEqual(code, 1)
        self.assertIn("encrypted connections only", err)
        for argv, text in [
            (["test", "--relay", where, "--relay-ca", self.ca_path], "need --tls"),
            (["test", "--direct", "--tls"], "apply to --relay"),
            (["test", "--relay", where, "--tls", "--tls-client-cert", self.cert], "go together"),
        ]:
            code, err = await epop(*argv)
            self.assertEqual(code, 2, argv)
            self.assertIn(text, err)

    def test_relay_options(self) -> None:
        """twistd epop's TLS options are checked when parsed."""
        from twisted.python import usage

        from epop.relay import tap

        def parse(*args: str) -> tap.Options:
            options = tap.Options()
            options.parseOptions(list(args))
            return options

        settings = parse("--tls-cert", self.cert, "--tls-key", self.key, "--require-tls").settings()
        self.assertEqual(settings.tls, RelayTLS(self.cert, self.key, None, None, True))
        for args, text in [
            (["--tls-key", self.key], "--tls-key needs --tls-cert"),
            (["--require-tls"], "--require-tls needs --tls-cert"),
            (["--tls-cert", self.cert], "--tls-cert needs --tls-key"),
            (["--tls-cert", self.cert, "--tls-key", self.cert], "--tls-cert:"),
        ]:
            error = self.assertRaises(usage.UsageError, parse, *args)
            self.assertIn(text, str(error))

    def test_relay_logs_its_certificate(self) -> None:
        """
        A relay given its certificate file logs, at start and in its
        language, whose certificate it is, until when, and its fingerprint
        (as --tls-cert auto logs its own).
        """
        from twisted.logger import formatEvent, globalLogPublisher

        from epop.certificates import fingerprint, read_certificates
        from epop.relay import tap

        lines: list[str] = []
        observe = lambda event: lines.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        cert = read_certificates(self.cert, "certificate")[0]
        until = cert.original.to_cryptography().not_valid_after_utc.strftime("%Y-%m-%d")
        for language, said in [
            ("en", f"Encryption available (TLS): certificate {self.cert}, subject "),
            ("fr", f"Chiffrement disponible (TLS) : certificat {self.cert}, sujet "),
        ]:
            del lines[:]
            tap.Options().parseOptions(["--lang", language, "--tls-cert", self.cert, "--tls-key", self.key])
            [line] = [line for line in lines if said in line]
            self.assertIn(fingerprint(cert), line)
            self.assertIn(until, line)
            self.assertIn("O=trustme", line)
            self.assertIn(" 127.0.0.1, localhost, ", line)


class _Recorder(Protocol):
    """Records every call that hands it data."""

    def connectionMade(self) -> None:
        self.calls: list[bytes] = []
        self.lost: list[Failure] = []

    def dataReceived(self, data: bytes) -> None:
        self.calls.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.append(reason)


class _Sender(Protocol):
    def __init__(self, payload: bytes, close: bool) -> None:
        self.payload = payload
        self.close = close

    def connectionMade(self) -> None:
        self.transport.write(self.payload)
        if self.close:
            self.transport.loseConnection()


class RecordBatchingTests(SynchronousTestCase):
    """
    What TLS decrypts from one socket read reaches the relay in one call,
    not one call per 16 KiB record.
    """

    def setUp(self) -> None:
        ca = trustme.CA()
        issued = ca.issue_cert("localhost")
        cert, key = self.mktemp(), self.mktemp()
        FilePath(cert).setContent(issued.cert_chain_pems[0].bytes())
        FilePath(key).setContent(issued.private_key_pem.bytes())
        self.tls = RelayTLS(cert, key)
        self.trust = Certificate.loadPEM(ca.cert_pem.bytes())

    def connect(self, payload: bytes, close: bool = False) -> _Recorder:
        recorders: list[_Recorder] = []

        def record() -> _Recorder:
            recorders.append(_Recorder())
            return recorders[-1]

        server = SessionChoiceFactory(Factory.forProtocol(record), self.tls, Clock())
        client = TLSMemoryBIOFactory(
            optionsForClientTLS("localhost", trustRoot=self.trust),
            True,
            Factory.forProtocol(lambda: _Sender(payload, close)),
        )
        _, _, pump = iosim.connectedServerAndClient(
            lambda: server.buildProtocol(None), lambda: client.buildProtocol(None), greet=False
        )
        pump.flush()
        [recorder] = recorders
        return recorder

    def test_one_read_one_call(self) -> None:
        """256 KiB sent at once (16 TLS records) arrive in one call, intact."""
        payload = bytes(range(256)) * 1024
        recorder = self.connect(payload)
        self.assertEqual(len(recorder.calls), 1)
        self.assertEqual(recorder.calls[0], payload)

    def test_data_before_close_arrives_first(self) -> None:
        """Data and the TLS close in one read: the data is handed on, then the loss."""
        recorder = self.connect(b"BODY", close=True)
        self.assertEqual(recorder.calls, [b"BODY"])
        self.assertEqual(len(recorder.lost), 1)

    def test_batcher_outside_a_read(self) -> None:
        """Outside a socket read, data goes straight through."""
        recorder = _Recorder()
        batcher = _RecordBatcher(WrappingFactory(Factory.forProtocol(_Recorder)), recorder)
        batcher.makeConnection(StringTransport())
        batcher.dataReceived(b"a")
        batcher.begin()
        batcher.dataReceived(b"b")
        batcher.dataReceived(b"c")
        self.assertEqual(recorder.calls, [b"a"])
        batcher.end()
        self.assertEqual(recorder.calls, [b"a", b"bc"])
        batcher.begin()
        batcher.dataReceived(b"d")
        batcher.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(recorder.calls, [b"a", b"bc", b"d"])
        self.assertEqual(len(recorder.lost), 1)
