"""
Which workstations may use the relay: the manual's "Clients autorisés".

With no entries everyone may connect (the manual's "Tous").  Otherwise a
connection from an address outside every listed address or network is
answered with the manual's message, naming the client's own address and
port, and closed.  The relay journals it like any other connection: opened,
then closed with the reason C{not-authorized}.

The check runs on the connection's first bytes, which every e-POP client
sends at once (HELLO): with C{--listen haproxy:tcp:3358} the address of the
workstation behind the load balancer is known only then.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from epop.addressing import format_peer
from epop.errors import ProtocolError
from epop.messages import Text

__all__ = ["Allowlist", "AllowlistFactory"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Allowlist:
    """
    A set of addresses and networks, IPv4 or IPv6.

    @raise ValueError: for an entry that is neither, naming it.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks: list[_Network] = []
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (e.g. 10.1.2.3, "
                    "10.1.0.0/16, fd00::/8)"
                ) from None

    def __bool__(self) -> bool:
        return bool(self.networks)

    def allows(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


def refusal_message(peer: IAddress) -> Text:
    return Text(
        "Client {client} is not allowed to connect to this e-POP relay", client=format_peer(peer)
    )


class _CheckedProtocol(ProtocolWrapper):
    """
    Checks the peer when its first bytes arrive: behind a load balancer
    speaking the PROXY protocol, that is when the real address is known.
    """

    _checked = False

    def dataReceived(self, data: bytes) -> None:
        if not self._checked:
            self._checked = True
            peer = self.getPeer()
            if not self.factory.allowlist.allows(getattr(peer, "host", "")):
                self.wrappedProtocol.fail(ProtocolError("not-authorized", refusal_message(peer)))
                return
        self.wrappedProtocol.dataReceived(data)


class AllowlistFactory(WrappingFactory):
    """Wraps the relay's factory; refused clients still reach the journal."""

    protocol = _CheckedProtocol
    noisy = False

    def __init__(self, wrapped: Any, allowlist: Allowlist) -> None:
        super().__init__(wrapped)
        self.allowlist = allowlist
