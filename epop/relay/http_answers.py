"""
Every answer the relay's HTTP side gives short of a tunnel: its status, the
journal's reason, and its words in the client's language.

They live apart from the session (L{epop.relay.http_proxy}) so that what an
application is told can be read, and reviewed, in one place; and so that
the docs' table of answers (C{docs/applications.md}) has one source.
"""

from __future__ import annotations

from epop.addressing import host_port
from epop.errors import EpopError
from epop.messages import Text
from epop.relay.destinations import Destination, Destinations

__all__ = [
    "Refusal",
    "as_refusal",
    "bad_connect",
    "bad_request",
    "credentials_missing",
    "credentials_unchecked",
    "credentials_wrong",
    "destination_not_allowed",
    "encode_answer",
    "failed_to_connect",
    "head_too_large",
    "head_too_slow",
    "method_not_allowed",
    "no_request",
    "not_a_tunnel",
    "resolves_locally",
    "tunnels_disabled",
]

_PHRASES = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

#: The status of an error a wrapper or the relay decided, by its code.
_STATUS_OF_CODE = {
    "not-authorized": 403,
    "too-many-connections": 503,
    "too-many-connections-from-client": 503,
    "too-many-silent-connections": 503,
    "relay-stopping": 503,
    "idle-timeout": 408,
    "hello-timeout": 408,
}

#: What a 405 says the relay's port takes: tunnels, and its page and PAC file.
_ALLOWED_METHODS = "Allow: CONNECT, GET, HEAD\r\n"

#: What a 407 asks for (RFC 7617): Basic, its user name and password in UTF-8.
_ASK_FOR_CREDENTIALS = 'Proxy-Authenticate: Basic realm="e-POP relay", charset="UTF-8"\r\n'


class Refusal(EpopError):
    """A refusal of the HTTP side: an HTTP status with the journal's reason."""

    def __init__(
        self, status: int, code: str, text: Text, cause: str | None = None, headers: str = ""
    ) -> None:
        super().__init__(code, text, cause)
        self.status = status
        #: More header lines for the answer, each ending with CRLF.
        self.headers = headers

    def encode(self, language: str) -> bytes:
        """The whole answer, its body in C{language}."""
        body = (self.render(language) + "\n").encode("utf-8")
        return encode_answer(self.status, "text/plain; charset=utf-8", body, self.headers)


def encode_answer(
    status: int, content_type: str, body: bytes, extra: str = "", *, with_body: bool = True
) -> bytes:
    """One whole HTTP/1.1 answer after which the relay closes (C{extra}: more header lines)."""
    head = (
        f"HTTP/1.1 {status} {_PHRASES[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    return head + body if with_body else head


def as_refusal(error: EpopError) -> Refusal:
    """An error decided elsewhere (allowlist, caps, drain) as an HTTP answer."""
    if isinstance(error, Refusal):
        return error
    return Refusal(_STATUS_OF_CODE.get(error.code, 400), error.code, error.text, error.cause)


def _destinations_text(destinations: Destinations) -> Text:
    return Text(
        "This relay only opens HTTPS tunnels to e-PMSI: {destinations}.",
        destinations=destinations.describe(),
    )


# The request head.


def no_request() -> Refusal:
    return Refusal(408, "idle-timeout", Text("No request arrived in time."))


def head_too_slow(seconds: float) -> Refusal:
    return Refusal(
        408,
        "hello-timeout",
        Text("The request head did not arrive whole within {seconds} s.", seconds=f"{seconds:g}"),
    )


def head_too_large(limit: int) -> Refusal:
    return Refusal(431, "http-head-too-large", Text("The request head is over {limit} bytes.", limit=limit))


def bad_request() -> Refusal:
    return Refusal(400, "http-bad-request", Text("This is not an HTTP/1.1 request this relay can read."))


# What the request asks for.


def tunnels_disabled() -> Refusal:
    return Refusal(
        403, "tunnels-disabled", Text("This e-POP relay does not act as an HTTPS proxy (--no-tunnel).")
    )


def bad_connect() -> Refusal:
    return Refusal(400, "http-bad-request", Text("CONNECT needs a host and a port (HOST:PORT)."))


def destination_not_allowed(host: str, port: int, destinations: Destinations) -> Refusal:
    return Refusal(
        403,
        "destination-not-allowed",
        Text(
            "{destination} is not a destination of this relay. {allowed}",
            destination=host_port(host, port),
            allowed=_destinations_text(destinations),
        ),
    )


def not_a_tunnel(destinations: Destinations) -> Refusal:
    return Refusal(
        403,
        "not-a-tunnel",
        Text(
            "This relay does not fetch web pages. {allowed}",
            allowed=_destinations_text(destinations),
        ),
    )


def method_not_allowed(destinations: Destinations) -> Refusal:
    return Refusal(
        405,
        "http-method-not-allowed",
        Text(
            "This is an e-POP relay: use it as an HTTPS proxy (CONNECT) for e-PMSI. {allowed}",
            allowed=_destinations_text(destinations),
        ),
        headers=_ALLOWED_METHODS,
    )


# The credentials (--tunnel-users).


def _ask_for_credentials(code: str, text: Text) -> Refusal:
    return Refusal(407, code, text, headers=_ASK_FOR_CREDENTIALS)


def credentials_missing() -> Refusal:
    return _ask_for_credentials(
        "tunnel-credentials-missing",
        Text(
            "This relay asks for a user name and password: set them in the "
            "proxy settings of the application (or let the browser ask for them)."
        ),
    )


def credentials_wrong() -> Refusal:
    return _ask_for_credentials(
        "tunnel-credentials-wrong",
        Text(
            "The user name or password for this relay is wrong: check them in the "
            "proxy settings of the application, or ask the relay's administrator."
        ),
    )


def credentials_unchecked() -> Refusal:
    return Refusal(
        503,
        "tunnel-credentials-unchecked",
        Text("The relay could not check the user name and password: try again later."),
    )


# The destination.


def resolves_locally(destination: Destination, address: str) -> Refusal:
    return Refusal(
        502,
        "destination-resolves-locally",
        Text(
            "{destination} resolves to {address}, an address of this machine "
            "or its local link: the relay does not tunnel there.",
            destination=str(destination),
            address=address,
        ),
    )


def failed_to_connect(error: EpopError) -> Refusal:
    """The destination (or the hospital's proxy) could not be reached: 504 for a timeout, else 502."""
    timed_out = error.cause in ("timeout", "proxy-timeout")
    return Refusal(
        504 if timed_out else 502,
        "tunnel-timeout" if timed_out else "tunnel-unreachable",
        error.text,
        error.cause or error.code,
    )
