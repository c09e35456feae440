"""
No domain fronting through a tunnel: the server name (SNI) of the
ClientHello a client sends through an HTTPS tunnel must be the CONNECT
host's.  The parser alone, on ClientHellos from real TLS stacks (the
standard library's C{ssl} and pyOpenSSL, whose post-quantum key shares make
it ~1.5 KB), recut into any segments and records, and on any bytes at all
(hypothesis); the session on in-memory transports, a byte at a time; and
real clients (openssl s_client, curl, Python's C{ssl}) through a real relay.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop.journal.table import journal_table
from epop.relay.client_hello import (
    MAX_HANDSHAKE,
    MAX_HELD,
    SHOWN_NAME_LENGTH,
    BadClientHello,
    Hello,
    Malformed,
    NeedMore,
    NotTls,
    ServerNameCheck,
    ServerNameMismatch,
    names_match,
    read_client_hello,
    shown_name,
)
from epop.relay.destinations import Destinations
from epop.relay.http_proxy import HttpProxyFactory, HttpProxySession
from epop.relay.protocol import RelayFactory
from tests.browser import Browser
from tests.relaying import start_relay
from tests.support import make_trustme_sandbox, poll_until
from tests.test_properties import PROPERTY_SETTINGS

# ClientHellos from real TLS stacks.


def stdlib_hello(name: str | None) -> bytes:
    """The first flight of Python's C{ssl} (the system's OpenSSL) for C{name}."""
    context = ssl.create_default_context()
    context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def openssl_hello(name: str | None) -> bytes:
    """pyOpenSSL's first flight (its own OpenSSL, with a post-quantum key share)."""
    connection = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    if name is not None:
        connection.set_tlsext_host_name(name.encode("ascii"))
    connection.set_connect_state()
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        pass
    return connection.bio_read(65536)


# Building and recutting records by hand.


def record(payload: bytes, kind: int = 0x16, version: bytes = b"\x03\x01") -> bytes:
    return bytes([kind]) + version + len(payload).to_bytes(2, "big") + payload


def handshake_of(records: bytes) -> bytes:
    """The handshake bytes carried by C{records} (all handshake records)."""
    found, offset = b"", 0
    while offset < len(records):
        length = int.from_bytes(records[offset + 3 : offset + 5], "big")
        found += records[offset + 5 : offset + 5 + length]
        offset += 5 + length
    return found


def recut(message: bytes, sizes: list[int]) -> bytes:
    """C{message} in records of C{sizes} bytes (the last size repeated as needed)."""
    out, offset, index = b"", 0, 0
    while offset < len(message):
        size = sizes[min(index, len(sizes) - 1)]
        out += record(message[offset : offset + size])
        offset += size
        index += 1
    return out


def vector(data: bytes, size: int) -> bytes:
    return len(data).to_bytes(size, "big") + data


def server_name_extension(*names: bytes, name_type: int = 0) -> tuple[int, bytes]:
    entries = b"".join(bytes([name_type]) + vector(name, 2) for name in names)
    return 0, vector(entries, 2)


def hello_body(
    extensions: list[tuple[int, bytes]] | None,
    *,
    session_id: bytes = b"",
    suites: bytes = b"\x13\x01",
    compression: bytes = b"\x00",
    trailing: bytes = b"",
) -> bytes:
    body = b"\x03\x03" + bytes(32) + vector(session_id, 1) + vector(suites, 2) + vector(compression, 1)
    if extensions is not None:
        body += vector(b"".join(kind.to_bytes(2, "big") + vector(data, 2) for kind, data in extensions), 2)
    return body + trailing


def handshake(body: bytes, kind: int = 1) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def built(extensions: list[tuple[int, bytes]] | None, **fields: Any) -> bytes:
    return record(handshake(hello_body(extensions, **fields)))


