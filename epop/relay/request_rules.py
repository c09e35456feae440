"""
What the relay accepts in a REQUEST frame, and what it passes back of
e-PMSI's answer: the workstation chooses the method, path and its own
headers, never where the request goes nor how it is framed.

They are data and one function, apart from the protocol's states, so that
each rule is written once and can be read (and tested) without a
connection; C{docs/protocol.md} section 5.1 lists them.
"""

from __future__ import annotations

import re
from typing import Any

from epop.errors import ProtocolError, excerpt
from epop.wire import MAX_BODY_LENGTH

__all__ = [
    "ALLOWED_METHODS",
    "FORBIDDEN_HEADERS",
    "HOP_BY_HOP",
    "MAX_HEADERS",
    "MAX_PATH",
    "parse_request",
]

ALLOWED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

#: Headers the relay owns: framing, hop-by-hop and proxy headers.
FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)

#: Response headers that describe e-PMSI's connection, not the answer.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
     "proxy-authenticate", "proxy-connection"}
)

MAX_HEADERS = 100
MAX_PATH = 8192
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PATH = re.compile(r"/[\x21-\x7e]*")
#: Header values: visible Latin-1 characters, spaces and tabs (RFC 9110 field-value).
_VALUE = re.compile(r"[\t\x20-\x7e\xa0-\xff]*")


def parse_request(message: dict[str, Any]) -> tuple[str, str, list[tuple[str, str]], int]:
    """Validate a REQUEST frame: the client chooses the path, nothing else."""
    method = message.get("method")
    path = message.get("path")
    headers = message.get("headers", [])
    length = message.get("length")
    if not isinstance(method, str) or method not in ALLOWED_METHODS:
        raise ProtocolError(
            "bad-request",
            f"method '{excerpt(method)}' is not relayed; use one of {', '.join(sorted(ALLOWED_METHODS))}",
        )
    if not isinstance(path, str) or len(path) > MAX_PATH or not _PATH.fullmatch(path):
        raise ProtocolError(
            "bad-request",
            "path must start with '/' and hold only printable ASCII without spaces",
        )
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise ProtocolError("bad-request", "length must be a whole number of bytes, 0 or more")
    if length > MAX_BODY_LENGTH:
        raise ProtocolError("bad-request", f"length must be at most {MAX_BODY_LENGTH} bytes")
    if not isinstance(headers, list) or len(headers) > MAX_HEADERS:
        raise ProtocolError("bad-request", f"headers must be a list of at most {MAX_HEADERS} pairs")
    checked: list[tuple[str, str]] = []
    for pair in headers:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(item, str) for item in pair)
        ):
            raise ProtocolError("bad-request", "each header must be a [name, value] pair of strings")
        name, value = pair
        if not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            raise ProtocolError("bad-request", f"invalid header '{excerpt(name)}'")
        if name.lower() in FORBIDDEN_HEADERS:
            raise ProtocolError("bad-request", f"header '{excerpt(name)}' is set by the relay, not the client")
        checked.append((name, value))
    return method, path, checked, length

