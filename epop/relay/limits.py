"""
How many connections the relay serves at once: in all, and from one client
address.

Each connection holds two sockets (the workstation's and e-PMSI's) and read
buffers, so without a cap a burst, a misbehaving program or an attack could
run the relay out of file descriptors or memory, and then every workstation
would fail.  A connection over a cap is told so with an e-POP error that
names the limit (C{too-many-connections} or
C{too-many-connections-from-client}) and journaled opened, then closed with
that reason; the connections already served go on.

A connection is counted from its first bytes to its end: behind a load
balancer speaking the PROXY protocol (C{--listen haproxy:...}) the client's
real address is known only then, as for the allowlist.  Refused connections
are not counted.  Connections that have sent nothing yet are bounded apart
(L{MAX_SILENT_CONNECTIONS}): one more closes the oldest of them, or
itself if they all just connected.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from epop.addressing import client_key
from epop.relay.interfaces import count_refused, relay_inside
from epop.errors import ProtocolError
from epop.messages import Text

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_CONNECTIONS_PER_CLIENT",
    "MAX_SILENT_CONNECTIONS",
    "SILENT_GRACE",
    "ConnectionLimits",
    "LimitsFactory",
]

#: Connections served at once, in all.  Two sockets each: 500 stay below
#: the usual limit of 1024 open files per process.
DEFAULT_MAX_CONNECTIONS = 500
#: Connections served at once from one address.  Generous on purpose: a
#: whole hospital may reach the relay from one address (NAT, a load
#: balancer without the PROXY protocol), and a month-end rush may mean 200
#: uploads at once.
DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 250
#: Connections that have not sent their first byte yet.  A workstation
#: sends at once, but in a rush hundreds connect within a moment, before
#: the relay has read any of them: as many as the default total cap.  Past
#: this the oldest is closed if it has been silent SILENT_GRACE seconds,
#: else the newcomer, so that a flood of silent sockets (not counted above:
#: their client is not known yet behind a load balancer) cannot run the
#: relay out of file descriptors nor keep workstations out.
MAX_SILENT_CONNECTIONS = DEFAULT_MAX_CONNECTIONS
SILENT_GRACE = 2.0


@dataclass(frozen=True)
class ConnectionLimits:
    """The caps; 0 means no cap."""

    total: int = DEFAULT_MAX_CONNECTIONS
    per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT

    def __post_init__(self) -> None:
        for name, value in (("max_connections", self.total), ("max_connections_per_client", self.per_client)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be 0 (no limit) or a positive whole number, not {value!r}")


def too_many(total: int) -> ProtocolError:
    return ProtocolError(
        "too-many-connections",
        Text(
            "The relay is already serving {limit} connections, its maximum: send again "
            "in a few minutes.",
            limit=total,
        ),
    )


def too_many_from(client: str, per_client: int) -> ProtocolError:
    return ProtocolError(
        "too-many-connections-from-client",
        Text(
            "The relay is already serving {limit} connections from {client}, its maximum "
            "for one address: send again once some have finished.",
            limit=per_client,
            client=client,
        ),
    )


class _CountedProtocol(ProtocolWrapper):
    """Counts its connection from its first bytes, or refuses it over a cap."""

    _client: str | None = None
    _refused = False

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            count_refused(self.wrappedProtocol, data)
            return
        if self._client is None:
            client = client_key(str(getattr(self.getPeer(), "host", "")))
            refusal = self.factory.admit(client)
            if refusal is not None:
                self._refused = True
                relay_inside(self.wrappedProtocol).fail(refusal)
                count_refused(self.wrappedProtocol, data)
                return
            self._client = client
        self.wrappedProtocol.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:
        if self._client is not None:
            self.factory.release(self._client)
            self._client = None
        super().connectionLost(reason)


class LimitsFactory(WrappingFactory):
    """
    Wraps the relay's factory; keeps the count of connections served, in
    all and by client address.

    @ivar total: connections counted now.
    @ivar by_client: the same, by client address.
    """

    protocol = _CountedProtocol
    noisy = False

    def __init__(
        self, wrapped: Any, limits: ConnectionLimits | None = None, *, same_as: LimitsFactory | None = None
    ) -> None:
        super().__init__(wrapped)
        self.limits = limits if limits is not None else ConnectionLimits()
        self.total = 0
        self.by_client: Counter[str] = Counter()
        #: Another factory whose counts this one adds to (the HTTP side's
        #: tunnels count with the e-POP connections, against the same caps).
        self.same_as = same_as

    def admit(self, client: str) -> ProtocolError | None:
        """Count one more connection from C{client}, or say which cap it would exceed."""
        if self.same_as is not None:
            return self.same_as.admit(client)
        limits = self.limits
        if limits.total and self.total >= limits.total:
            return too_many(limits.total)
        if limits.per_client and self.by_client[client] >= limits.per_client:
            return too_many_from(client, limits.per_client)
        self.total += 1
        self.by_client[client] += 1
        return None

    def release(self, client: str) -> None:
        """One connection from C{client} has ended."""
        if self.same_as is not None:
            self.same_as.release(client)
            return
        self.total -= 1
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]