class RealStacksTests(SynchronousTestCase):
    """What real TLS clients send is read right."""

    def test_names(self) -> None:
        for make in (stdlib_hello, openssl_hello):
            for name in ("www.epmsi.atih.sante.fr", "other.example", "localhost"):
                self.assertEqual(read_client_hello(make(name)), Hello(name), make.__name__)
            self.assertEqual(read_client_hello(make(None)), Hello(None), make.__name__)

    def test_ip_address_has_no_name(self) -> None:
        """A client connecting to an IP address sends no server name (RFC 6066)."""
        self.assertEqual(read_client_hello(stdlib_hello("127.0.0.1")), Hello(None))

    def test_post_quantum_hello_is_large(self) -> None:
        """Today's ClientHellos are over a kilobyte: they still fit the limits by far."""
        data = openssl_hello("other.example")
        self.assertGreater(len(data), 1024)
        self.assertLess(len(data), MAX_HANDSHAKE)

    def test_every_prefix_needs_more(self) -> None:
        data = openssl_hello("other.example")
        for end in range(len(data)):
            verdict = read_client_hello(data[:end])
            assert isinstance(verdict, NeedMore), (end, verdict)
            self.assertGreater(verdict.total, end)
            self.assertLessEqual(verdict.total, len(data))

    def test_recut_into_records(self) -> None:
        """A ClientHello may span records, of any size: the name is the same."""
        message = handshake_of(stdlib_hello("other.example"))
        for sizes in ([1], [3], [4], [5, 1000], [len(message) - 1], [100, 1, 7]):
            self.assertEqual(read_client_hello(recut(message, sizes)), Hello("other.example"), sizes)

    def test_largest_hello(self) -> None:
        """A ClientHello of 16 KiB (a big padding extension) in two records is read."""
        body = hello_body([server_name_extension(b"a.example"), (21, b"")])
        padding = MAX_HANDSHAKE - len(body)
        body = hello_body([server_name_extension(b"a.example"), (21, bytes(padding))])
        self.assertEqual(len(body), MAX_HANDSHAKE)
        data = recut(handshake(body), [16384])
        self.assertEqual(read_client_hello(data), Hello("a.example"))
        self.assertEqual(read_client_hello(data + b"\x17\x03\x03rest"), Hello("a.example"))


