"""
Unit tests for L{epop.epmsi.proxy}: the CONNECT handshake with C{StringTransport}
and a clock, and proxy settings.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from twisted.internet.interfaces import IStreamClientEndpoint

from epop.epmsi.proxy import ProxyConfig, ProxyError, load_proxy_password
from epop.epmsi.tunnel import TunnelEndpoint


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: list[Failure] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


@implementer(IStreamClientEndpoint)
class FakeProxyEndpoint:
    """Connects protocols to a StringTransport, or fails, or hangs."""

    def __init__(self, outcome: str = "connect") -> None:
        self.outcome = outcome
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.8", 3128))
        self.protocol: Protocol | None = None
        self.pending: Deferred[Any] | None = None

    def connect(self, factory: Any) -> Deferred[Any]:
        if self.outcome == "refuse":
            from twisted.internet.defer import fail

            return fail(ConnectionRefusedError())
        if self.outcome == "hang":
            self.pending = Deferred()
            return self.pending
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        return succeed(self.protocol)


class TunnelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.recorder = Recorder()

    def tunnel(self, outcome: str = "connect", user: str | None = None) -> tuple[Deferred[Any], FakeProxyEndpoint]:
        proxy = ProxyConfig("proxy.chu.local", 3128, user, "s3cret" if user else None)
        fake = FakeProxyEndpoint(outcome)
        endpoint = TunnelEndpoint(self.clock, proxy, "www.epmsi.atih.sante.fr", 443, 10, fake)
        return endpoint.connect(Factory.forProtocol(lambda: self.recorder)), fake

    def answer(self, fake: FakeProxyEndpoint, *chunks: bytes) -> None:
        assert fake.protocol is not None
        for chunk in chunks:
            fake.protocol.dataReceived(chunk)

    def error(self, d: Deferred[Any]) -> ProxyError:
        return self.failureResultOf(d, ProxyError).value

    def test_request(self) -> None:
        """CONNECT names e-PMSI's host and port, with Basic credentials when set."""
        _, fake = self.tunnel(user="dim")
        request = fake.transport.value()
        self.assertTrue(request.startswith(b"CONNECT www.epmsi.atih.sante.fr:443 HTTP/1.1\r\n"))
        self.assertIn(b"\r\nHost: www.epmsi.atih.sante.fr:443\r\n", request)
        self.assertIn(b"\r\nProxy-Authorization: Basic ZGltOnMzY3JldA==\r\n", request)
        self.assertTrue(request.endswith(b"\r\n\r\n"))
        _, anonymous = self.tunnel()
        self.assertNotIn(b"Proxy-Authorization", anonymous.transport.value())

    def test_answer_split_across_packets(self) -> None:
        """A 200 that arrives a few bytes at a time opens the tunnel once complete."""
        d, fake = self.tunnel()
        answer = b"HTTP/1.1 200 Connection established\r\nVia: squid\r\n\r\n"
        for i in range(len(answer) - 1):
            self.answer(fake, answer[i : i + 1])
            self.assertNoResult(d)
        self.answer(fake, answer[-1:])
        self.assertIs(self.successResultOf(d), self.recorder)
        self.assertIs(self.recorder.transport, fake.transport)

    def test_bytes_after_header_reach_tunnelled_protocol(self) -> None:
        """Bytes following the proxy's answer belong to e-PMSI's side: none is lost."""
        d, fake = self.tunnel()
        self.answer(fake, b"HTTP/1.0 200 OK\r\n\r\nfirst", b"second")
        self.successResultOf(d)
        self.assertEqual(self.recorder.received, [b"first", b"second"])
        fake.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.recorder.lost), 1)

    def test_refusals(self) -> None:
        """Each non-200 answer becomes an error naming its cause."""
        cases = [
            (None, b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=x\r\n\r\n", "proxy-auth-required"),
            ("dim", b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=x\r\n\r\n", "proxy-auth-rejected"),
            ("dim", b"HTTP/1.1 407 Nope\r\nProxy-Authenticate: NTLM\r\nProxy-Authenticate: Negotiate\r\n\r\n", "proxy-auth-unsupported"),
            (None, b"HTTP/1.1 403 Forbidden\r\n\r\n", "proxy-forbidden"),
            (None, b"HTTP/1.1 502 Bad Gateway\r\n\r\n", "proxy-error"),
        ]
        for user, answer, cause in cases:
            d, fake = self.tunnel(user=user)
            self.answer(fake, answer)
            error = self.error(d)
            self.assertEqual(error.cause, cause, answer)
            self.assertEqual(error.code, "epmsi-unreachable")
            self.assertIn("proxy.chu.local:3128", error.message)
            self.assertTrue(fake.transport.disconnected or fake.transport.disconnecting)

    def test_garbage(self) -> None:
        """An answer that is not HTTP, or a head without end, is called what it is."""
        d, fake = self.tunnel()
        self.answer(fake, b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        self.assertIn("not HTTP", self.error(d).message)
        d, fake = self.tunnel()
        self.answer(fake, b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20000)
        self.assertEqual(self.error(d).cause, "proxy-error")

    def test_closed_without_answer(self) -> None:
        """A proxy that hangs up before answering is an error, not a hang."""
        d, fake = self.tunnel()
        fake.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIn("without answering", self.error(d).message)

    def test_unreachable(self) -> None:
        """A refused connection to the proxy says the proxy is unreachable."""
        d, _ = self.tunnel("refuse")
        error = self.error(d)
        self.assertEqual(error.cause, "proxy-unreachable")
        self.assertIn("refused", error.message)

    def test_timeout_waiting_for_answer(self) -> None:
        """A proxy that accepts but never answers CONNECT times out."""
        d, fake = self.tunnel()
        self.clock.advance(9)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertEqual(self.error(d).cause, "proxy-timeout")
        self.assertTrue(fake.transport.disconnecting or fake.transport.disconnected)

    def test_timeout_connecting(self) -> None:
        """A proxy that cannot even be connected to in time times out too."""
        d, fake = self.tunnel("hang")
        self.clock.advance(10)
        self.assertEqual(self.error(d).cause, "proxy-timeout")

    def test_cancel(self) -> None:
        """Cancelling during the handshake drops the proxy connection."""
        d, fake = self.tunnel()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_while_connecting(self) -> None:
        """Cancelling before the proxy answered the TCP connection stops it."""
        d, fake = self.tunnel("hang")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(fake.pending.called)


class ConfigTests(SynchronousTestCase):
    def test_from_url(self) -> None:
        """http://HOST:PORT with an optional user; passwords never in the URL."""
        self.assertEqual(ProxyConfig.from_url("http://proxy:3128"), ProxyConfig("proxy", 3128))
        self.assertEqual(ProxyConfig.from_url("proxy:3128", user="dim").user, "dim")
        self.assertEqual(ProxyConfig.from_url("http://dim@proxy:3128").user, "dim")
        for bad, text in [
            ("http://dim:pw@proxy:3128", "password"),
            ("https://proxy:3128", "only http://"),
            ("socks5://proxy:1080", "only http://"),
            ("http://proxy", "no port"),
            ("http://proxy:3128/path", "without a path"),
        ]:
            error = self.assertRaises(ValueError, ProxyConfig.from_url, bad)
            self.assertIn(text, str(error))

    def test_password_never_in_repr(self) -> None:
        """Logging a proxy configuration never shows its password."""
        self.assertNotIn("s3cret", repr(ProxyConfig("p", 1, "u", "s3cret")))

    def test_password_sources(self) -> None:
        """The password comes from a file's first line, else the environment."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("from-file\nignored\n")
        self.assertEqual(load_proxy_password(path, {"EPOP_PROXY_PASSWORD": "env"}), "from-file")
        self.assertEqual(load_proxy_password(None, {"EPOP_PROXY_PASSWORD": "env"}), "env")
        self.assertIsNone(load_proxy_password(None, {}))
        self.assertRaises(ValueError, load_proxy_password, "/nonexistent", {})
