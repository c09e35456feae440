"""
What every connection the relay serves shares, e-POP or HTTP: its number,
its client, its byte counts, and its two journal lines.

An e-POP session (L{epop.relay.protocol}) and an HTTP client of the relay as
an HTTPS proxy (L{epop.relay.http_proxy}) are journaled alike, so that
C{epop journal} and C{epop connections} read them the same way.  An HTTP
client's lines also say who it was (C{--tunnel-users}) and, when it is
closed, where it asked to go: what an administrator needs to tell a
mistyped proxy setting from a site that should be a C{--tunnel-to}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import LogLevel

from epop.addressing import format_peer, host_port
from epop.journal import events as journal
from epop.journal.table import outcome_label
from epop.messages import Text
from epop.printable import shown_peer_text

__all__ = ["JournaledConnection"]

#: The C{connection-closed} line, by whether it names a user and a destination.
_CLOSED = {
    (False, False): Text("Connection {connection} from {client} closed: {reason}"),
    (True, False): Text("Connection {connection} from {client} (user {user}) closed: {reason}"),
    (False, True): Text("Connection {connection} from {client} to {destination} closed: {reason}"),
    (True, True): Text("Connection {connection} from {client} (user {user}) to {destination} closed: {reason}"),
}


class JournaledConnection:
    """
    The journal's side of one connection.  Subclasses are protocols: they
    have a C{transport} and a C{log}, and call L{opened} once the peer is
    known for sure and L{journal_closed} when the connection is lost.

    @ivar lost: fires once the connection is closed and journaled.
    """

    log: Any
    transport: Any

    def __init__(self, relay_id: str, connection_id: int, clock: Any, language: str = "en") -> None:
        self.relay_id = relay_id
        #: The language of the connection's lines in the twistd log (C{--lang}).
        self.language = language
        self.connection_id = connection_id
        self.clock = clock
        self.client = "?"
        self.bytes_in = 0
        self.bytes_out = 0
        self.lost: Deferred[None] = Deferred()
        #: When the connection was made (its first byte reached the relay).
        self._opened = 0.0
        self._journaled = False
        self._close_reason: str | None = None
        self._close_error: str | None = None
        #: The user an HTTP client named (C{--tunnel-users}), once given:
        #: on each of its lines from then on.  Never its password.
        self.user: str | None = None
        #: Where an HTTP client asked to go (L{asked_for}), as journaled.
        self.destination: str | None = None

    def journal_event(self, event_type: str, format: str, **fields: Any) -> None:
        """
        Journal one of the connection's events; C{format} is an English
        template of the catalog, the twistd log's line is in the relay's
        language, with its outcome and reason codes as their labels.  A
        template, not a L{Text}: a connection's records carry no
        C{description_text}, and stay as they were.
        """
        if self.user is not None:
            fields.setdefault("user", self.user)
        journal.emit(
            self.log,
            self.relay_id,
            event_type,
            format,
            language=self.language,
            shown_as={
                key: outcome_label(fields[key]).render(self.language)
                for key in ("outcome", "reason")
                if fields.get(key) is not None
            },
            connection=self.connection_id,
            client=self.client,
            **fields,
        )

    def journal_released(self, format: str, *, outcome: str, **fields: Any) -> None:
        """An operation's last line: a warning unless it C{completed}."""
        self.journal_event(
            "object-released",
            format,
            level=LogLevel.info if outcome == "completed" else LogLevel.warn,
            outcome=outcome,
            **fields,
        )

    def opened(self) -> None:
        """
        Journal the connection's opening, once its peer is known for sure:
        behind a load balancer speaking the PROXY protocol, the real client's
        address is known only after the first bytes.
        """
        if self._journaled:
            return
        self._journaled = True
        self.client = format_peer(self.transport.getPeer())
        self.journal_event("connection-opened", Text("Connection {connection} opened from {client}").template)

    def ending_because(self, reason: str, error: str | None = None) -> None:
        """
        Why the connection is ending, from a layer around it that knows
        (TLS, the PROXY header), unless the relay already decided.
        """
        if self._close_reason is None:
            self._close_reason, self._close_error = reason, error

    def asked_for(self, host: str, port: int) -> None:
        """
        The destination the client asked for (a C{CONNECT}'s, or a proxy
        request's URL), allowed or not: on the C{connection-closed} line,
        escaped and bounded, as the client wrote it.
        """
        self.destination = shown_peer_text(host_port(host, port))

    def count_refused(self, data: bytes) -> None:
        """Bytes of a refused connection, never read: the journal counts them all the same."""
        self.bytes_in += len(data)

    def journal_closed(self) -> None:
        """The connection's last line, with its reason; then L{lost} fires."""
        asked = {} if self.destination is None else {"destination": self.destination}
        self.journal_event(
            "connection-closed",
            _CLOSED[self.user is not None, bool(asked)].template,
            duration=round(self.clock.seconds() - self._opened, 6),
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            reason=self._close_reason,
            **asked,
            **({"error": self._close_error} if self._close_error else {}),
        )
        self.lost.callback(None)