class NotTlsTests(SynchronousTestCase):
    def test_not_a_handshake_record(self) -> None:
        for data in (b"GET / HTTP/1.1\r\n", b"SSH-2.0-OpenSSH", b"\x80\x2e\x01\x03\x01", b"\x17\x03\x03", b"\x00"):
            self.assertEqual(read_client_hello(data), NotTls(), data)

    def test_not_tls_version(self) -> None:
        """A handshake type byte followed by anything but TLS's major version 3."""
        self.assertEqual(read_client_hello(b"\x16\x02\x00\x00\x05"), NotTls())
        self.assertEqual(read_client_hello(b"\x16\x04"), NotTls())

    def test_too_short_to_say(self) -> None:
        self.assertEqual(read_client_hello(b""), NeedMore(1))
        self.assertEqual(read_client_hello(b"\x16"), NeedMore(2))
        self.assertEqual(read_client_hello(b"\x16\x03"), NeedMore(5))
        self.assertEqual(read_client_hello(b"\x16\x03\x01\x02\x00"), NeedMore(9))
        self.assertEqual(read_client_hello(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc"), NeedMore(5 + 4 + 0x1FC))


class MalformedTests(SynchronousTestCase):
    """Each way a ClientHello can be broken is named."""

    def assertMalformed(self, data: bytes, words: str) -> None:
        verdict = read_client_hello(data)
        assert isinstance(verdict, Malformed), verdict
        self.assertIn(words, verdict.reason)

    def test_records(self) -> None:
        message = handshake_of(stdlib_hello("a.example"))
        self.assertMalformed(record(message[:10]) + record(message[10:], kind=0x17), "a record of type 23 came before")
        self.assertMalformed(record(message[:10]) + record(message[10:], version=b"\x02\x00"), "version 2.0")
        self.assertMalformed(record(b""), "an empty handshake record")
        self.assertMalformed(b"\x16\x03\x01\x40\x01", "a record of 16385 bytes")

    def test_handshake(self) -> None:
        self.assertMalformed(record(handshake(b"\x00" * 40, kind=2)), "of type 2, not a ClientHello")
        self.assertMalformed(record(b"\x01\x00\x40\x01"), "a ClientHello of 16385 bytes")

    def test_too_many_records(self) -> None:
        """A ClientHello cut so fine that its record headers pass the limit on what is held."""
        message = handshake(hello_body([(21, bytes(4000))]))
        data = recut(message, [1])
        self.assertMalformed(data, f"more than {MAX_HELD} bytes")
        # Decided on the first MAX_HELD bytes, however many more came.
        self.assertMalformed(data[:MAX_HELD], f"more than {MAX_HELD} bytes")

    def test_fields(self) -> None:
        self.assertMalformed(built(None, session_id=bytes(33)), "a session id over 32 bytes")
        self.assertMalformed(built(None, suites=b""), "cipher suites that is empty")
        self.assertMalformed(built(None, suites=b"\x13"), "odd length")
        self.assertMalformed(built(None, compression=b""), "compression methods")
        self.assertMalformed(built([], trailing=b"\x00"), "bytes after the extensions")
        self.assertMalformed(record(handshake(hello_body(None)[:20])), "ends inside its version and random")
        self.assertMalformed(record(handshake(hello_body(None) + b"\x00\x09\x00")), "ends inside its extensions")

    def test_server_names(self) -> None:
        """One host name, once: anything else could mean one name to the relay and another to the server."""
        self.assertMalformed(built([server_name_extension(b"a.example"), server_name_extension(b"b.example")]), "extension 0 twice")
        self.assertMalformed(built([server_name_extension(b"a.example", b"b.example")]), "2 server names")
        self.assertMalformed(built([server_name_extension()]), "0 server names")
        self.assertMalformed(built([server_name_extension(b"a.example", name_type=1)]), "not a host name")
        self.assertMalformed(built([server_name_extension(b"")]), "an empty server name")
        self.assertMalformed(built([(0, b"\x00\x09\x00\x00\x01a")]), "ends inside its server name")
        self.assertMalformed(built([(0, vector(b"\x00" + vector(b"a", 2), 2) + b"x")]), "bytes after the list of server names")

    def test_well_formed_variants(self) -> None:
        self.assertEqual(read_client_hello(built(None)), Hello(None))
        self.assertEqual(read_client_hello(built([])), Hello(None))
        self.assertEqual(read_client_hello(built([(0x0A0A, b""), (43, b"\x02\x03\x04")])), Hello(None))
        self.assertEqual(read_client_hello(built([server_name_extension(b"caf\xe9.example")])), Hello("caf\xe9.example"))


class NamesTests(SynchronousTestCase):
    def test_match(self) -> None:
        """As destinations compare: case and one trailing dot aside."""
        self.assertTrue(names_match("WWW.Epmsi.atih.sante.fr.", "www.epmsi.atih.sante.fr"))
        self.assertFalse(names_match("www.epmsi.atih.sante.fr..", "www.epmsi.atih.sante.fr"))
        self.assertFalse(names_match("epmsi.atih.sante.fr", "www.epmsi.atih.sante.fr"))
        self.assertFalse(names_match(" www.epmsi.atih.sante.fr", "www.epmsi.atih.sante.fr"))
        # Unicode lower-casing never turns another name into the host.
        self.assertFalse(names_match("\u212aelvin.example", "kelvin.example"))

    def test_shown(self) -> None:
        """A name in the journal: escaped, a backslash doubled, cut."""
        self.assertEqual(shown_name("other.example"), "other.example")
        self.assertEqual(shown_name("a\x1b[2J\nb\\x\xff"), "a\\x1b[2J\\nb\\\\x\\xff")
        long = shown_name("a" * 1000)
        self.assertEqual(long, "a" * SHOWN_NAME_LENGTH + "...")


class ServerNameCheckTests(SynchronousTestCase):
    """What a tunnel holds back, and what it lets through."""

    def feed_in_pieces(self, check: ServerNameCheck, data: bytes, size: int) -> bytes | None:
        passed = None
        for start in range(0, len(data), size):
            self.assertIsNone(passed, "decided before the end of the ClientHello")
            passed = check.feed(data[start : start + size])
            self.assertLess(check.held, MAX_HELD + size)
        return passed

    def test_byte_at_a_time(self) -> None:
        """A ClientHello in 1-byte pieces: held to the last, then passed whole."""
        data = openssl_hello("Files.Example.org.")
        check = ServerNameCheck("files.example.org")
        self.assertEqual(self.feed_in_pieces(check, data, 1), data)
        self.assertEqual(check.held, 0)

    def test_mismatch_byte_at_a_time(self) -> None:
        data = openssl_hello("other.example")
        check = ServerNameCheck("files.example.org")
        with self.assertRaises(ServerNameMismatch) as caught:
            self.feed_in_pieces(check, data, 1)
        self.assertEqual(caught.exception.error, "other.example")
        self.assertEqual(caught.exception.reason, "tunnel-sni-mismatch")
        self.assertEqual(caught.exception.alert_record(), b"\x15\x03\x03\x00\x02\x02\x70")

    def test_what_passes_at_once(self) -> None:
        """Not TLS, or a ClientHello without a name: forwarded as it comes, with what follows."""
        self.assertEqual(ServerNameCheck("h").feed(b"GET / HTTP/1.1\r\n"), b"GET / HTTP/1.1\r\n")
        data = stdlib_hello(None) + b"\x14\x03\x03\x00\x01\x01"
        self.assertEqual(ServerNameCheck("h").feed(data), data)

    def test_bad_hello(self) -> None:
        check = ServerNameCheck("h")
        with self.assertRaises(BadClientHello) as caught:
            check.feed(record(handshake(b"", kind=2)))
        self.assertEqual(caught.exception.reason, "tunnel-bad-client-hello")
        self.assertIn("not a ClientHello", caught.exception.error)

    def test_held_is_bounded(self) -> None:
        """A ClientHello that never ends: refused once MAX_HELD bytes would be held."""
        check = ServerNameCheck("h")
        with self.assertRaises(BadClientHello):
            self.feed_in_pieces(check, recut(b"\x01\x00\x3f\xff" + bytes(0x3FFF), [1]), 1000)


class PropertyTests(SynchronousTestCase):
    """Whatever the bytes, a verdict; whatever the cuts, the same one."""

    @PROPERTY_SETTINGS
    @given(data=st.binary(max_size=3000) | st.binary(max_size=3000).map(lambda b: b"\x16\x03\x01" + b))
    def test_any_bytes(self, data: bytes) -> None:
        verdict = read_client_hello(data)
        self.assertIsInstance(verdict, (NotTls, NeedMore, Hello, Malformed))
        if isinstance(verdict, NeedMore):
            self.assertGreater(verdict.total, len(data))
            self.assertLessEqual(verdict.total, MAX_HELD)

    @PROPERTY_SETTINGS
    @given(
        name=st.sampled_from(["other.example", "www.epmsi.atih.sante.fr", None]),
        stack=st.sampled_from([stdlib_hello, openssl_hello]),
        changes=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), max_size=6),
    )
    def test_damaged_hello(self, name: str | None, stack: Any, changes: list[tuple[int, int]]) -> None:
        """A real ClientHello with bytes changed: a verdict, and any name found is bytes it carries."""
        data = bytearray(stack(name))
        for where, value in changes:
            data[where % len(data)] = value
        verdict = read_client_hello(bytes(data))
        self.assertIsInstance(verdict, (NotTls, NeedMore, Hello, Malformed))
        if isinstance(verdict, Hello) and verdict.server_name is not None:
            self.assertIn(verdict.server_name.encode("latin-1"), data)

    @PROPERTY_SETTINGS
    @given(
        name=st.sampled_from(["other.example", "files.example.org", None]),
        stack=st.sampled_from([stdlib_hello, openssl_hello]),
        sizes=st.lists(st.integers(min_value=1, max_value=2000), min_size=1, max_size=8),
        cuts=st.lists(st.integers(min_value=1, max_value=600), min_size=1, max_size=40),
        after=st.binary(max_size=50),
    )
    def test_any_records_any_segments(
        self, name: str | None, stack: Any, sizes: list[int], cuts: list[int], after: bytes
    ) -> None:
        """Recut into records, then into segments: the same decision, at the same byte."""
        data = recut(handshake_of(stack(name)), sizes)
        check = ServerNameCheck("files.example.org")
        segments, start, index = [], 0, 0
        stream = data + after
        while start < len(stream):
            end = start + cuts[index % len(cuts)]
            segments.append(stream[start:end])
            start, index = end, index + 1
        fed, passed = 0, None
        try:
            for segment in segments:
                fed += len(segment)
                passed = check.feed(segment)
                if passed is not None:
                    break
        except ServerNameMismatch as mismatch:
            self.assertEqual(name, "other.example")
            self.assertEqual(mismatch.error, name)
        else:
            self.assertIn(name, ("files.example.org", None))
            self.assertEqual(passed, stream[:fed])
        # Decided in the segment that completed the ClientHello.
        self.assertGreaterEqual(fed, len(data))
        self.assertLess(fed - len(segments[index_of(segments, fed)]), len(data))

    @PROPERTY_SETTINGS
    @given(labels=st.lists(st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z"), min_size=1, max_size=6))
    def test_any_host_name(self, labels: list[str]) -> None:
        """Python's TLS asks for any DNS name: the parser reads that name."""
        name = ".".join(labels)
        if all(label.isdigit() for label in labels):
            name += ".example"  # not an IPv4 address, which has no server name
        self.assertEqual(read_client_hello(stdlib_hello(name)), Hello(name))


def index_of(segments: list[bytes], fed: int) -> int:
    """Which segment ends at byte C{fed} of the stream."""
    total = 0
    for index, segment in enumerate(segments):
        total += len(segment)
        if total == fed:
            return index
    raise AssertionError(fed)


# The session, on in-memory transports.


def _events(session: HttpProxySession) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    session.log = Logger(observer=found.append)
    return found


def _connected(destination: str) -> tuple[HttpProxySession, StringTransport, StringTransport, list[dict[str, Any]]]:
    """A session whose CONNECT to C{destination} got its 200, over in-memory transports."""
    reactor = MemoryReactorClock()
    relay = RelayFactory(reactor, None, "run")  # type: ignore[arg-type]
    factory = HttpProxyFactory(relay, Destinations(None, extra=[destination]))
    session = factory.buildProtocol(IPv4Address("TCP", "10.1.1.1", 5000))
    events = _events(session)
    client = StringTransport(peerAddress=IPv4Address("TCP", "10.1.1.1", 5000))
    session.makeConnection(client)
    session.dataReceived(f"CONNECT {destination} HTTP/1.1\r\n\r\n".encode())
    [(_host, _port, connecting, _timeout, _bind)] = reactor.tcpClients
    far = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 443))
    connecting.buildProtocol(None).makeConnection(far)
    answer = b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert client.value() == answer, client.value()
    client.clear()
    return session, client, far, events


