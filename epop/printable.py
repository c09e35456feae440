"""
Text that is safe to print, whatever a peer managed to put in it.

A workstation's address can come from a PROXY-protocol header, a path from
its C{REQUEST}: bytes chosen by whoever is on the other side.  Printed as
they are, an escape sequence drives the reader's terminal, a newline forges
a log line, and a right-to-left override (U+202E) shows text other than
what is there.  Everything that shows such a value to a person (the relay's
log lines and the journal's C{description}, C{epop journal}, C{epop
connections}) passes it through L{printable}; everything that prints JSON
uses L{safe_json}, so that even a raw C{cat} of the journal is harmless.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["SHOWN_LENGTH", "UNSAFE", "printable", "safe_json", "shown_peer_text"]

#: What a terminal or an editor acts on instead of showing: C0 controls,
#: DEL, C1 controls, the line and paragraph separators, the bidirectional
#: marks (U+061C, U+200E, U+200F), embeddings and overrides (U+202A to
#: U+202E) and isolates (U+2066 to U+2069); also the invisible characters
#: that can hide or split text (zero-width spaces and joiners, word joiner,
#: byte order mark, interlinear annotations), and lone surrogates, which
#: cannot even be encoded to UTF-8.
UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f"
    "\ufeff\ufff9-\ufffb\ud800-\udfff]"
)


#: Characters of a peer's text (a server name, a destination) the journal keeps.
SHOWN_LENGTH = 255

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """
    C{text} with every L{UNSAFE} character written out visibly, as Python
    writes it in a string literal: C{\\x1b}, C{\\n}, C{\\u202e}.  Everything
    else, accented letters included, stays as it is.
    """
    return UNSAFE.sub(_escape, text)


def shown_peer_text(text: str, limit: int = SHOWN_LENGTH) -> str:
    """
    Bytes a peer sent (decoded as latin-1), as the journal keeps them: ASCII
    as it is, a backslash doubled, other bytes escaped (C{\\xff},
    C{\\n}), cut at C{limit} characters with C{...}, so that what a
    client typed can neither pass for something else nor fill the journal.
    """
    escaped = text.replace("\\", "\\\\").encode("latin-1", "backslashreplace").decode("ascii", "backslashreplace")
    shown = printable(escaped)
    return shown[:limit] + "..." if len(shown) > limit else shown


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match[0]):04x}"


def safe_json(value: Any) -> str:
    """
    C{value} as compact JSON on one line: non-ASCII text as it is, but the
    L{UNSAFE} characters that JSON allows raw in a string written as
    C{\\uXXXX} escapes.  The value read back is the same.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    # Outside its strings JSON is plain ASCII, so every match is inside a
    # string, where an escape stands for the very same character.
    return UNSAFE.sub(_json_escape, text)
