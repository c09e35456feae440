"""
Errors that reach a person, each with a stable code.

The code travels on the wire (see ``docs/protocol.md``) and in the journal, so
programs can react to it; the message is for the person who caused the error
and says what to check.  Classifying low-level failures lives here, in one
place, so the relay, the client and the start-up check all speak alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet import error as netError
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseFailed,
)

from epop.messages import Text

__all__ = [
    "EpopError",
    "ProtocolError",
    "RelayCannotStart",
    "RelayError",
    "RelayTLSFailure",
    "UpstreamError",
    "describe_destination_failure",
    "describe_upstream_failure",
    "describe_connect_failure",
    "describe_relay_tls_failure",
    "excerpt",
    "relay_speaks_no_tls",
    "relay_without_tls",
]

#: Characters of a client's input that a message may echo back.
EXCERPT_LENGTH = 40


def excerpt(value: object, limit: int = EXCERPT_LENGTH) -> str:
    """
    A short, harmless rendering of something a client sent, for a message
    that quotes it: printable ASCII only (anything else becomes C{?}), at
    most C{limit} characters, with C{...} when cut.  A message must never
    carry a client's escape sequences or line breaks, nor grow with its
    input.
    """
    if isinstance(value, str):
        text = value[: limit + 1]
    else:
        try:
            text = json.dumps(value, default=repr)[: limit + 1]
        except (ValueError, TypeError, RecursionError):
            text = type(value).__name__
    shown = "".join(c if " " <= c <= "~" else "?" for c in text[:limit])
    return shown + "..." if len(text) > limit else shown


class EpopError(Exception):
    """
    A failure with a stable C{code} and a message for a person.

    @ivar code: a short kebab-case identifier, stable across versions.
    @ivar text: what happened and what to check, in plain words, as a
        L{Text} that renders in French or English.
    @ivar cause: for failures with a lower-level origin (refused, timeout,
        dns, tls...), which one; C{None} otherwise.
    """

    def __init__(self, code: str, message: Text | str, cause: str | None = None) -> None:
        self.text = message if isinstance(message, Text) else Text.literal(message)
        super().__init__(code, str(self.text), cause)
        self.code = code
        self.cause = cause

    @property
    def message(self) -> str:
        """The message in English."""
        return str(self.text)

    def render(self, language: str = "en") -> str:
        return self.text.render(language)

    def __str__(self) -> str:
        return self.message

    def to_wire(self) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "text": self.text.to_wire(),
        }
        if self.cause is not None:
            frame["cause"] = self.cause
        return frame


class ProtocolError(EpopError):
    """The peer broke the e-POP protocol; the connection cannot go on."""


class RelayError(EpopError):
    """The relay answered an operation with an error frame."""

    @classmethod
    def from_wire(cls, frame: dict[str, object]) -> "RelayError":
        cause = frame.get("cause")
        message = str(frame.get("message", "the relay reported an error"))
        return cls(
            str(frame.get("code", "unknown")),
            Text.from_wire(frame["text"], message) if "text" in frame else message,
            str(cause) if cause is not None else None,
        )


class UpstreamError(EpopError):
    """e-PMSI could not be reached, with the reason why."""


@dataclass(frozen=True)
class _Cause:
    cause: str
    text: Text


def _reasons(failure: Failure) -> list[Failure]:
    """
    Unwrap Twisted's web client wrappers (C{ResponseNeverReceived} and
    friends carry a list of the real reasons).
    """
    wrappers = (ResponseFailed, RequestTransmissionFailed, RequestGenerationFailed)
    wrapped = getattr(failure.value, "reasons", None)
    if isinstance(failure.value, wrappers) and wrapped:
        found: list[Failure] = []
        for reason in wrapped:
            found.extend(_reasons(reason))
        return found
    return [failure]


def _openssl_words(error: BaseException) -> str:
    """OpenSSL's own words for a failure (kept in English: they are its)."""
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        parts = [str(item[-1]) for item in error.args[0] if item and item[-1]]
        return ", ".join(parts) or "handshake failed"
    return str(error) or type(error).__name__