def _closed(events: list[dict[str, Any]]) -> dict[str, Any]:
    [closed] = [e for e in events if e.get("epop_event") == "connection-closed"]
    return closed


class SessionTests(SynchronousTestCase):
    """The tunnel holds a ClientHello back until its name is known, a byte at a time."""

    def test_matching_name_byte_at_a_time(self) -> None:
        session, client, far, events = _connected("localhost:443")
        data = stdlib_hello("LOCALHOST.")
        for index in range(len(data) - 1):
            session.dataReceived(data[index : index + 1])
            self.assertEqual(far.value(), b"", index)
        session.dataReceived(data[-1:])
        self.assertEqual(far.value(), data)
        session.dataReceived(b"more")
        self.assertEqual(far.value(), data + b"more")
        self.assertEqual(session.operation.bytes_in, len(data) + 4)  # type: ignore[union-attr]
        self.assertFalse(client.disconnecting)

    def test_other_name_byte_at_a_time(self) -> None:
        """Another name: nothing reaches the destination, the client gets an alert, the journal says why."""
        session, client, far, events = _connected("localhost:443")
        data = openssl_hello("other.example")
        for index in range(len(data)):
            session.dataReceived(data[index : index + 1])
        self.assertEqual(far.value(), b"")
        self.assertTrue(far.disconnecting)
        self.assertTrue(client.disconnecting)
        self.assertEqual(client.value(), b"\x15\x03\x03\x00\x02\x02\x70")
        session.connectionLost(Failure(Exception("closed")))
        closed = _closed(events)
        self.assertEqual((closed["reason"], closed["error"]), ("tunnel-sni-mismatch", "other.example"))
        [released] = [e for e in events if e.get("epop_event") == "object-released"]
        self.assertEqual((released["outcome"], released["bytes_in"]), ("refused", 0))
        self.assertEqual(released["error"], "other.example")

    def test_early_bytes_checked(self) -> None:
        """A ClientHello sent right behind the CONNECT head is checked too."""
        reactor = MemoryReactorClock()
        relay = RelayFactory(reactor, None, "run")  # type: ignore[arg-type]
        factory = HttpProxyFactory(relay, Destinations(None, extra=["localhost:443"]))
        session = factory.buildProtocol(IPv4Address("TCP", "10.1.1.1", 5000))
        events = _events(session)
        client = StringTransport(peerAddress=IPv4Address("TCP", "10.1.1.1", 5000))
        session.makeConnection(client)
        hello = stdlib_hello("other.example")
        session.dataReceived(b"CONNECT localhost:443 HTTP/1.1\r\n\r\n" + hello[:100])
        session.dataReceived(hello[100:])
        [(_host, _port, connecting, _timeout, _bind)] = reactor.tcpClients
        far = StringTransport()
        connecting.buildProtocol(None).makeConnection(far)
        self.assertEqual(far.value(), b"")
        self.assertTrue(client.disconnecting)
        # Closed at once: no idle timer left behind.
        self.assertEqual([c for c in reactor.getDelayedCalls() if c.active() and c.func.__name__ == "_idle_check"], [])
        session.connectionLost(Failure(Exception("closed")))
        self.assertEqual(_closed(events)["reason"], "tunnel-sni-mismatch")

    def test_not_tls_passes(self) -> None:
        session, client, far, events = _connected("localhost:443")
        session.dataReceived(b"\x16\x09hello")
        self.assertEqual(far.value(), b"\x16\x09hello")

    def test_ip_literal_not_checked(self) -> None:
        """A CONNECT to an IP address has no name to compare: its ClientHello goes through."""
        session, client, far, events = _connected("127.0.0.1:443")
        data = stdlib_hello("other.example")
        session.dataReceived(data)
        self.assertEqual(far.value(), data)

    def test_escaped_in_the_journal(self) -> None:
        session, client, far, events = _connected("localhost:443")
        session.dataReceived(built([server_name_extension(b"evil\x1b[2J\n.example")]))
        session.connectionLost(Failure(Exception("closed")))
        self.assertEqual(_closed(events)["error"], "evil\\x1b[2J\\n.example")

    def test_bad_hello(self) -> None:
        session, client, far, events = _connected("localhost:443")
        session.dataReceived(built([server_name_extension(b"localhost"), server_name_extension(b"other.example")]))
        self.assertEqual(far.value(), b"")
        self.assertEqual(client.value(), b"\x15\x03\x03\x00\x02\x02\x32")
        session.connectionLost(Failure(Exception("closed")))
        closed = _closed(events)
        self.assertEqual((closed["reason"], closed["error"]), ("tunnel-bad-client-hello", "extension 0 twice"))


