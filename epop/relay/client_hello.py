"""
The server name a tunnel's TLS asks for: the SNI of its first ClientHello.

A tunnel is allowed by its C{CONNECT host:port}, but what the destination
serves is chosen by the name inside the client's TLS ClientHello (SNI).  A
destination behind a shared front (a CDN, a reverse proxy hosting many
sites) would serve any site it fronts to a client that CONNECTs to the
allowed name and then asks TLS for another one: domain fronting, an open
proxy by another road.  The relay reads that name from the tunnel's first
bytes, in clear before any encryption, and closes a tunnel whose name is
not the CONNECT host's.

L{read_client_hello} is a small, strict parser of the client's first TLS
records; it gives a L{Verdict}, never an exception.  L{ServerNameCheck}
holds a tunnel's first bytes until that verdict is known, so that nothing
reaches the destination before it, and bounds what it holds: a ClientHello
(post-quantum key shares make today's ~1.8 KB) may take up to 16 KiB, in
any number of TCP segments and TLS records; past that it is malformed.

What passes unchecked: bytes that are not TLS at all, and a ClientHello
without a server name.  Fronting needs a name for the front to route on;
without one the destination serves its own default site, and a non-TLS
stream is refused by a TLS destination itself.  What is refused besides a
name of another host: a ClientHello broken in a way a server might read
otherwise than the relay (two server names, two server_name extensions, a
record of another type in its middle), so that the check cannot be
sidestepped by a malformation the destination forgives.
"""

from __future__ import annotations

from dataclasses import dataclass

from epop.printable import SHOWN_LENGTH, shown_peer_text

__all__ = [
    "MAX_HANDSHAKE",
    "MAX_HELD",
    "BadClientHello",
    "ClientHelloReader",
    "Hello",
    "Malformed",
    "NeedMore",
    "NotTls",
    "ServerNameCheck",
    "SHOWN_NAME_LENGTH",
    "ServerNameMismatch",
    "TunnelHelloRefused",
    "Verdict",
    "names_match",
    "read_client_hello",
    "shown_name",
]

#: TLS record content type of handshake messages, and the handshake type
#: of a ClientHello.
HANDSHAKE = 0x16
CLIENT_HELLO = 1
#: The record content type of alerts, and the level that ends a connection.
ALERT = 0x15
FATAL = 2
#: Every TLS and SSL 3 record's major version: what a server takes.
MAJOR_VERSION = 3
RECORD_HEADER = 5
HANDSHAKE_HEADER = 4
#: Largest plaintext record TLS allows (RFC 8446, section 5.1).
MAX_RECORD = 2**14
#: Largest ClientHello message (its body) the relay reads.
MAX_HANDSHAKE = 16 * 1024
#: Most bytes held before a verdict: the largest ClientHello, its header,
#: and room for the headers of the records it is cut into.
MAX_HELD = MAX_HANDSHAKE + HANDSHAKE_HEADER + 1024
#: The extension that carries the server name (RFC 6066), and its one name type.
SERVER_NAME = 0
HOST_NAME = 0
#: Characters of a client's server name the journal keeps.
SHOWN_NAME_LENGTH = SHOWN_LENGTH


@dataclass(frozen=True)
class NotTls:
    """The first bytes are not a TLS handshake record: nothing to check."""


@dataclass(frozen=True)
class NeedMore:
    """Undecided: nothing can change before C{total} bytes are in, in all."""

    total: int


@dataclass(frozen=True)
class Hello:
    """
    A whole ClientHello, and the server name it asks for (C{None} without
    the extension).  The name is its bytes, one character each (Latin-1):
    a name that is not ASCII is kept as it came, never made to match.
    """

    server_name: str | None


@dataclass(frozen=True)
class Malformed:
    """TLS records that no TLS server would take as a ClientHello; C{reason} says why."""

    reason: str


Verdict = NotTls | NeedMore | Hello | Malformed


class _Short(Exception):
    """The ClientHello ended inside one of its fields."""


