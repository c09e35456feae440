"""
The parts of the relay's HTTPS proxy mode, alone: the allowed destinations,
the request head, and the tunnel's flow control (with in-memory transports,
not timing).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from epop.epmsi.proxy import ProxyConfig, ProxyError
from epop.errors import describe_upstream_failure
from epop.messages import Text
from epop.relay.destinations import ATIH_SIGN_IN, Destinations, is_local_address, parse_destination
from epop.relay.http_head import MAX_HEAD, BadHead, HeadReader, language_of, url_destination
from epop.relay.http_proxy import HttpProxyFactory, HttpProxySession
from epop.relay.protocol import RelayFactory
from epop.relay.tunnel import describe_failure
from epop.relay.settings import RelaySettings, RelaySettingsError


class DestinationTests(SynchronousTestCase):
    def test_default_epmsi_and_sign_in(self) -> None:
        """By default: e-PMSI's host and port, and ATIH's sign-in hosts."""
        found = RelaySettings().destinations()
        self.assertIsNotNone(found.find("www.epmsi.atih.sante.fr", 443))
        for host, port in ATIH_SIGN_IN:
            self.assertIsNotNone(found.find(host, port))
        self.assertEqual(len(found.entries), 3)

    def test_other_epmsi_alone(self) -> None:
        """Another --epmsi: its host and port only, no ATIH hosts."""
        found = RelaySettings(epmsi="https://epmsi.test:8443").destinations()
        self.assertEqual([str(d) for d in found.entries], ["epmsi.test:8443"])

    def test_exact_names(self) -> None:
        """Case and a trailing dot aside, names match exactly; the port too."""
        found = Destinations(("www.epmsi.atih.sante.fr", 443))
        self.assertIsNotNone(found.find("WWW.epmsi.ATIH.sante.fr.", 443))
        self.assertIsNone(found.find("epmsi.atih.sante.fr", 443))
        self.assertIsNone(found.find("www.epmsi.atih.sante.fr.evil.example", 443))
        self.assertIsNone(found.find("www.epmsi.atih.sante.fr", 8443))

    def test_tunnel_to(self) -> None:
        found = Destinations(None, extra=["files.example.org", "[fd00::1]:8443", "10.0.0.1:444"])
        self.assertEqual(
            [str(d) for d in found.entries], ["files.example.org:443", "[fd00::1]:8443", "10.0.0.1:444"]
        )
        self.assertIsNotNone(found.find("[fd00::1]", 8443))

    def test_no_tunnel(self) -> None:
        self.assertFalse(RelaySettings(no_tunnel=True).destinations())

    def test_local_addresses(self) -> None:
        """A built-in name may not resolve to this machine; a typed one or a literal may."""
        builtin = Destinations(("www.epmsi.atih.sante.fr", 443), True).find("www.epmsi.atih.sante.fr", 443)
        assert builtin is not None
        for address in ("127.0.0.1", "::1", "169.254.1.1", "fe80::1", "::ffff:127.0.0.1"):
            self.assertTrue(is_local_address(address), address)
            self.assertFalse(builtin.may_resolve_to(address), address)
        self.assertTrue(builtin.may_resolve_to("193.50.1.1"))
        typed = Destinations(None, extra=["localhost:8443"]).find("localhost", 8443)
        assert typed is not None
        self.assertTrue(typed.may_resolve_to("127.0.0.1"))
        literal = Destinations(("127.0.0.1", 443), True).find("127.0.0.1", 443)
        assert literal is not None
        self.assertTrue(literal.may_resolve_to("127.0.0.1"))

    def test_bad_entries(self) -> None:
        for entry in ("", "host:0", "host:99999", "host:x", "a b", "http://x", "[fd00::1"):
            self.assertRaises(ValueError, parse_destination, entry)
        with self.assertRaises(RelaySettingsError) as caught:
            RelaySettings(tunnel_to=("host:x",))
        self.assertIn("tunnel_to", str(caught.exception))
        with self.assertRaises(RelaySettingsError):
            RelaySettings(tunnel_to="host")  # type: ignore[arg-type]
        with self.assertRaises(RelaySettingsError):
            RelaySettings(tunnel_idle_timeout=0)


class HeadTests(SynchronousTestCase):
    def test_head_and_rest(self) -> None:
        reader = HeadReader()
        self.assertIsNone(reader.feed(b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n"))
        found = reader.feed(b"Accept-Language: fr\r\n\r\n\x16\x03")
        assert found is not None
        head, rest = found
        self.assertEqual((head.method, head.target, head.header("Host")), ("CONNECT", "h:443", "h:443"))
        self.assertEqual(rest, b"\x16\x03")

    def test_limits(self) -> None:
        with self.assertRaises(BadHead) as caught:
            HeadReader().feed(b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD)
        self.assertEqual(caught.exception.status, 431)
        for bad in (b"GET /\r\n\r\n", b"GET / HTTP/2\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n"):
            with self.assertRaises(BadHead) as caught:
                HeadReader().feed(bad)
            self.assertEqual(caught.exception.status, 400, bad)

    def test_language(self) -> None:
        self.assertEqual(language_of(""), "en")
        self.assertEqual(language_of("fr-FR,fr;q=0.9,en;q=0.8"), "fr")
        self.assertEqual(language_of("de, en;q=0.5, fr;q=0.4"), "en")
        self.assertEqual(language_of("en;q=0.1, fr-CA"), "fr")

    def test_url_destination(self) -> None:
        """A proxy request's host and port, for the journal: the scheme's port by default, nothing else of the URL."""
        cases = {
            "http://www.Example.org/": ("www.example.org", 80),
            "HTTPS://bob:s3cret@portal.example:8443/login?t=1": ("portal.example", 8443),
            "http://[fd00::1]:8080/": ("fd00::1", 8080),
            "http://h:0/": ("h", 0),
            "http://h:99999/": None,
            "http://h:port/": None,
            "http://[fd00::1/": None,
            "http:///path": None,
            "ftp://h/": None,
        }
        for target, expected in cases.items():
            self.assertEqual(url_destination(target), expected, target)


def _session(
    reactor: MemoryReactorClock, destinations: Destinations | None = None
) -> tuple[RelayFactory, HttpProxySession, StringTransport]:
    relay = RelayFactory(reactor, None, "run")  # type: ignore[arg-type]
    if destinations is None:
        destinations = Destinations(None, extra=["10.0.0.9:443"])
    factory = HttpProxyFactory(relay, destinations)
    session = factory.buildProtocol(IPv4Address("TCP", "10.1.1.1", 5000))
    client = StringTransport(peerAddress=IPv4Address("TCP", "10.1.1.1", 5000))
    session.makeConnection(client)
    return relay, session, client


def _tunnel(reactor: MemoryReactorClock) -> tuple[RelayFactory, HttpProxySession, StringTransport, StringTransport]:
    """A session whose tunnel to 10.0.0.9:443 is open, over in-memory transports."""
    relay, session, client = _session(reactor)
    session.dataReceived(b"CONNECT 10.0.0.9:443 HTTP/1.1\r\n\r\nhello")
    [(_host, _port, connecting, _timeout, _bind)] = reactor.tcpClients
    far = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 443))
    connecting.buildProtocol(None).makeConnection(far)
    return relay, session, client, far


class _SlowReader(FileDescriptor):
    """
    The far side of a tunnel as a real file descriptor, in memory: its
    socket takes only what L{take} lets through.
    """

    connected = True

    def __init__(self, reactor: MemoryReactorClock) -> None:
        super().__init__(reactor)
        self._allowed = 0

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "10.0.0.9", 443)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "10.0.0.2", 40000)

    def writeSomeData(self, data: bytes) -> int:
        taken = min(len(data), self._allowed)
        self._allowed -= taken
        return taken

    def take(self, size: int) -> None:
        """The reader reads C{size} bytes; the reactor finds the socket writable."""
        self._allowed += size
        self.doWrite()


class _Resolver:
    """A name resolver that answers one address for every name, and counts the lookups."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.asked: list[str] = []

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0, *args: Any, **kwargs: Any) -> Any:
        self.asked.append(hostName)
        receiver.resolutionBegan(None)
        receiver.addressResolved(IPv4Address("TCP", self.address, portNumber))
        receiver.resolutionComplete()
        return None