def _tls_text(error: BaseException) -> Text:
    """Say in words what OpenSSL or service_identity disliked."""
    from service_identity import VerificationError

    if isinstance(error, VerificationError):
        return Text("the certificate does not match the host name")
    words = _openssl_words(error)
    if "certificate verify failed" in words:
        return Text(
            "the certificate could not be verified: it is signed by an unknown "
            "authority, or has expired ({detail})",
            detail=words,
        )
    return Text.literal(words)


def _classify(failure: Failure, *, timeout: float | None = None) -> _Cause:
    from service_identity import VerificationError

    for reason in _reasons(failure):
        value = reason.value
        if isinstance(value, (SSL.Error, VerificationError)):
            return _Cause("tls", Text("TLS failed: {why}", why=_tls_text(value)))
    value = _reasons(failure)[0].value
    if isinstance(value, netError.DNSLookupError):
        return _Cause("dns", Text("host name not found"))
    if isinstance(value, netError.ConnectionRefusedError):
        return _Cause("refused", Text("connection refused: nothing listens there"))
    if isinstance(value, (netError.TimeoutError, netError.TCPTimedOutError, defer.TimeoutError)):
        if timeout:
            return _Cause("timeout", Text("no answer in time ({seconds} s)", seconds=f"{timeout:g}"))
        return _Cause("timeout", Text("no answer in time"))
    if isinstance(value, (netError.NoRouteError,)):
        return _Cause("no-route", Text("no route to that address"))
    if isinstance(value, (netError.ConnectionLost, netError.ConnectionDone)):
        return _Cause("connection-lost", Text("the connection was closed before an answer"))
    if isinstance(value, netError.ConnectError):
        return _Cause(
            "connect", Text("could not connect: {why}", why=str(value) or "unknown reason")
        )
    return _Cause("error", Text.literal(str(value) or type(value).__name__))


def describe_upstream_failure(
    failure: Failure, url: str, *, timeout: float | None = None
) -> UpstreamError:
    """
    Turn a failed request to e-PMSI into an L{UpstreamError} that names its
    cause (C{refused}, C{timeout}, C{dns}, C{tls}, ...).
    """
    return _unreachable(
        failure,
        timeout,
        lambda reason: Text("Could not reach e-PMSI at {url}: {reason}.", url=url, reason=reason),
    )


def describe_destination_failure(
    failure: Failure, destination: str, *, timeout: float | None = None
) -> UpstreamError:
    """
    A tunnel's destination could not be reached: the causes of
    L{describe_upstream_failure}, in words that name the destination tried
    (C{host:port}), which may be ATIH's sign-in host or a C{--tunnel-to}
    rather than e-PMSI.
    """
    return _unreachable(
        failure,
        timeout,
        lambda reason: Text("Could not reach {destination}: {reason}.", destination=destination, reason=reason),
    )


def _unreachable(
    failure: Failure, timeout: float | None, saying: Callable[[Text], Text]
) -> UpstreamError:
    """An L{UpstreamError} already made (the proxy's refusal) as it is; else the cause, as C{saying} puts it."""
    for reason in _reasons(failure):
        if isinstance(reason.value, UpstreamError):
            return reason.value
    found = _classify(failure, timeout=timeout)
    return UpstreamError("epmsi-unreachable", saying(found.text), found.cause)


def _speaks_no_tls(error: BaseException) -> bool:
    """OpenSSL's words for plain bytes where a TLS record was due: the relay has no certificate."""
    lowered = _openssl_words(error).lower()
    return any(s in lowered for s in ("wrong version number", "packet length too long", "record layer failure"))


def relay_speaks_no_tls(failure: Failure) -> bool:
    """The relay answered a TLS handshake in plain: it runs without a certificate."""
    return any(isinstance(reason.value, SSL.Error) and _speaks_no_tls(reason.value) for reason in _reasons(failure))


