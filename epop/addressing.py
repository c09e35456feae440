"""
Addresses: e-POP's port, how a host and port are written for people and in
URLs (C{10.1.2.3:3358}, C{[fd00::1]:3358}), and how client addresses are read
as IP addresses and grouped into one client.
"""

from __future__ import annotations

import ipaddress
from typing import Any

__all__ = [
    "DEFAULT_PORT",
    "RELAY_ADDRESS_HELP",
    "url_host",
    "host_port",
    "format_peer",
    "ip_of",
    "client_key",
]

#: The TCP port the ATIH chose for e-POP: the relay listens on it and the
#: workstations use it unless told otherwise.
DEFAULT_PORT = 3358

#: How a relay's address is typed, for help texts and error messages.
RELAY_ADDRESS_HELP = f"HOST or HOST:PORT (port {DEFAULT_PORT} by default)"


def url_host(host: str) -> str:
    """The host as a URL or C{host:port} writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def host_port(host: str, port: int) -> str:
    """IPv6 hosts get brackets, so the port stays readable."""
    return f"{url_host(host)}:{port}"


def format_peer(address: Any) -> str:
    """An L{IAddress} as C{host:port}, or a UNIX socket's path."""
    host = getattr(address, "host", None)
    if host is None:
        name = getattr(address, "name", None)
        if name is None:
            return "local"
        return name.decode() if isinstance(name, bytes) else str(name)
    return host_port(host, getattr(address, "port", 0))


def ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """
    C{host} as an IP address, or C{None} if it is not one.  An IPv4 address
    seen on an IPv6 socket (C{::ffff:10.1.2.3}) is the IPv4 address, so that
    a rule written for it applies whatever socket the client came in on.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_key(host: str) -> str:
    """
    What one client is, for the relay's limits: its IPv4 address, or its
    IPv6 /64 network (one machine easily holds a whole /64).
    """
    address = ip_of(host)
    if address is None:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
