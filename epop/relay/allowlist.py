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

The list can change while the relay runs (C{SIGHUP} with C{--config}, or
L{epop.relay.service.RelayService.set_allowlist}): an L{Allowlist} never changes,
and the factory swaps the whole list at once.  Connections already admitted
go on; every connection checked afterwards meets the new list.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from epop.addressing import format_peer, ip_of
from epop.errors import ProtocolError
from epop.messages import Text
from epop.relay.interfaces import count_refused, relay_inside

__all__ = ["Allowlist", "AllowlistFactory"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Allowlist:
    """
    A set of addresses and networks, IPv4 or IPv6; empty means everyone.

    Never changed once built, so that a list being replaced cannot be seen
    half-updated: build a new one instead.

    @ivar entries: the entries as given (stripped), for the journal.
    @raise ValueError: for an entry that is neither, naming it.
    """

    __slots__ = ("entries", "networks")

    entries: tuple[str, ...]
    networks: tuple[_Network, ...]

    def __init__(self, entries: Iterable[str]) -> None:
        kept: list[str] = []
        networks: list[_Network] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    Text("{entry!r} is not an IP address or network (e.g. 10.1.2.3, 10.1.0.0/16, fd00::/8)", entry=entry)
                ) from None
            kept.append(entry.strip())
        object.__setattr__(self, "entries", tuple(kept))
        object.__setattr__(self, "networks", tuple(networks))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("an Allowlist never changes; build a new one")

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __repr__(self) -> str:
        return f"Allowlist({list(self.entries)!r})"

    def describe(self) -> str:
        """For people: the entries, or "everyone"."""
        return ", ".join(self.entries) if self.entries else "everyone"

    def allows(self, host: str) -> bool:
        """Whether C{host} is in a listed network (always false when empty)."""
        address = ip_of(host)
        return address is not None and any(address in network for network in self.networks)

    def admits(self, host: str) -> bool:
        """Whether C{host} may connect: anyone when the list is empty."""
        return not self.networks or self.allows(host)


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
    _refused = False

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            count_refused(self.wrappedProtocol, data)
            return
        if not self._checked:
            self._checked = True
            refusal = self.factory.refusal(self.getPeer())
            if refusal is not None:
                self._refused = True
                relay_inside(self.wrappedProtocol).fail(refusal)
                count_refused(self.wrappedProtocol, data)
                return
        self.wrappedProtocol.dataReceived(data)


class AllowlistFactory(WrappingFactory):
    """
    Wraps the relay's factory; refused clients still reach the journal.

    Always in place, even with an empty list (everyone), so that a list set
    later applies without rebuilding the listeners.
    """

    protocol = _CheckedProtocol
    noisy = False

    def __init__(
        self, wrapped: Any, allowlist: Allowlist | None = None, *, same_as: AllowlistFactory | None = None
    ) -> None:
        super().__init__(wrapped)
        self.allowlist = allowlist if allowlist is not None else Allowlist(())
        #: Another factory whose list this one applies (the HTTP side uses
        #: the e-POP side's, so that one list, replaced once, rules both).
        self.same_as = same_as

    def refusal(self, peer: IAddress) -> ProtocolError | None:
        """The error for C{peer} if the allowlist refuses it, else C{None}."""
        if self.same_as is not None:
            return self.same_as.refusal(peer)
        if self.allowlist.admits(getattr(peer, "host", "")):
            return None
        return ProtocolError("not-authorized", refusal_message(peer))

    def set_allowlist(self, allowlist: Allowlist) -> Allowlist:
        """Use C{allowlist} for every connection checked from now on; returns the old one."""
        previous, self.allowlist = self.allowlist, allowlist
        return previous
