"""
The PROXY header on C{haproxy:} listeners: only IP addresses of the family
the header names and ports 0-65535 get through; anything else is refused
with its own journal reason, never an unhandled error.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop.errors import EpopError
from epop.testing import MemoryJournalWriter
from epop.relay.proxy_header import BadProxyHeader, ProxyHeaderFactory, parse_proxy_header
from epop.relay.service import RelaySettings, make_relay_service
from epop.wire import FrameType
from tests.relaying import HELLO, raw_connect, start_relay
from tests.support import make_trustme_sandbox, poll_until

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(family_protocol: int, body: bytes, command: int = 0x21) -> bytes:
    return V2_SIGNATURE + bytes([command, family_protocol]) + struct.pack("!H", len(body)) + body


def v2_ipv4(source: str, port: int) -> bytes:
    body = ipaddress.IPv4Address(source).packed + ipaddress.IPv4Address("127.0.0.1").packed
    return v2(0x11, body + struct.pack("!HH", port, 3358))


#: Headers that once reached the journal's client field, or crashed the reader.
BAD_V1 = [
    b"PROXY TCP4 \x1b[31m1.2.3.4 127.0.0.1 1000 3358\r\n",
    b"PROXY TCP4 1.2.3.4\n5 127.0.0.1 1000 3358\r\n",
    b'PROXY TCP4 "},{ 127.0.0.1 1000 3358\r\n',
    "PROXY TCP4 1.2.3.4\u202e 127.0.0.1 1000 3358\r\n".encode(),
    b"PROXY TCP4 1.2.3.4 127.0.0.1 -5 3358\r\n",
    b"PROXY TCP4 \xff\xfe.1.1 127.0.0.1 1000 3358\r\n",
    b"PROXY TCP4 1.2.3.4 127.0.0.1 abc 3358\r\n",
    b"PROXY TCP4 1.2.3.4 127.0.0.1 65536 3358\r\n",
    b"PROXY TCP4 ::1 127.0.0.1 1000 3358\r\n",
    b"PROXY TCP6 1.2.3.4 ::1 1000 3358\r\n",
    b"PROXY TCP6 fe80::1%eth0 ::1 1000 3358\r\n",
    b"PROXY TCP4 1.2.3.4 127.0.0.1 1000\r\n",
    b"PROXY TCP4 01.2.3.4 127.0.0.1 1000 3358\r\n",
    b"PROXY UDP4 1.2.3.4 127.0.0.1 1000 3358\r\n",
    b"PROXY TCP4 1.2.3.4 127.0.0.1 1000 3358" + b" " * 80 + b"\r\n",
]

BAD_V2 = [
    v2(0x31, b"/tmp/socket".ljust(216, b"\x00")),  # UNIX addresses
    v2(0x12, bytes(12)),  # UDP
    v2(0x11, bytes(8)),  # too short for TCP4
    v2(0x21, bytes(20)),  # too short for TCP6
    V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),  # version 1 in a v2 header
    v2(0x11, bytes(12), command=0x22),  # unknown command
]


class ParseTests(SynchronousTestCase):
    """L{parse_proxy_header} alone."""

    def test_v1(self) -> None:
        """Version 1 gives typed addresses, and what follows is left."""
        found = parse_proxy_header(b"PROXY TCP4 10.1.2.3 10.1.2.10 51234 3358\r\nHELLO")
        assert found is not None
        (source, destination), used = found
        self.assertEqual(source, IPv4Address("TCP", "10.1.2.3", 51234))
        self.assertEqual(destination, IPv4Address("TCP", "10.1.2.10", 3358))
        self.assertEqual(used, len(b"PROXY TCP4 10.1.2.3 10.1.2.10 51234 3358\r\n"))
        found = parse_proxy_header(b"PROXY TCP6 fd00::1 fd00::2 0 65535\r\n")
        assert found is not None and found[0] is not None
        self.assertEqual(found[0][0], IPv6Address("TCP", "fd00::1", 0))

    def test_v1_unknown(self) -> None:
        """UNKNOWN has no addresses: the socket's own are kept."""
        self.assertEqual(parse_proxy_header(b"PROXY UNKNOWN\r\n"), (None, 15))

    def test_v2(self) -> None:
        """Version 2 over IPv4 and IPv6; LOCAL and UNSPEC have no addresses."""
        found = parse_proxy_header(v2_ipv4("10.9.8.7", 50000))
        assert found is not None and found[0] is not None
        self.assertEqual(found[0][0], IPv4Address("TCP", "10.9.8.7", 50000))
        body = ipaddress.IPv6Address("fd00::7").packed + bytes(16) + struct.pack("!HH", 1, 2)
        found = parse_proxy_header(v2(0x21, body + b"TLV"))
        assert found is not None and found[0] is not None
        self.assertEqual(found[0][0], IPv6Address("TCP", "fd00::7", 1))
        self.assertEqual(found[1], 16 + len(body) + 3)
        self.assertEqual(parse_proxy_header(v2(0x11, bytes(12), command=0x20)), (None, 28))
        self.assertEqual(parse_proxy_header(v2(0x00, b"")), (None, 16))

    def test_incomplete(self) -> None:
        """A header cut anywhere asks for more bytes."""
        for header in (b"PROXY TCP4 10.1.2.3 10.1.2.10 51234 3358\r\n", v2_ipv4("10.1.2.3", 1)):
            for cut in range(1, len(header)):
                self.assertIsNone(parse_proxy_header(header[:cut]), header[:cut])

    def test_refused(self) -> None:
        """Every bad header is a L{BadProxyHeader}, nothing else."""
        for header in BAD_V1 + BAD_V2:
            error = self.assertRaises(BadProxyHeader, parse_proxy_header, header)
            self.assertEqual(error.code, "bad-proxy-header", header)
        error = self.assertRaises(BadProxyHeader, parse_proxy_header, HELLO)
        self.assertEqual(error.code, "no-proxy-header")


