"""
The manual's "Adresse IP" list: the addresses of this machine that the relay
can listen on, each with the C{--listen} string that selects it and the
address workstations type to reach it.

The Python standard library cannot list a machine's interface addresses
portably (C{socket.if_nameindex} gives names without addresses, and
C{socket.gethostbyname(socket.gethostname())} gives one address, often
C{127.0.1.1} on Debian).  Three libraries can:

 - C{ifaddr}, which we use: pure Python (C{ctypes} over C{getifaddrs} on
   Linux, macOS and the BSDs, C{GetAdaptersAddresses} on Windows), one
   12 kB wheel for every platform, no dependencies, typed, maintained;
 - C{psutil} (C{net_if_addrs}) does the job too, but is a compiled
   extension with a wheel per platform and a large API we would not use;
 - C{netifaces} is unmaintained (last release 2021, repository archived) and
   needs a C compiler where no wheel exists, as for recent Pythons.

The enumeration is injectable: L{local_addresses} takes C{ifaddr}-shaped
adapters, so tests and callers can pass their own.

IPv6 link-local addresses (C{fe80::/10}) keep their zone, C{%N} with the
interface's index, in L{LocalAddress.address}: binding one needs it.  A
workstation needs I{its own} zone to reach such an address, so
L{LocalAddress.client_address} drops it and L{addresses_for_listen_host}
leaves link-local addresses out.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from epop.addressing import DEFAULT_PORT, host_port

__all__ = [
    "LocalAddress",
    "addresses_for_listen_host",
    "listen_string",
    "local_addresses",
]

_IPV4_ANY = ("", "0.0.0.0")
_IPV6_ANY = ("::",)


def _escape(value: str) -> str:
    """Escape a value for a Twisted endpoint string (C{\\}, C{:} and C{=})."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def listen_string(address: str, port: int = DEFAULT_PORT) -> str:
    """
    The C{--listen} value that listens on C{address} only, e.g.
    C{tcp:3358:interface=10.1.2.3} or C{tcp6:3358:interface=fd00\\:\\:3}
    (colons in an endpoint string's values are escaped with a backslash).
    """
    kind = "tcp6" if ipaddress.ip_address(address.partition("%")[0]).version == 6 else "tcp"
    return f"{kind}:{port}:interface={_escape(address)}"


@dataclass(frozen=True)
class LocalAddress:
    """
    One address of this machine.

    @ivar interface: the interface's name as people know it: C{eth0} on
        Linux, the connection's name (e.g. C{Ethernet}) on Windows.
    @ivar address: C{10.1.2.3} or C{fd00::3}; an IPv6 link-local address
        carries its zone, e.g. C{fe80::1%2}.
    @ivar version: 4 or 6.
    @ivar loopback: reachable from this machine only (C{127.0.0.0/8},
        C{::1}).
    @ivar link_local: C{169.254.0.0/16} or C{fe80::/10}.
    """

    interface: str
    address: str
    version: int
    loopback: bool
    link_local: bool

    @property
    def host(self) -> str:
        """The address without its zone: what another machine types."""
        return self.address.partition("%")[0]

    def listen_string(self, port: int = DEFAULT_PORT) -> str:
        """The C{--listen} value that listens on this address only (L{listen_string})."""
        return listen_string(self.address, port)

    def client_address(self, port: int = DEFAULT_PORT) -> str:
        """What workstations type: C{10.1.2.3:3358} or C{[fd00::3]:3358}."""
        return host_port(self.host, port)


def _from_ip(interface: str, ip: Any) -> LocalAddress | None:
    """One C{ifaddr.IP} (or anything shaped like it) as a L{LocalAddress}."""
    raw = ip.ip
    scope = 0
    if isinstance(raw, tuple):  # IPv6: (address, flowinfo, scope_id)
        text, scope = raw[0], raw[2]
    else:
        text = raw
    try:
        parsed = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    address = str(parsed)
    if parsed.version == 6 and parsed.is_link_local and scope:
        address = f"{address}%{scope}"
    name = getattr(ip, "nice_name", None) or interface
    return LocalAddress(
        interface=name,
        address=address,
        version=parsed.version,
        loopback=parsed.is_loopback,
        link_local=parsed.is_link_local,
    )


def local_addresses(adapters: Iterable[Any] | None = None) -> list[LocalAddress]:
    """
    This machine's addresses: non-loopback IPv4 first, then non-loopback
    IPv6, then loopback; link-local addresses after the others of their
    kind; otherwise in the order the system lists them.  An address listed
    twice (an interface alias) appears once.

    @param adapters: C{ifaddr.Adapter}-shaped objects (C{.name}, C{.ips},
        each with C{.ip} and C{.nice_name}); by default
        C{ifaddr.get_adapters()}.
    """
    if adapters is None:
        import ifaddr

        adapters = ifaddr.get_adapters()
    found: list[LocalAddress] = []
    seen: set[str] = set()
    for adapter in adapters:
        for ip in adapter.ips:
            local = _from_ip(adapter.name, ip)
            if local is None or local.address in seen:
                continue
            seen.add(local.address)
            found.append(local)
    found.sort(key=lambda a: (a.loopback, a.version, a.link_local))
    return found


def _ipv6_any_accepts_ipv4() -> bool:
    """
    Whether a socket bound to C{::} also accepts IPv4 connections.  Twisted
    leaves C{IPV6_V6ONLY} alone, so the system default decides: on Linux
    the C{net.ipv6.bindv6only} setting (0, dual-stack, unless changed); on
    Windows and the BSDs IPv6 only.  Elsewhere we say no: better to list
    too few addresses than one that does not answer.
    """
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/sys/net/ipv6/bindv6only", encoding="ascii") as f:
                return f.read().strip() == "0"
        except OSError:
            return True
    return False


def addresses_for_listen_host(
    host: str,
    port: int,
    *,
    addresses: Sequence[LocalAddress] | None = None,
    dual_stack: bool | None = None,
) -> list[str]:
    """
    The addresses workstations can type to reach a relay listening on
    C{host}, C{port} (e.g. from C{port.getHost()}).

    For a specific host, just that one.  For a wildcard (C{0.0.0.0} or C{""}:
    every IPv4 address; C{::}: every IPv6 address, and every IPv4 address
    too where the system makes C{::} dual-stack), this machine's addresses
    other than loopback and link-local ones, IPv4 first.  An empty list means
    the machine has no such address (no network).

    @param addresses: this machine's addresses; by default
        L{local_addresses}().
    @param dual_stack: whether C{::} accepts IPv4 too; by default the
        system's setting.
    """
    if host not in _IPV4_ANY and host not in _IPV6_ANY:
        return [host_port(host, port)]
    if addresses is None:
        addresses = local_addresses()
    if host in _IPV4_ANY:
        versions = {4}
    else:
        if dual_stack is None:
            dual_stack = _ipv6_any_accepts_ipv4()
        versions = {4, 6} if dual_stack else {6}
    result: list[str] = []
    for a in addresses:
        if a.version in versions and not a.loopback and not a.link_local:
            text = a.client_address(port)
            if text not in result:
                result.append(text)
    return result