class _Fields:
    """Reads a ClientHello's fields in order; C{_Short} names the one cut."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    @property
    def done(self) -> bool:
        return self.offset == len(self.data)

    def take(self, count: int, what: str) -> bytes:
        end = self.offset + count
        if end > len(self.data):
            raise _Short(what)
        found = self.data[self.offset : end]
        self.offset = end
        return found

    def number(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, size: int, what: str) -> bytes:
        """A field preceded by its length on C{size} bytes."""
        return self.take(self.number(size, what), what)


def read_client_hello(data: bytes) -> Verdict:
    """
    What the first bytes a client sent through a tunnel say: not TLS, not
    enough yet, a ClientHello and its server name, or malformed (a
    ClientHello over L{MAX_HANDSHAKE}, or cut into records that would make
    it more than L{MAX_HELD} bytes, is malformed).

    Only the records up to the end of the first handshake message are read:
    what follows it is the destination's to judge.
    """
    return ClientHelloReader().feed(data)


class ClientHelloReader:
    """
    L{read_client_hello} for bytes that come in pieces, reading each record
    once: however finely a client cuts its ClientHello, into segments or
    records, the work is proportional to its size.

    @ivar data: every byte fed, held for the caller to forward.
    """

    def __init__(self) -> None:
        self.data = bytearray()
        #: Where the first record not yet read whole starts.
        self._offset = 0
        #: The handshake bytes of the records read whole.
        self._message = bytearray()
        self._needed = 1
        self._verdict: Verdict | None = None

    def feed(self, data: bytes) -> Verdict:
        """Take C{data}; the verdict on every byte fed so far."""
        if self._verdict is not None:
            return self._verdict
        self.data += data
        if len(self.data) < self._needed:
            return NeedMore(self._needed)
        verdict = self._read(min(len(self.data), MAX_HELD))
        if isinstance(verdict, NeedMore):
            self._needed = verdict.total
        else:
            self._verdict = verdict
        return verdict

    def _read(self, available: int) -> Verdict:
        """The verdict on the first C{available} bytes, past the records already read."""
        data = self.data
        if data[0] != HANDSHAKE:
            return NotTls()
        if available < 2:
            return _need(2)
        if data[1] != MAJOR_VERSION:
            return NotTls()
        while True:
            offset = self._offset
            if offset + RECORD_HEADER > available:
                return _need(offset + RECORD_HEADER)
            kind, major = data[offset], data[offset + 1]
            length = int.from_bytes(data[offset + 3 : offset + RECORD_HEADER], "big")
            if kind != HANDSHAKE:
                return Malformed(f"a record of type {kind} came before the ClientHello was whole")
            if major != MAJOR_VERSION:
                return Malformed(f"a record of version {major}.{data[offset + 2]} inside the ClientHello")
            if length == 0:
                return Malformed("an empty handshake record")
            if length > MAX_RECORD:
                return Malformed(f"a record of {length} bytes, over TLS's {MAX_RECORD}")
            start = offset + RECORD_HEADER
            end = start + length
            if end <= available:
                # A whole record: its part of the message is read once.
                self._message += data[start:end]
                message = self._message
            else:
                message = self._message + data[start:available]
            if len(message) >= HANDSHAKE_HEADER:
                if message[0] != CLIENT_HELLO:
                    return Malformed(f"the first handshake message is of type {message[0]}, not a ClientHello")
                size = int.from_bytes(message[1:HANDSHAKE_HEADER], "big")
                if size > MAX_HANDSHAKE:
                    return Malformed(f"a ClientHello of {size} bytes, over the {MAX_HANDSHAKE} the relay reads")
                whole = HANDSHAKE_HEADER + size
                if len(message) >= whole:
                    return _server_name(bytes(message[HANDSHAKE_HEADER:whole]))
                wanted = whole
            else:
                wanted = HANDSHAKE_HEADER
            if available < end:
                return _need(min(end, available + wanted - len(message)))
            self._offset = end


def _need(total: int) -> Verdict:
    if total > MAX_HELD:
        return Malformed(f"a ClientHello spread over more than {MAX_HELD} bytes of records")
    return NeedMore(total)


def _server_name(body: bytes) -> Hello | Malformed:
    """The server name of a whole ClientHello's body (RFC 8446, section 4.1.2)."""
    fields = _Fields(body)
    try:
        fields.take(2 + 32, "version and random")
        if len(fields.vector(1, "session id")) > 32:
            return Malformed("a session id over 32 bytes")
        suites = fields.vector(2, "cipher suites")
        if not suites or len(suites) % 2:
            return Malformed("a list of cipher suites that is empty or of an odd length")
        if not fields.vector(1, "compression methods"):
            return Malformed("an empty list of compression methods")
        if fields.done:
            return Hello(None)
        extensions = _Fields(fields.vector(2, "extensions"))
        if not fields.done:
            return Malformed("bytes after the extensions")
        seen: set[int] = set()
        name: str | None = None
        while not extensions.done:
            kind = extensions.number(2, "extensions")
            data = extensions.vector(2, "extensions")
            if kind in seen:
                return Malformed(f"extension {kind} twice")
            seen.add(kind)
            if kind == SERVER_NAME:
                found = _host_name(data)
                if isinstance(found, Malformed):
                    return found
                name = found
        return Hello(name)
    except _Short as short:
        return Malformed(f"the ClientHello ends inside its {short}")