class _Inner(Protocol):
    """Stands for the relay's protocol behind the header reader."""

    def __init__(self) -> None:
        self.received = b""
        self.refused: EpopError | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.refused is None:  # as the relay's: a refused connection's bytes are not read
            self.received += data

    def refuse(self, error: EpopError, received: bytes) -> None:
        self.refused = error


class _InnerFactory:
    def __init__(self) -> None:
        self.built: list[_Inner] = []

    def buildProtocol(self, addr: Any) -> _Inner:
        self.built.append(_Inner())
        return self.built[-1]

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass


class PropertyTests(SynchronousTestCase):
    """Whatever bytes come first, the reader admits a valid address or refuses."""

    def check(self, data: bytes, chunk: int) -> None:
        inner = _InnerFactory()
        factory = ProxyHeaderFactory(inner)
        reader = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 4000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 4000))
        reader.makeConnection(transport)
        for start in range(0, len(data), chunk):
            reader.dataReceived(data[start : start + chunk])
        [protocol] = inner.built
        peer = reader.getPeer()
        if protocol.refused is not None:
            self.assertIn(protocol.refused.code, ("no-proxy-header", "bad-proxy-header"))
            self.assertEqual(protocol.received, b"")
            self.assertEqual(peer, transport.getPeer())
        else:
            self.assertIn(type(peer), (IPv4Address, IPv6Address))
            ip = ipaddress.ip_address(peer.host)
            self.assertEqual(ip.version, 4 if isinstance(peer, IPv4Address) else 6)
            self.assertEqual(str(ip), peer.host)
            self.assertTrue(0 <= peer.port <= 65535)
        reader.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.flushLoggedErrors(), [])

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=300), st.integers(min_value=1, max_value=300))
    def test_any_bytes(self, data: bytes, chunk: int) -> None:
        """Random bytes, fed in random chunk sizes."""
        self.check(data, chunk)

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.sampled_from([b"TCP4", b"TCP6", b"UNKNOWN", b"UDP4", b""]),
        st.lists(st.one_of(st.binary(max_size=20), st.text(max_size=20).map(str.encode)), max_size=6),
        st.integers(min_value=1, max_value=50),
    )
    def test_v1_like(self, family: bytes, fields: list[bytes], chunk: int) -> None:
        """Lines that look like a version 1 header, with arbitrary fields."""
        self.check(b" ".join([b"PROXY", family, *fields]) + b"\r\n" + HELLO, chunk)

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.integers(min_value=0, max_value=255),
        st.integers(min_value=0, max_value=255),
        st.binary(max_size=300),
        st.integers(min_value=1, max_value=50),
    )
    def test_v2_like(self, command: int, family: int, body: bytes, chunk: int) -> None:
        """Binary headers with any command, family and body."""
        self.check(v2(family, body, command=command) + HELLO, chunk)


#: Fields of a version 1 header: good ones, near misses, and anything at all.
_V1_FIELD = st.one_of(
    st.ip_addresses().map(lambda ip: str(ip).encode()),
    st.integers(min_value=-70000, max_value=70000).map(lambda n: str(n).encode()),
    st.sampled_from([b"1.2.3.4\n", b'"},{', "1.2.3.4\u202e".encode(), b"\x1b[2J", b"\xff\xfe", b"localhost"]),
    st.text(max_size=12).map(str.encode),
    st.binary(max_size=12),
)


