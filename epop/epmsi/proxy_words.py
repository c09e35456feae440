"""
What a proxy says in the body of its refusal of a CONNECT, made safe to show.

A proxy that refuses a tunnel often says why in its answer's body: the
e-POP relay's CONNECT mode names the workstation outside its allowlist, the
destinations it serves, or why e-PMSI could not be reached, in the
workstation's language.  Those words are more useful than a guess from the
status code, so L{epop.epmsi.tunnel} reads them, but only when they are
short plain text: HTML error pages (squid's) are no sentence to quote, and a
body that is huge or never ends must not hold the workstation.
"""

from __future__ import annotations

from epop.printable import printable

__all__ = ["MAX_BODY", "MAX_SHOWN", "body_to_read", "proxy_words"]

#: Largest refusal body read; a longer one is not read at all (or, without
#: C{Content-Length}, only this much of it).
MAX_BODY = 4 * 1024

#: Most characters of the proxy's words shown, escapes included.
MAX_SHOWN = 300


def _headers(head: bytes) -> dict[str, str]:
    """The answer's header fields after its status line, by lowercase name (last one wins)."""
    fields: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            fields[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return fields


def _media_type(head: bytes) -> tuple[str, str | None]:
    """The C{Content-Type}'s media type (lowercase) and its charset parameter, if any."""
    media, *parameters = _headers(head).get("content-type", "").split(";")
    charset = None
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"') or None
    return media.strip().lower(), charset


def body_to_read(head: bytes) -> tuple[int, bool] | None:
    """
    How much of the refusal's body to read: C{(size, exact)}, C{exact} when
    C{Content-Length} says the size, otherwise up to C{size} bytes until the
    proxy closes; C{None} when the body is not worth reading (not
    C{text/plain}, chunked, or over L{MAX_BODY}).
    """
    fields = _headers(head)
    if _media_type(head)[0] != "text/plain" or "transfer-encoding" in fields:
        return None
    length = fields.get("content-length")
    if length is None:
        return MAX_BODY, False
    if not length.isdigit() or int(length) > MAX_BODY:
        return None
    return int(length), True


def proxy_words(head: bytes, body: bytes) -> str | None:
    """
    The body's text on one line, its control and invisible characters
    escaped (L{printable}), cut at L{MAX_SHOWN} characters; C{None} if it
    says nothing.
    """
    try:
        text = body.decode(_media_type(head)[1] or "utf-8", errors="replace")
    except LookupError:  # an unknown charset, or one that is not text (base64)
        text = body.decode("utf-8", errors="replace")
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    if not text:
        return None
    shown: list[str] = []
    size = 0
    for char in text:
        escaped = printable(char)
        if size + len(escaped) > MAX_SHOWN:
            shown.append("…")
            break
        shown.append(escaped)
        size += len(escaped)
    return "".join(shown)