def _host_name(data: bytes) -> str | Malformed:
    """The one host name of a server_name extension (RFC 6066, section 3)."""
    fields = _Fields(data)
    entries = _Fields(fields.vector(2, "server name"))
    if not fields.done:
        return Malformed("bytes after the list of server names")
    names = []
    while not entries.done:
        if entries.number(1, "server name") != HOST_NAME:
            return Malformed("a server name that is not a host name")
        names.append(entries.vector(2, "server name"))
    if len(names) != 1:
        return Malformed(f"{len(names)} server names, not one")
    if not names[0]:
        return Malformed("an empty server name")
    return names[0].decode("latin-1")


def names_match(server_name: str, host: str) -> bool:
    """
    Whether a ClientHello's server name is C{host} (a destination's,
    already normalized), as destinations compare: case and one trailing
    dot aside, and ASCII only.
    """
    if not server_name.isascii():
        return False
    name = server_name.lower()
    return (name[:-1] if name.endswith(".") else name) == host


def shown_name(server_name: str) -> str:
    """
    A client's server name for the journal: ASCII as it is, a backslash
    doubled, other bytes escaped (C{\\xff}, C{\\n}), cut at
    L{SHOWN_NAME_LENGTH} characters with C{...}.
    """
    return shown_peer_text(server_name, SHOWN_NAME_LENGTH)


class TunnelHelloRefused(Exception):
    """
    The tunnel's ClientHello may not go on: C{reason} for the journal,
    C{error} what it was, and C{alert} the TLS alert that tells the client
    (RFC 8446, section 6), so that it shows an error of its own rather than
    a connection cut for no reason.
    """

    reason = "tunnel-hello-refused"
    alert = 80  # internal_error

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error

    def alert_record(self) -> bytes:
        """A fatal alert, as a server would send it before its ServerHello."""
        return bytes([ALERT, MAJOR_VERSION, 3, 0, 2, FATAL, self.alert])


class ServerNameMismatch(TunnelHelloRefused):
    """The ClientHello asks for another server than the CONNECT host: C{error} is its name, shown."""

    reason = "tunnel-sni-mismatch"
    alert = 112  # unrecognized_name


class BadClientHello(TunnelHelloRefused):
    """The first bytes are a TLS handshake record, but not a ClientHello a server would take."""

    reason = "tunnel-bad-client-hello"
    alert = 50  # decode_error


class ServerNameCheck:
    """
    Holds a tunnel's first bytes until they show where its TLS goes.

    @param host: the CONNECT host, normalized (a L{Destination}'s C{host}).
    """

    def __init__(self, host: str) -> None:
        self.host = host
        self._reader = ClientHelloReader()

    @property
    def held(self) -> int:
        """Bytes held back, not yet forwarded."""
        return len(self._reader.data)

    def feed(self, data: bytes) -> bytes | None:
        """
        Hold C{data}; C{None} while undecided, then every byte held, to forward.

        @raise ServerNameMismatch: the ClientHello names another host.
        @raise BadClientHello: the first bytes are a broken ClientHello.
        """
        verdict = self._reader.feed(data)
        if isinstance(verdict, NeedMore):
            return None
        if isinstance(verdict, Malformed):
            raise BadClientHello(verdict.reason)
        if isinstance(verdict, Hello) and verdict.server_name is not None:
            if not names_match(verdict.server_name, self.host):
                raise ServerNameMismatch(shown_name(verdict.server_name))
        held, self._reader = bytes(self._reader.data), ClientHelloReader()
        return held