def _is_ip_and_port(client: str) -> bool:
    host, _, port = client.rpartition(":")
    if host.startswith("["):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return str(ip) == host and port.isdigit() and 0 <= int(port) <= 65535


class JournalPropertyTests(SynchronousTestCase):
    """
    The whole relay behind a haproxy: listener, in memory: whatever bytes
    come first, the journal's client is an IP address and port, and a
    refusal has its documented reason.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.writer = MemoryJournalWriter()
        self.service = make_relay_service(
            self.reactor,
            RelaySettings(listen=("haproxy:tcp:3358",), check_at_start=False),
            journal_writer=lambda: self.writer,
        )
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        [(_, self.factory, _, _)] = self.reactor.tcpServers

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.one_of(
            st.binary(max_size=200),
            st.tuples(st.sampled_from([b"TCP4", b"TCP6", b"UNKNOWN", b"UDP4"]), st.lists(_V1_FIELD, min_size=3, max_size=5)).map(
                lambda t: b" ".join([b"PROXY", t[0], *t[1]]) + b"\r\n"
            ),
            st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=60)).map(
                lambda t: v2(t[1], t[2], command=t[0])
            ),
        ),
        st.booleans(),
    )
    def test_any_first_bytes(self, data: bytes, with_hello: bool) -> None:
        """Random first bytes, with or without a HELLO after them."""
        socket_peer = IPv4Address("TCP", "192.0.2.1", 4000)
        protocol = self.factory.buildProtocol(socket_peer)
        transport = StringTransport(peerAddress=socket_peer)
        protocol.makeConnection(transport)
        before = len(self.writer.records)
        protocol.dataReceived(data + (HELLO if with_hello else b""))
        protocol.connectionLost(None)  # type: ignore[arg-type]
        lines = [r for r in self.writer.records[before:] if r["type"].startswith("connection-")]
        self.assertEqual([r["type"] for r in lines], ["connection-opened", "connection-closed"])
        opened, closed = lines
        self.assertTrue(_is_ip_and_port(opened["client"]), opened["client"])
        self.assertEqual(closed["client"], opened["client"])
        if closed["reason"] == "bad-proxy-header":
            self.assertTrue(closed.get("error"), closed)
        if closed["reason"] in ("bad-proxy-header", "no-proxy-header"):
            self.assertEqual(opened["client"], "192.0.2.1:4000")
            self.assertEqual(closed["bytes_in"], len(data) + (len(HELLO) if with_hello else 0))
        self.assertEqual(self.flushLoggedErrors(), [])


class LoopbackTests(TestCase):
    """A relay listening with haproxy:, reached over real loopback."""

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.relay = start_relay(
            self, reactor, self.sandbox.url, self.sandbox.ca_path,
            listen=("haproxy:tcp:0:interface=127.0.0.1",),
        )
        self.warnings: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "epop.relay.proxy_header._HeaderReader":
                self.assertIs(event["log_level"], LogLevel.warn)
                self.warnings.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    async def send(self, data: bytes) -> dict[str, Any]:
        """Send C{data}; the relay's answer, and its journal line once closed."""
        count = len(self.relay.records("connection-closed"))
        client = await raw_connect(self, reactor, self.relay.port)
        client.transport.write(data)
        frame = await client.next_frame()
        await client.closed
        self.assertTrue(await poll_until(reactor, lambda: len(self.relay.records("connection-closed")) > count))
        closed = self.relay.records("connection-closed")[-1]
        self.assertEqual(frame.kind, FrameType.ERROR)
        return {"answer": frame.message(), "closed": closed}

    async def test_bad_headers_are_refused(self) -> None:
        """
        Every bad v1 and v2 header gets ERROR bad-proxy-header, is journaled
        with that reason and an error in words under the socket's own
        address, its bytes counted, and no error is logged.
        """
        for header in BAD_V1 + BAD_V2:
            found = await self.send(header + HELLO)
            self.assertEqual(found["answer"]["code"], "bad-proxy-header", header)
            self.assertIn("PROXY header was refused", found["answer"]["message"])
            closed = found["closed"]
            self.assertEqual(closed["reason"], "bad-proxy-header", header)
            self.assertTrue(closed.get("error"), header)
            self.assertRegex(closed["client"], r"^127\.0\.0\.1:\d+$")
            self.assertEqual(closed["bytes_in"], len(header + HELLO))
        opened = self.relay.records("connection-opened")
        self.assertEqual(len(opened), len(BAD_V1 + BAD_V2))
        self.assertTrue(all(r["client"].startswith("127.0.0.1:") for r in opened))
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_good_headers_still_work(self) -> None:
        """Valid v1 and v2 headers still name the workstation."""
        client = await raw_connect(self, reactor, self.relay.port)
        client.transport.write(b"PROXY TCP4 10.1.2.3 127.0.0.1 51234 3358\r\n" + HELLO)
        self.assertEqual((await client.next_frame()).kind, FrameType.WELCOME)
        client = await raw_connect(self, reactor, self.relay.port)
        client.transport.write(v2_ipv4("10.9.8.7", 50000) + HELLO)
        self.assertEqual((await client.next_frame()).kind, FrameType.WELCOME)
        clients = [r["client"] for r in self.relay.records("connection-opened")]
        self.assertEqual(clients, ["10.1.2.3:51234", "10.9.8.7:50000"])

    async def test_no_header(self) -> None:
        """A workstation that skips the balancer is told so, with its own reason."""
        found = await self.send(HELLO)
        self.assertEqual(found["answer"]["code"], "no-proxy-header")
        self.assertIn("load balancer", found["answer"]["message"])
        self.assertEqual(found["closed"]["reason"], "no-proxy-header")
        self.assertEqual(found["closed"]["bytes_in"], len(HELLO))

    async def test_cut_header(self) -> None:
        """A connection that ends inside its header is journaled as such, and logged."""
        client = await raw_connect(self, reactor, self.relay.port)
        client.transport.write(b"PROXY TCP4 10.1.2.3 ")
        reactor.callLater(0.1, client.transport.loseConnection)
        await client.closed
        self.assertTrue(await poll_until(reactor, lambda: "connection-closed" in self.relay.types()))
        [closed] = self.relay.records("connection-closed")
        self.assertEqual((closed["reason"], closed["bytes_in"]), ("bad-proxy-header", 20))
        self.assertEqual(closed["error"], "the connection ended inside its PROXY header")
        [warning] = self.warnings
        self.assertRegex(
            warning,
            r'^Refused a connection from 127\.0\.0\.1:\d+: bad-proxy-header: the connection ended '
            r'inside its PROXY header; it began with "PROXY TCP4 10\.1\.2\.3 "$',
        )

    async def test_refusal_says_why(self) -> None:
        """
        A refused header's journal line has the problem in words in its
        error field, and the log's warning names the peer as host:port and
        shows the header's start as escaped text.
        """
        cases = [
            (b"PROXY TCP4 \x1b[31mevil 1.2.3.4 1 2\r\n", "its source address is not an IPv4 address",
             "PROXY TCP4 \\x1b[31mevil 1.2.3.4 1 2\\r\\n"),
            (b"PROXY TCP4 1.2.3.4 127.0.0.1 1000\r\n",
             "it is not 'PROXY TCP4|TCP6 SOURCE DESTINATION SOURCE-PORT DESTINATION-PORT'",
             "PROXY TCP4 1.2.3.4 127.0.0.1 1000\\r\\n"),
            (b"PROXY TCP4 1.2.3.4 127.0.0.1 99999 3358\r\n", "its source port is not a number from 0 to 65535",
             "PROXY TCP4 1.2.3.4 127.0.0.1 99999 3358\\r\\n"),
            (b"PROXY TCP4 1.2.3.4\xff\\ 127.0.0.1 1 2\r\n", "its source address is not an IPv4 address",
             "PROXY TCP4 1.2.3.4\\xff\\\\ 127.0.0.1 1 2\\r\\n"),
            (v2(0x12, bytes(12)), "its addresses are not TCP over IPv4 or IPv6",
             "\\r\\n\\r\\n\\x00\\r\\nQUIT\\n!\\x12\\x00\\x0c" + "\\x00" * 12),
        ]
        for header, problem, start in cases:
            found = await self.send(header + HELLO)
            closed = found["closed"]
            self.assertEqual((closed["reason"], closed.get("error")), ("bad-proxy-header", problem), header)
            self.assertIn(problem, found["answer"]["message"])
            warning = self.warnings[-1]
            self.assertTrue(
                warning.startswith(
                    f"Refused a connection from {closed['client']}: bad-proxy-header: {problem}; "
                    f'it began with "{start}'
                ),
                warning,
            )
            self.assertNotIn("\x1b", warning)
            self.assertNotIn("IPv4Address", warning)
        self.assertEqual(len(self.warnings), len(cases))

    async def test_no_header_warning(self) -> None:
        """A workstation that skips the balancer is logged with its host:port."""
        found = await self.send(HELLO)
        self.assertNotIn("error", found["closed"])
        [warning] = self.warnings
        self.assertTrue(
            warning.startswith(f"Refused a connection from {found['closed']['client']}: no-proxy-header: "),
            warning,
        )
        self.assertIn("the load balancer's address; it began with \"", warning)
