"""
One HTTP/1.1 request head, read from a client that took the relay for an
HTTP proxy.

The relay reads the head only to learn where a CONNECT tunnel should go
(and the client's language, for a refusal): at most L{MAX_HEAD} bytes, and
nothing after it, which belongs to the tunnel.  A head that does not parse
is a L{BadHead} carrying the HTTP status to answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from epop.messages import language_of

__all__ = ["MAX_HEAD", "BadHead", "HeadReader", "RequestHead", "language_of", "url_destination"]

#: Largest request head read; past it the client gets 431.
MAX_HEAD = 8 * 1024

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^ \x00-\x1f\x7f]+) HTTP/1\.([01])")
_HEADER = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")


class BadHead(ValueError):
    """A head the relay cannot take: C{status} 400 or 431."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass(frozen=True)
class RequestHead:
    """A request line and its headers (names in lower case)."""

    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


class HeadReader:
    """Takes bytes until a whole head is in; then the head and what followed it."""

    def __init__(self, limit: int = MAX_HEAD) -> None:
        self.limit = limit
        self._buffer = b""

    def feed(self, data: bytes) -> tuple[RequestHead, bytes] | None:
        """
        The head and the bytes after it once the head is whole, else C{None}.

        @raise BadHead: the head is too long or does not parse.
        """
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > self.limit:
                raise BadHead(431, f"request head longer than {self.limit} bytes")
            # A stray LF-only head would never end: it cannot be HTTP/1.1.
            if b"\n\n" in self._buffer:
                raise BadHead(400, "lines must end with CRLF")
            return None
        if end + 4 > self.limit:
            raise BadHead(431, f"request head longer than {self.limit} bytes")
        head, rest = self._buffer[:end], self._buffer[end + 4 :]
        self._buffer = b""
        return parse_head(head), rest


def parse_head(head: bytes) -> RequestHead:
    """Parse a head without its final blank line. @raise BadHead: (400) it is not HTTP."""
    lines = head.split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise BadHead(400, "not an HTTP/1.1 request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        found = _HEADER.fullmatch(line)
        if found is None:
            raise BadHead(400, "malformed header line")
        name = found.group(1).decode("ascii").lower()
        value = found.group(2).decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return RequestHead(match.group(1).decode("ascii"), match.group(2).decode("latin-1"), headers)


def url_destination(target: str) -> tuple[str, int] | None:
    """
    The host and port of a proxy request's URL (C{GET http://host/...}),
    the scheme's port by default; never its user, password, path or query.
    C{None} if it names no host, or a port that is not one.
    """
    try:
        url = urlsplit(target)
        port = url.port
    except ValueError:
        return None
    scheme = url.scheme.lower()
    if scheme not in ("http", "https") or not url.hostname:
        return None
    return url.hostname, port if port is not None else (443 if scheme == "https" else 80)