# Real clients through a real relay.


class CountingServer:
    """A plain TCP server on loopback that counts every byte it gets."""

    def __init__(self, testcase: TestCase) -> None:
        self.received: list[bytes] = []
        self.accepted = 0
        server = self

        class Count(Protocol):
            def connectionMade(self) -> None:
                server.accepted += 1
                connections.append(self)

            def dataReceived(self, data: bytes) -> None:
                server.received.append(data)

        connections: list[Protocol] = []
        listening = reactor.listenTCP(0, Factory.forProtocol(Count), interface="127.0.0.1")
        self.port: int = listening.getHost().port
        testcase.addCleanup(listening.stopListening)
        testcase.addCleanup(lambda: [c.transport.abortConnection() for c in connections])


class _TlsThroughProxy(Protocol):
    """Python's C{ssl}, over a raw socket: CONNECT, then the ClientHello, then what comes back."""

    def __init__(self, target: str, name: str) -> None:
        self.target = target
        context = ssl.create_default_context()
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=name)
        self.answer = b""
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(f"CONNECT {self.target} HTTP/1.1\r\n\r\n".encode())
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        self.transport.write(self.outgoing.read())

    def dataReceived(self, data: bytes) -> None:
        self.answer += data

    def connectionLost(self, reason: Failure) -> None:
        self.closed.callback(None)

    def handshake_error(self) -> str:
        """What Python's TLS says of the bytes after the 200."""
        self.incoming.write(self.answer.partition(b"\r\n\r\n")[2])
        self.incoming.write_eof()
        try:
            self.tls.do_handshake()
        except ssl.SSLError as error:
            return str(error)
        return "no error"