class ResolveOnceTests(SynchronousTestCase):
    """A tunnel's name is resolved once, and the relay connects to that address or refuses it."""

    def connect(self, address: str, request: bytes) -> tuple[MemoryReactorClock, HttpProxySession, StringTransport, _Resolver]:
        reactor = MemoryReactorClock()
        resolver = reactor.nameResolver = _Resolver(address)
        _relay, session, client = _session(reactor, Destinations(("www.epmsi.atih.sante.fr", 443), True))
        session.dataReceived(request)
        return reactor, session, client, resolver

    def test_connects_to_the_address_it_got(self) -> None:
        reactor, session, client, resolver = self.connect(
            "193.49.157.14", b"CONNECT www.epmsi.atih.sante.fr:443 HTTP/1.1\r\n\r\n"
        )
        self.assertEqual(resolver.asked, ["www.epmsi.atih.sante.fr"])
        [(host, port, connecting, _timeout, _bind)] = reactor.tcpClients
        self.assertEqual((host, port), ("193.49.157.14", 443))
        far = StringTransport(peerAddress=IPv4Address("TCP", "193.49.157.14", 443))
        connecting.buildProtocol(None).makeConnection(far)
        self.assertEqual(client.value(), b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.assertEqual(resolver.asked, ["www.epmsi.atih.sante.fr"])
        assert session.operation is not None
        self.assertEqual(session.operation.address, "193.49.157.14")

    def test_builtin_name_resolving_to_this_machine(self) -> None:
        """e-PMSI's default name answered with a loopback or link-local address: 502, nothing connected."""
        for address in ("127.0.0.1", "169.254.169.254"):
            reactor, session, client, _resolver = self.connect(
                address, b"CONNECT www.epmsi.atih.sante.fr:443 HTTP/1.1\r\nAccept-Language: fr\r\n\r\n"
            )
            self.assertEqual(reactor.tcpClients, [])
            answer = client.value().decode("utf-8")
            self.assertTrue(answer.startswith("HTTP/1.1 502 "), answer)
            self.assertIn(f"www.epmsi.atih.sante.fr:443 correspond à l'adresse {address}, une adresse de cette machine", answer)
            self.assertEqual(session._close_reason, "destination-resolves-locally")


class DestinationFailureTests(SynchronousTestCase):
    """A tunnel that cannot connect names the destination it tried, not e-PMSI."""

    def test_direct(self) -> None:
        error = describe_failure(Failure(ConnectionRefusedError()), "pasrel.atih.sante.fr:443", timeout=30)
        self.assertEqual(
            error.render("en"), "Could not reach pasrel.atih.sante.fr:443: connection refused: nothing listens there."
        )
        self.assertTrue(error.render("fr").startswith("Impossible de joindre pasrel.atih.sante.fr:443 : "))
        self.assertEqual(error.cause, "refused")

    def test_through_the_proxy(self) -> None:
        refusal = ProxyError(ProxyConfig("10.0.0.1", 3128), "proxy-error", Text.literal("it said no."))
        error = describe_failure(Failure(refusal), "files.example.org:443", timeout=30)
        self.assertEqual(
            error.render("en"), "Could not reach files.example.org:443 through the proxy 10.0.0.1:3128: it said no."
        )
        self.assertEqual(
            error.render("fr"), "Impossible de joindre files.example.org:443 par le proxy 10.0.0.1:3128 : it said no."
        )
        self.assertEqual(error.cause, "proxy-error")

    def test_destination_silent(self) -> None:
        """No answer to the relay's connection within --connect-timeout: 504, in the client's language."""
        reactor = MemoryReactorClock()
        _relay, session, client = _session(reactor)
        session.dataReceived(b"CONNECT 10.0.0.9:443 HTTP/1.1\r\nAccept-Language: fr\r\n\r\n")
        [(_host, _port, connecting, timeout, _bind)] = reactor.tcpClients
        self.assertEqual(timeout, 30.0)
        connecting.clientConnectionFailed(None, Failure(TimeoutError()))
        answer = client.value().decode("utf-8")
        self.assertTrue(answer.startswith("HTTP/1.1 504 "), answer)
        self.assertIn("Impossible de joindre 10.0.0.9:443 : ", answer)
        self.assertEqual((session._close_reason, session._close_error), ("tunnel-timeout", "timeout"))

    def test_epmsi_side_unchanged(self) -> None:
        """The e-POP side still speaks of e-PMSI."""
        error = describe_upstream_failure(Failure(ConnectionRefusedError()), "https://www.epmsi.atih.sante.fr")
        self.assertTrue(error.render("en").startswith("Could not reach e-PMSI at https://www.epmsi.atih.sante.fr: "))


class FlowControlTests(SynchronousTestCase):
    """Each side of a tunnel is the other's producer: a slow reader slows the writer."""

    def test_producers_both_ways(self) -> None:
        reactor = MemoryReactorClock()
        relay, session, client = _session(reactor)
        session.dataReceived(b"CONNECT 10.0.0.9:443 HTTP/1.1\r\n\r\nhello")
        # While the relay connects, the client is paused: nothing piles up.
        self.assertEqual(client.producerState, "paused")
        [(host, port, connecting, _timeout, _bind)] = reactor.tcpClients
        self.assertEqual((host, port), ("10.0.0.9", 443))
        far = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 443))
        connecting.buildProtocol(None).makeConnection(far)
        self.assertEqual(client.value(), b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.assertEqual(far.value(), b"hello")
        self.assertEqual(client.producerState, "producing")
        # The far side's buffer full: it pauses its producer, the client's socket.
        self.assertIs(far.producer.transport, client)
        self.assertTrue(far.streaming)
        far.producer.pauseProducing()
        self.assertEqual(client.producerState, "paused")
        # And the other way round.
        self.assertIs(client.producer.transport, far)
        client.producer.pauseProducing()
        self.assertEqual(far.producerState, "paused")
        client.producer.resumeProducing()
        self.assertEqual(far.producerState, "producing")
        session.connectionLost(None)  # type: ignore[arg-type]
        self.assertTrue(far.disconnecting)


class QuietLogTests(SynchronousTestCase):
    """A tunnel, or an upload through the hospital's proxy, adds no "Starting factory" lines to twistd's log."""

    def factory_lines(self, connect: Any) -> list[dict[str, Any]]:
        from twisted.logger import globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        reactor = MemoryReactorClock()
        connect(reactor)
        [(_host, _port, factory, _timeout, _bind)] = reactor.tcpClients
        factory.doStart()
        factory.doStop()
        return [e for e in events if "factory" in str(e.get("log_format", "")).lower()]

    def test_direct(self) -> None:
        from epop.relay.tunnel import FarSide, connect_destination

        def connect(reactor: MemoryReactorClock) -> None:
            connect_destination(reactor, FarSide(None), "10.0.0.9", 443, "10.0.0.9", timeout=30)  # type: ignore[arg-type]

        self.assertEqual(self.factory_lines(connect), [])

    def test_through_the_proxy(self) -> None:
        from twisted.internet.endpoints import TCP4ClientEndpoint

        from epop.epmsi.tunnel import TunnelEndpoint

        def connect(reactor: MemoryReactorClock) -> None:
            proxy = TCP4ClientEndpoint(reactor, "10.0.0.1", 3128)
            endpoint = TunnelEndpoint(reactor, ProxyConfig("10.0.0.1", 3128), "10.0.0.9", 443, proxy_endpoint=proxy)
            endpoint.connect(Factory.forProtocol(Protocol)).addErrback(lambda _: None)
            reactor.advance(60)  # the handshake's deadline, so that no call is left pending

        self.assertEqual(self.factory_lines(connect), [])


class CapTests(SynchronousTestCase):
    def test_over_a_cap_told_in_its_language(self) -> None:
        """A connection over a cap waits for its whole head, then is told 503 in the head's language."""
        from epop.relay.limits import too_many_from

        reactor = MemoryReactorClock()
        _relay, session, client = _session(reactor)
        session.fail(too_many_from("10.1.1.1", 2))
        session.count_refused(b"CONNECT 10.0.0.9:443 HTTP/1.1\r\n")
        self.assertEqual(client.value(), b"")
        session.count_refused(b"Accept-Language: fr\r\n\r\n")
        answer = client.value().decode("utf-8")
        self.assertTrue(answer.startswith("HTTP/1.1 503 "), answer)
        self.assertIn("Le relais sert déjà 2 connexions venant de 10.1.1.1", answer)
        self.assertEqual(reactor.tcpClients, [])


class DrainTests(SynchronousTestCase):
    """On stop, a tunnel gets the drain an e-POP operation gets."""

    def test_tunnel_gets_the_grace_period(self) -> None:
        reactor = MemoryReactorClock()
        relay, session, client, far = _tunnel(reactor)
        drained = relay.drain(10)
        reactor.advance(9)
        self.assertFalse(client.disconnecting)
        self.assertNoResult(drained)
        reactor.advance(1)
        self.assertTrue(client.disconnecting)
        self.assertTrue(far.disconnecting)
        session.connectionLost(None)  # type: ignore[arg-type]
        self.successResultOf(drained)

    def test_tunnel_ending_in_the_grace_period(self) -> None:
        reactor = MemoryReactorClock()
        relay, session, client, far = _tunnel(reactor)
        drained = relay.drain(10)
        session.far_lost(None)  # type: ignore[arg-type]
        self.assertTrue(client.disconnecting)
        session.connectionLost(None)  # type: ignore[arg-type]
        self.successResultOf(drained)

    def test_waiting_for_its_head(self) -> None:
        """A client that has not asked for a tunnel yet is told at once: 503."""
        reactor = MemoryReactorClock()
        relay, session, client = _session(reactor)
        relay.drain(10)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 503 "), client.value())
        self.assertIn(b"The relay is stopping", client.value())

    def test_idle_tunnel(self) -> None:
        """Nothing either way for the idle timeout: closed; traffic either way keeps it open."""
        reactor = MemoryReactorClock()
        relay, session, client, far = _tunnel(reactor)
        reactor.advance(200)
        session.far_received(b"x")
        reactor.advance(200)
        session.dataReceived(b"y")
        reactor.advance(299)
        self.assertFalse(client.disconnecting)
        reactor.advance(1)
        self.assertTrue(client.disconnecting)
        self.assertTrue(far.disconnecting)

    def test_slow_reader_is_not_idle(self) -> None:
        """
        A tunnel held back by a slow reader moves bytes one way: not idle,
        however long the reader takes; closed once the reader takes nothing
        for the idle timeout.
        """
        reactor = MemoryReactorClock()
        relay, session, client = _session(reactor)
        session.dataReceived(b"CONNECT 10.0.0.9:443 HTTP/1.1\r\n\r\n")
        [(_host, _port, connecting, _timeout, _bind)] = reactor.tcpClients
        far = _SlowReader(reactor)
        events: list[dict[str, Any]] = []
        session.log = Logger(observer=events.append)
        connecting.buildProtocol(None).makeConnection(far)
        # More than the far side's buffer: the client is held back, and
        # nothing more arrives from either side.
        session.dataReceived(b"x" * (far.bufferSize + 1))
        self.assertEqual(client.producerState, "paused")
        for _ in range(3):
            reactor.advance(250)
            far.take(1000)  # the reader takes a little, far less than a read
            reactor.advance(50)
            self.assertFalse(client.disconnecting)
        self.assertEqual(client.producerState, "paused")
        # The reader stops reading: nothing moves either way.
        reactor.advance(300)
        self.assertTrue(client.disconnecting)
        self.assertTrue(far.disconnecting)
        [released] = [event for event in events if event.get("epop_event") == "object-released"]
        self.assertEqual((released["outcome"], released["reason"]), ("aborted", "tunnel-idle"))
