"""
Where the relay's HTTP CONNECT tunnels may go: e-PMSI, and nowhere else
unless the administrator says so.

A tunnel carries TLS the relay never decrypts, so the destination is the
only thing the relay can check: an open CONNECT proxy on the hospital
network would let any program reach any site through the one machine
allowed out.  The list is therefore short and exact: e-PMSI's origin
(C{--epmsi}), ATIH's sign-in hosts when C{--epmsi} is the real e-PMSI, and
each C{--tunnel-to HOST[:PORT]}.  Names match exactly, case and a trailing
dot aside; an IP literal only if that literal is listed.

The name is resolved once, by the relay, and the tunnel connects to the
address obtained, so that a second lookup cannot land elsewhere.  A built-in
name (e-PMSI's, ATIH's) that resolves to a loopback or link-local address is
refused: that is a poisoned or misconfigured resolver, and the tunnel would
reach the relay machine itself.  Destinations the administrator typed
(C{--tunnel-to}, a C{--epmsi} other than the default) are taken as they
resolve: whoever lists C{localhost} means it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from epop.addressing import host_port, ip_of
from epop.messages import Text

__all__ = [
    "ATIH_SIGN_IN",
    "Destination",
    "Destinations",
    "is_local_address",
    "parse_destination",
]

#: ATIH's sign-in hosts (PLAGE/PASREL): e-PMSI's pages send the browser and
#: ATIH's applications there to log in before any upload, so a tunnel to
#: e-PMSI alone would leave them stuck at the sign-in page.  Allowed only
#: with the real e-PMSI (C{--epmsi} left at its default).
ATIH_SIGN_IN: tuple[tuple[str, int], ...] = (
    ("connect-pasrel.atih.sante.fr", 443),
    ("pasrel.atih.sante.fr", 443),
)

TUNNEL_PORT = 443


def _normal(host: str) -> str:
    """A host as compared: lower case, without a trailing dot or IPv6 brackets."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host[:-1] if host.endswith(".") else host


def is_local_address(address: str) -> bool:
    """Whether C{address} is loopback or link-local (this machine, or its wire)."""
    ip = ip_of(address)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_link_local


@dataclass(frozen=True)
class Destination:
    """
    One allowed C{host:port}.

    @ivar typed: the administrator named it (C{--tunnel-to}, or a
        C{--epmsi} of their own): it may resolve to a local address.
    """

    host: str
    port: int
    typed: bool = True

    def __str__(self) -> str:
        return host_port(self.host, self.port)

    @property
    def is_literal(self) -> bool:
        return ip_of(self.host) is not None

    def may_resolve_to(self, address: str) -> bool:
        """Whether a tunnel to this destination may connect to C{address}."""
        return self.typed or self.is_literal or not is_local_address(address)


def parse_destination(text: str, default_port: int = TUNNEL_PORT) -> tuple[str, int]:
    """
    C{HOST[:PORT]} (C{[v6]:PORT} for IPv6) as a normalized host and a port.

    @raise ValueError: saying what is wrong, for the administrator.
    """
    entry = text.strip()
    host, port = entry, default_port
    if entry.startswith("["):
        end = entry.find("]")
        if end < 0:
            raise ValueError(Text("{text!r}: an IPv6 address goes in brackets, e.g. [fd00::1]:443", text=text))
        host, rest = entry[: end + 1], entry[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(Text("{text!r} is not HOST[:PORT]", text=text))
            port = _port(text, rest[1:])
    elif entry.count(":") == 1:
        host, number = entry.split(":")
        port = _port(text, number)
    elif ":" in entry and ip_of(entry) is None:
        raise ValueError(Text("{text!r} is not HOST[:PORT]", text=text))
    host = _normal(host)
    if not host or any(c.isspace() or c in "/@?#" for c in host):
        raise ValueError(Text("{text!r} is not HOST[:PORT] (e.g. www.epmsi.atih.sante.fr:443)", text=text))
    return host, port


def _port(text: str, number: str) -> int:
    if not number.isdigit() or not 0 < int(number) < 65536:
        raise ValueError(Text("{text!r}: the port must be a number from 1 to 65535", text=text))
    return int(number)


class Destinations:
    """
    The destinations a tunnel may reach; empty when tunnels are off.

    @param epmsi: e-PMSI's origin host and port.
    @param epmsi_is_default: C{--epmsi} was left at its default: ATIH's
        sign-in hosts are allowed too, and e-PMSI's name must resolve to a
        public address.
    @param extra: C{--tunnel-to} entries, C{HOST[:PORT]}.
    """

    def __init__(
        self,
        epmsi: tuple[str, int] | None,
        epmsi_is_default: bool = False,
        extra: Iterable[str] = (),
    ) -> None:
        found: dict[tuple[str, int], Destination] = {}
        if epmsi is not None:
            host, port = _normal(epmsi[0]), epmsi[1]
            found[(host, port)] = Destination(host, port, typed=not epmsi_is_default)
            if epmsi_is_default:
                for host, port in ATIH_SIGN_IN:
                    found[(host, port)] = Destination(host, port, typed=False)
        for entry in extra:
            host, port = parse_destination(entry)
            found[(host, port)] = Destination(host, port, typed=True)
        self.entries: Sequence[Destination] = tuple(found.values())
        self._by_key = found

    def __bool__(self) -> bool:
        return bool(self.entries)

    def find(self, host: str, port: int) -> Destination | None:
        """The listed destination C{host:port} names, or C{None}."""
        return self._by_key.get((_normal(host), port))

    def describe(self) -> str:
        """For people: every destination, comma-separated."""
        return ", ".join(str(d) for d in self.entries)
