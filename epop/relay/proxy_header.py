"""
The PROXY protocol header a load balancer sends before a workstation's
bytes (C{--listen haproxy:tcp:3358}), read strictly.

Twisted's own reader (L{twisted.protocols.haproxy}) takes any text as an
address and any integer as a port, and lets some malformed headers escape
as exceptions.  The address a header gives becomes the client's address in
the journal and the allowlist's check, so here it must be an IP address of
the family the header names, and its ports 0 to 65535; anything else is
refused with an e-POP error and journaled with its own reason:

  - C{no-proxy-header}: the first bytes are not a PROXY header at all
    (typically a workstation that skipped the balancer);
  - C{bad-proxy-header}: they start like one, but it is malformed or gives
    addresses that are not IP addresses.

Headers without an address (v1 C{UNKNOWN}, v2 C{LOCAL} or C{UNSPEC}, the
balancer's own health checks) keep the socket's peer, as the specification
says.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from epop.addressing import format_peer
from epop.errors import ProtocolError
from epop.messages import Text, log_format
from epop.printable import printable

__all__ = [
    "HAPROXY_PREFIX",
    "BadProxyHeader",
    "ProxyHeaderEndpoint",
    "ProxyHeaderFactory",
    "parse_proxy_header",
]

#: The endpoint prefix whose listeners expect a PROXY header.
HAPROXY_PREFIX = "haproxy:"

_V1_PREFIX = b"PROXY "
_V1_MAX = 107  # the whole line, CRLF included (specification, section 2.1)
_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED = 16
_PORT = re.compile(rb"(?:0|[1-9][0-9]{0,4})\Z")
_IPV4 = re.compile(rb"[0-9.]{7,15}\Z")
_IPV6 = re.compile(rb"[0-9A-Fa-f:.]{2,45}\Z")

Address = IPv4Address | IPv6Address


class BadProxyHeader(Exception):
    """
    A PROXY header that cannot be used.

    @ivar code: C{no-proxy-header} or C{bad-proxy-header}.
    @ivar problem: what is wrong, for people.
    """

    def __init__(self, code: str, problem: Text) -> None:
        super().__init__(code, str(problem))
        self.code = code
        self.problem = problem


def _bad(problem: Text) -> BadProxyHeader:
    return BadProxyHeader("bad-proxy-header", problem)


def _v1_address(kind: str, text: bytes, port: bytes, which: Text) -> Address:
    if kind == "TCP4":
        pattern, family, cls = _IPV4, ipaddress.IPv4Address, IPv4Address
    else:
        pattern, family, cls = _IPV6, ipaddress.IPv6Address, IPv6Address
    try:
        if not pattern.match(text):
            raise ValueError
        host = str(family(text.decode("ascii")))
    except ValueError:
        raise _bad(
            Text(
                "its {which} address is not an {family} address",
                which=which,
                family="IPv4" if kind == "TCP4" else "IPv6",
            )
        ) from None
    if not _PORT.match(port) or int(port) > 65535:
        raise _bad(Text("its {which} port is not a number from 0 to 65535", which=which))
    return cls("TCP", host, int(port))


#: Which address or port of the header is wrong, for L{_v1_address}'s messages.
_SOURCE = Text("source")
_DESTINATION = Text("destination")


def _parse_v1(buffer: bytes) -> tuple[tuple[Address, Address] | None, int] | None:
    end = buffer.find(b"\r\n", 0, _V1_MAX)
    if end < 0:
        if len(buffer) >= _V1_MAX:
            raise _bad(Text("its first line has no end within {limit} bytes", limit=_V1_MAX))
        return None
    fields = buffer[:end].split(b" ")
    used = end + 2
    if len(fields) >= 2 and fields[1] == b"UNKNOWN":
        return None, used
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise _bad(Text("it is not 'PROXY TCP4|TCP6 SOURCE DESTINATION SOURCE-PORT DESTINATION-PORT'"))
    kind = fields[1].decode("ascii")
    source = _v1_address(kind, fields[2], fields[4], _SOURCE)
    destination = _v1_address(kind, fields[3], fields[5], _DESTINATION)
    return (source, destination), used


def _parse_v2(buffer: bytes) -> tuple[tuple[Address, Address] | None, int] | None:
    if len(buffer) < _V2_FIXED:
        return None
    version_command, family_protocol, length = struct.unpack("!BBH", buffer[12:16])
    if version_command >> 4 != 2:
        raise _bad(Text("its version is not 2"))
    used = _V2_FIXED + length
    if len(buffer) < used:
        return None
    command = version_command & 0x0F
    if command == 0:  # LOCAL: the balancer's own connection (health check)
        return None, used
    if command != 1:
        raise _bad(Text("its command is neither LOCAL nor PROXY"))
    if family_protocol == 0x00:  # UNSPEC: no address to use
        return None, used
    body = buffer[_V2_FIXED:used]
    if family_protocol == 0x11:  # TCP over IPv4
        if length < 12:
            raise _bad(Text("it is too short for the addresses it announces"))
        source, destination, source_port, destination_port = struct.unpack("!4s4sHH", body[:12])
        return (
            IPv4Address("TCP", str(ipaddress.IPv4Address(source)), source_port),
            IPv4Address("TCP", str(ipaddress.IPv4Address(destination)), destination_port),
        ), used
    if family_protocol == 0x21:  # TCP over IPv6
        if length < 36:
            raise _bad(Text("it is too short for the addresses it announces"))
        source, destination, source_port, destination_port = struct.unpack("!16s16sHH", body[:36])
        return (
            IPv6Address("TCP", str(ipaddress.IPv6Address(source)), source_port),
            IPv6Address("TCP", str(ipaddress.IPv6Address(destination)), destination_port),
        ), used
    raise _bad(Text("its addresses are not TCP over IPv4 or IPv6"))


def parse_proxy_header(buffer: bytes) -> tuple[tuple[Address, Address] | None, int] | None:
    """
    Read a PROXY header, version 1 or 2, at the start of C{buffer}.

    @return: C{None} while more bytes are needed; else the (source,
        destination) addresses, or C{None} for a header without addresses,
        and how many bytes the header took.
    @raise BadProxyHeader: for bytes that are not, or cannot become, a
        header this relay accepts.
    """
    if buffer[: len(_V2_SIGNATURE)] == _V2_SIGNATURE[: len(buffer)]:
        return _parse_v2(buffer)
    if buffer[: len(_V1_PREFIX)] == _V1_PREFIX[: len(buffer)]:
        return _parse_v1(buffer)
    raise BadProxyHeader(
        "no-proxy-header",
        Text(
            "This port takes connections through the load balancer only (PROXY "
            "protocol): give the workstation the load balancer's address."
        ),
    )


#: The journal's C{error}, and the log's problem, for a header cut short.
_ENDED_INSIDE = Text("the connection ended inside its PROXY header")


def _shown(data: bytes) -> str:
    """
    Bytes a peer sent, as text safe to log: ASCII as it is, a backslash
    doubled, other bytes and control characters escaped (C{\\x1b}, C{\\r},
    C{\\xff}), so that what is shown cannot be mistaken for what was sent.
    """
    return printable(data.replace(b"\\", b"\\\\").decode("ascii", "backslashreplace"))


class _HeaderReader(ProtocolWrapper):
    """
    Holds a connection's bytes until its PROXY header is complete and valid,
    then hands the rest on; the addresses it gives become the connection's
    peer and host.
    """

    log = Logger()

    def __init__(self, factory: WrappingFactory, wrappedProtocol: Any) -> None:
        super().__init__(factory, wrappedProtocol)
        self._buffer: bytes | None = b""
        self._addresses: tuple[Address, Address] | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._buffer is None:
            self.wrappedProtocol.dataReceived(data)
            return
        self._buffer += data
        try:
            found = parse_proxy_header(self._buffer)
        except BadProxyHeader as e:
            self._refuse(e)
            return
        if found is None:
            return
        self._addresses, used = found
        rest, self._buffer = self._buffer[used:], None
        if rest:
            self.wrappedProtocol.dataReceived(rest)

    def _warn(self, code: str, problem: Text, received: bytes) -> None:
        """One line in the relay's log, in the relay's language: who, why, and what the header looked like."""
        language = self.factory.language
        self.log.warn(
            log_format(Text('Refused a connection from {peer}: {code}: {problem}; it began with "{start}"'), language),
            peer=format_peer(self.transport.getPeer()),
            code=code,
            problem=problem.render(language).rstrip("."),
            start=_shown(received[:_V1_MAX]),
        )

    def _refuse(self, bad: BadProxyHeader) -> None:
        received, self._buffer = self._buffer or b"", None
        self._warn(bad.code, bad.problem, received)
        refuse = getattr(self.wrappedProtocol, "refuse", None)
        if refuse is None:
            self.transport.loseConnection()
            return
        if bad.code == "no-proxy-header":
            error = ProtocolError(bad.code, bad.problem)
        else:
            # The journal's connection-closed line says why, in words: told
            # first, as the relay keeps it when the refusal then closes.
            ending = getattr(self.wrappedProtocol, "ending", None)
            if ending is not None:
                ending(bad.code, printable(str(bad.problem)), b"")
            error = ProtocolError(
                bad.code,
                Text(
                    "The load balancer's PROXY header was refused: {problem}. Check the "
                    "load balancer's send-proxy setting.",
                    problem=bad.problem,
                ),
            )
        refuse(error, received)

    def connectionLost(self, reason: Failure) -> None:
        if self._buffer:
            # Closed in the middle of a header: say so rather than "closed by client".
            self._warn("bad-proxy-header", _ENDED_INSIDE, self._buffer)
            note = getattr(self.wrappedProtocol, "ending", None)
            if note is not None:
                note("bad-proxy-header", str(_ENDED_INSIDE), self._buffer)
        self._buffer = None
        super().connectionLost(reason)

    def getPeer(self) -> IAddress:
        if self._addresses is not None:
            return self._addresses[0]
        return self.transport.getPeer()

    def getHost(self) -> IAddress:
        if self._addresses is not None:
            return self._addresses[1]
        return self.transport.getHost()


class ProxyHeaderFactory(WrappingFactory):
    """Wraps the relay's factory on a C{haproxy:} listener; logs its refusals in C{language}."""

    protocol = _HeaderReader
    noisy = False

    def __init__(self, wrappedFactory: IProtocolFactory, language: str = "en") -> None:
        super().__init__(wrappedFactory)
        self.language = language

    def logPrefix(self) -> str:
        return f"{type(self.wrappedFactory).__name__} (PROXY)"


@implementer(IStreamServerEndpoint)
class ProxyHeaderEndpoint:
    """
    Listens on C{wrapped}, expecting a PROXY header on every connection;
    logs its refusals in C{language}.
    """

    def __init__(self, wrapped: IStreamServerEndpoint, language: str = "en") -> None:
        self.wrapped = wrapped
        self.language = language

    def listen(self, factory: IProtocolFactory) -> Deferred[Any]:
        return self.wrapped.listen(ProxyHeaderFactory(factory, self.language))