class RealClientTests(TestCase):
    def setUp(self) -> None:
        self.far = CountingServer(self)
        self.relay = start_relay(self, reactor, "https://127.0.0.1:1", None, tunnel_to=(f"localhost:{self.far.port}",))

    async def test_python_ssl_other_name(self) -> None:
        """Python's ssl asks for another name: an alert it names, no byte to the destination, journaled."""
        client = _TlsThroughProxy(f"localhost:{self.far.port}", "other.example")
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.relay.port), client)
        self.addCleanup(client.transport.abortConnection)
        await client.closed
        self.assertTrue(client.answer.startswith(b"HTTP/1.1 200 "), client.answer)
        self.assertIn("UNRECOGNIZED_NAME", client.handshake_error())
        self.assertTrue(await poll_until(reactor, lambda: self.relay.records("connection-closed")))
        [closed] = self.relay.records("connection-closed")
        self.assertEqual((closed["reason"], closed["error"]), ("tunnel-sni-mismatch", "other.example"))
        [released] = self.relay.records("object-released")
        self.assertEqual((released["outcome"], released["bytes_in"]), ("refused", 0))
        self.assertEqual(self.far.accepted, 1)
        self.assertEqual(self.far.received, [])
        # epop journal says whose name it was: the application's, not the tunnel's.
        tunnel = f"localhost:{self.far.port}"
        self.assertEqual(closed["destination"], tunnel)
        english = "\n".join(journal_table(self.relay.journal.records, "en"))
        french = "\n".join(journal_table(self.relay.journal.records, "fr"))
        self.assertIn(f"tunnel to {tunnel} (127.0.0.1): refused (asked for other.example), tunnel-sni-mismatch; ", english)
        self.assertIn(f"tunnel vers {tunnel} (127.0.0.1) : refusée (nom demandé : other.example), nom de serveur TLS (SNI) différent ; ", french)
        self.assertIn(f", to {tunnel}, tunnel-sni-mismatch; ", english)

    async def test_python_ssl_same_name(self) -> None:
        """The CONNECT host's own name: the ClientHello reaches the destination whole."""
        client = _TlsThroughProxy(f"LocalHost.:{self.far.port}", "localhost")
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.relay.port), client)
        self.addCleanup(client.transport.abortConnection)
        expected = len(stdlib_hello("localhost"))
        self.assertTrue(await poll_until(reactor, lambda: len(b"".join(self.far.received)) >= expected))
        self.assertEqual(read_client_hello(b"".join(self.far.received)), Hello("localhost"))
        self.assertEqual(self.relay.records("connection-closed"), [])