def describe_relay_tls_failure(failure: Failure, where: str) -> EpopError | None:
    """
    When a connection to the relay broke during TLS, say why in words:
    a relay without TLS, a certificate that does not verify, a relay that
    wants a client certificate.  C{None} when TLS was not the reason.
    """
    from service_identity import VerificationError

    for reason in _reasons(failure):
        value = reason.value
        if not isinstance(value, (SSL.Error, VerificationError)):
            continue
        lowered = _openssl_words(value).lower()
        if _speaks_no_tls(value):
            return RelayTLSFailure(where, "no-tls", relay_without_tls(where))
        if "certificate required" in lowered or "handshake failure" in lowered:
            message = Text(
                "The relay at {where} refused the TLS session: it requires a client "
                "certificate signed by its authority (--tls-client-cert and --tls-client-key).",
                where=where,
            )
            return RelayTLSFailure(where, "client-certificate", message)
        message = Text(
            "TLS with the relay at {where} failed: {why}.", where=where, why=_tls_text(value)
        )
        unverified = "certificate verify failed" in lowered
        return RelayTLSFailure(where, "unverified" if unverified else "other", message)
    return None


class RelayTLSFailure(EpopError):
    """
    The TLS handshake with the relay failed (code C{relay-tls}, cause
    C{tls}), and which way: the workstation's settings may then say more
    (L{epop.local_tls.ClientTLS.explain}).

    @ivar kind: C{"no-tls"} (the relay answered in plain),
        C{"client-certificate"} (it wants one), C{"unverified"} (its
        certificate did not verify), or C{"other"}.
    """

    def __init__(self, where: str, kind: str, message: Text) -> None:
        super().__init__("relay-tls", message, "tls")
        self.where = where
        self.kind = kind


def relay_without_tls(where: str, saved_in: str | None = None) -> Text:
    """
    What to say of a relay that does not speak TLS, when TLS was asked by
    C{--tls}, or by C{tls = yes} in the saved settings file C{saved_in}:
    a person who typed no C{--tls} must learn where it came from.
    """
    if saved_in is None:
        return Text(
            "The relay at {where} does not speak TLS: connect without --tls, "
            "or ask its administrator to turn encryption on (twistd epop --tls-cert auto).",
            where=where,
        )
    return Text(
        "The relay at {where} does not speak TLS: connect without TLS (tls = yes in the saved "
        "settings {path}: epop config set tls no), or ask its administrator to turn encryption "
        "on (twistd epop --tls-cert auto).",
        where=where,
        path=saved_in,
    )


def describe_connect_failure(
    failure: Failure, where: str, *, timeout: float | None = None
) -> EpopError:
    """
    Turn a failed connection to the relay into an L{EpopError} that tells the
    person what to check, as the original manual did for its three cases.
    """
    if isinstance(failure.value, EpopError):
        return failure.value
    found = _classify(failure, timeout=timeout)
    hints = {
        "timeout": Text("No machine answered at that address: check the address."),
        "refused": Text(
            "Is the relay started and listening? Is the port the same on both "
            "sides? Is a firewall blocking it?"
        ),
        "dns": Text("Check the relay's name, or use its IP address."),
    }
    hint = hints.get(found.cause)
    if hint is None:
        text = Text("Could not reach the relay at {where}: {reason}.", where=where, reason=found.text)
    else:
        text = Text(
            "Could not reach the relay at {where}: {reason}. {hint}",
            where=where,
            reason=found.text,
            hint=hint,
        )
    return EpopError("relay-unreachable", text, found.cause)


class RelayCannotStart(SystemExit, Exception):
    """
    The relay cannot start (a port it cannot bind): twistd must exit non-zero
    with this one line and no traceback, in the foreground and as a daemon.

    Both a L{SystemExit} and an L{Exception}, because twistd reacts to each
    in a different place: as an C{Exception}, its
    C{UnixApplicationRunner.postApplication} sends the reason through the
    status pipe to the terminal that started a daemon, removes the pid file
    and re-raises; as a C{SystemExit}, the process then exits with status 1
    printing nothing more.  A plain C{SystemExit} skips the first step: a
    daemon's parent then waits for ever, and the pid file stays.

    Its text is short, because twistd passes a daemon's parent only the first
    100 bytes.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        # Exit status 1; the reason is already in the log and on the terminal.
        self.code = 1


# twistd hands a daemon's parent only the first 100 bytes of
# "module.Class: reason": the public name, epop.RelayCannotStart, leaves the
# reason the room it needs ("... Address already in use").
RelayCannotStart.__module__ = "epop"
