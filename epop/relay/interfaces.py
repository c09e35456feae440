"""
What the layers around the relay's protocol may ask of it.

A workstation's connection passes through wrappers before it reaches the
e-POP protocol: the connection limits, the allowlist, the choice between
TLS and plain, TLS itself.  When one of them refuses the connection, or
knows why it ends, it tells the protocol through L{IRelaySession}, so that
the workstation gets an e-POP error and the journal one line, whoever
decided.  The wrappers know this interface, never the protocol's class.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Interface

from epop.errors import EpopError

__all__ = ["IRelaySession", "count_refused", "relay_inside"]


class IRelaySession(Interface):
    """The relay's side of one workstation connection, as its wrappers see it."""

    def fail(error: EpopError) -> None:
        """Send C{error} to the workstation and close: the connection cannot go on."""

    def ending_because(reason: str, error: str | None = None) -> None:
        """
        Why the connection is ending (the journal's C{reason}, and C{error}
        in a layer's own words), known to a layer around it (TLS, the PROXY
        header), unless the relay already decided.
        """

    def timeoutConnection() -> None:
        """The workstation sent nothing within the idle timeout: tell it, and close."""

    def count_refused(data: bytes) -> None:
        """
        Bytes that arrived on a refused connection, never to be read: count
        them in the journal's C{bytes_in} all the same.
        """


def relay_inside(protocol: Any) -> IRelaySession:
    """The relay's session inside the wrappers (allowlist, limits, TLS) around it."""
    while not IRelaySession.providedBy(protocol):
        protocol = protocol.wrappedProtocol
    session: IRelaySession = protocol
    return session


def count_refused(protocol: Any, data: bytes) -> None:
    """
    A refused connection's bytes are never read, but they arrived: count
    them in its journal line's C{bytes_in}.
    """
    relay_inside(protocol).count_refused(data)