class SandboxTests(TestCase):
    """Real TLS clients and the real sandbox, named by a --tunnel-to."""

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.port = self.sandbox.port.getHost().port
        self.relay = start_relay(
            self, reactor, "https://127.0.0.1:1", None, tunnel_to=(f"localhost:{self.port}",)
        )

    async def test_openssl_other_name(self) -> None:
        """openssl s_client -servername other.example: closed, and it says why."""
        out, err, code = await getProcessOutputAndValue(
            "sh",
            [
                "-c",
                f"exec openssl s_client -proxy 127.0.0.1:{self.relay.port} -connect localhost:{self.port} "
                f"-servername other.example -CAfile {self.sandbox.ca_path} </dev/null",
            ],
        )
        self.assertNotEqual(code, 0, out)
        self.assertIn(b"unrecognized name", err)
        self.assertTrue(await poll_until(reactor, lambda: self.relay.records("connection-closed")))
        [closed] = self.relay.records("connection-closed")
        self.assertEqual((closed["reason"], closed["error"]), ("tunnel-sni-mismatch", "other.example"))

    async def test_openssl_same_name(self) -> None:
        """openssl s_client -servername localhost: the sandbox's certificate, verified."""
        out, err, code = await getProcessOutputAndValue(
            "sh",
            [
                "-c",
                f"exec openssl s_client -proxy 127.0.0.1:{self.relay.port} -connect localhost:{self.port} "
                f"-servername localhost -verify_hostname localhost -verify_return_error "
                f"-CAfile {self.sandbox.ca_path} </dev/null",
            ],
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"Verify return code: 0 (ok)", out)

    async def test_curl_by_name(self) -> None:
        """curl -x to https://localhost:PORT sends that name: the page comes back."""
        out, err, code = await getProcessOutputAndValue(
            "curl",
            [
                "-sS", "--max-time", "30", "-o", "/dev/null", "-w", "%{http_code}",
                "-x", f"http://127.0.0.1:{self.relay.port}",
                "--cacert", self.sandbox.ca_path,
                f"https://localhost:{self.port}/",
            ],
            env=dict(os.environ, no_proxy="", NO_PROXY=""),
        )
        self.assertEqual((code, out), (0, b"200"), err)
        self.assertTrue(await poll_until(reactor, lambda: self.relay.records("connection-closed")))
        [closed] = self.relay.records("connection-closed")
        self.assertIn(closed["reason"], ("closed-by-client", "closed-by-destination"))

    async def test_chromium_by_name(self) -> None:
        """Chromium's own ClientHello (GREASE, post-quantum key share) through the check: the page loads."""
        from selenium.webdriver.common.by import By

        browser = await Browser.start(
            self,
            reactor,
            [self.sandbox.certificate_pem],
            [f"--proxy-server=http://127.0.0.1:{self.relay.port}", "--proxy-bypass-list=<-loopback>"],
        )
        url = f"https://localhost:{self.port}/"
        await browser.call(browser.driver.get, url)
        forms = await browser.call(browser.driver.find_elements, By.TAG_NAME, "form")
        self.assertEqual(len(forms), 1, url)
        made = self.relay.records("object-instantiated")
        self.assertIn(f"localhost:{self.port}", [m["destination"] for m in made])
        self.assertFalse(
            [c for c in self.relay.records("connection-closed") if c["reason"].startswith("tunnel-")],
            self.relay.records("connection-closed"),
        )
