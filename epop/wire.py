"""
The e-POP wire format between a workstation and the relay.

Every message is a frame: one type byte, a 4-byte big-endian payload length,
then the payload.  Control frames carry a UTF-8 JSON object; C{DATA} frames
carry raw response bytes.  The one exception is a request body: after a
C{REQUEST} frame that declares C{length}, exactly that many raw bytes follow,
unframed, so the relay can pass them on without parsing them.  The full
specification is ``docs/protocol.md``.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from epop.errors import ProtocolError

__all__ = [
    "PROTOCOL_NAME",
    "PROTOCOL_VERSIONS",
    "FrameType",
    "Frame",
    "FrameReader",
    "MAX_BODY_LENGTH",
    "MAX_CONTROL_PAYLOAD",
    "MAX_DATA_PAYLOAD",
    "MAX_NESTING",
    "encode_frame",
    "encode_message",
    "frame_header",
]

PROTOCOL_NAME = "e-pop"
PROTOCOL_VERSIONS = (1,)

HEADER = struct.Struct(">BI")

#: Largest JSON payload: ample for a request line and its headers.
MAX_CONTROL_PAYLOAD = 64 * 1024
#: Largest DATA payload a reader accepts.
MAX_DATA_PAYLOAD = 1024 * 1024
#: Deepest nesting of arrays and objects in a control frame.  The frames of
#: this protocol need a few levels; the bound keeps a hostile frame from
#: making the JSON parser recurse thousands of levels deep.
MAX_NESTING = 32
#: Largest request body: the largest integer that every JSON reader holds
#: exactly (JavaScript's too), and that every HTTP server takes as a
#: Content-Length (many read it as a signed 64-bit number).
MAX_BODY_LENGTH = 2**53 - 1

#: A JSON string, closed or not: an unclosed one runs to the end, which
#: keeps the match linear whatever the payload.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+"?', re.DOTALL)
_BRACKETS_ONLY = bytes(b for b in range(256) if b not in b"[]{}")
_SQUARE = bytes.maketrans(b"{}", b"[]")


def nesting_exceeds(payload: bytes, limit: int = MAX_NESTING) -> bool:
    """
    Whether C{payload}, read as JSON, nests arrays and objects more than
    C{limit} levels deep.  A frame with no more than C{limit} opening
    brackets in all is not scanned; otherwise the work is a few passes of
    C-speed byte operations, never Python code per byte.

    Strings are removed, then only the brackets kept.  Each pass removes the
    innermost pairs, one level of nesting; after C{limit} passes a pair left
    means deeper nesting.  Unbalanced brackets (invalid JSON, refused by the
    parser anyway) are counted so that the parser never recurses more than
    twice C{limit} levels before it finds the mistake.
    """
    if payload.count(b"[") + payload.count(b"{") <= limit:
        return False
    if b'"' in payload:
        payload = _JSON_STRING.sub(b"", payload)
    brackets = payload.translate(_SQUARE, _BRACKETS_ONLY)
    for _ in range(limit):
        inner_removed = brackets.replace(b"[]", b"")
        if len(inner_removed) == len(brackets):
            break
        brackets = inner_removed
    return b"[]" in brackets or brackets.count(b"[") > limit


class FrameType(IntEnum):
    HELLO = 0x01
    WELCOME = 0x02
    REQUEST = 0x10
    BODY_END = 0x11
    CHECK = 0x12
    RESPONSE = 0x20
    DATA = 0x21
    RESPONSE_END = 0x22
    CHECK_RESULT = 0x23
    ERROR = 0x7F


_KNOWN = {int(kind) for kind in FrameType}


@dataclass(frozen=True)
class Frame:
    kind: FrameType
    payload: bytes

    def message(self) -> dict[str, Any]:
        """Decode a control frame's JSON object, or raise L{ProtocolError}."""
        name = self.kind.name
        try:
            text = self.payload.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError("bad-frame", f"{name} frame is not valid UTF-8: {e.reason} at byte {e.start}") from None
        if nesting_exceeds(self.payload):
            raise ProtocolError(
                "bad-frame",
                f"{name} frame nests arrays and objects more than {MAX_NESTING} levels deep",
            )
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProtocolError("bad-frame", f"{name} frame is not valid JSON: {e}") from None
        except ValueError:
            # Python refuses to read integers of more than 4300 digits.
            raise ProtocolError("bad-frame", f"{name} frame holds a number with too many digits") from None
        except RecursionError:
            # Not reached with the nesting bound above; kept as a safety net.
            raise ProtocolError(
                "bad-frame",
                f"{name} frame nests arrays and objects more than {MAX_NESTING} levels deep",
            ) from None
        if not isinstance(value, dict):
            raise ProtocolError(
                "bad-frame", f"{self.kind.name} frame must hold a JSON object"
            )
        return value


def frame_header(kind: FrameType, length: int) -> bytes:
    return HEADER.pack(kind, length)


def encode_frame(kind: FrameType, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def encode_message(kind: FrameType, message: dict[str, Any]) -> bytes:
    return encode_frame(kind, json.dumps(message, separators=(",", ":")).encode())


class FrameReader:
    """
    Incremental frame parser that can switch to raw bytes for a request body.

    C{feed} yields L{Frame}s and, while C{expect_raw} has bytes outstanding,
    raw C{bytes} chunks.  Raw bytes that arrive on their own are passed through
    without copying: that is the relay's hot path.

    @param peer: what the other end should be ("client" or "relay"), for
        the error that says it is not one.
    """

    def __init__(self, max_data: int = MAX_DATA_PAYLOAD, *, peer: str = "client") -> None:
        self._peer = peer
        self._buffer = bytearray()
        self._raw = 0
        self._max_data = max_data

    @property
    def raw_outstanding(self) -> int:
        return self._raw

    @property
    def pending(self) -> int:
        """Bytes held back: a partial frame, if the peer stopped mid-frame."""
        return len(self._buffer)

    def expect_raw(self, count: int) -> None:
        """The next C{count} bytes are a body, not frames."""
        self._raw = count

    def feed(self, data: bytes) -> Iterator[Frame | bytes]:
        if self._raw and not self._buffer:
            if len(data) <= self._raw:
                self._raw -= len(data)
                yield data
                return
            head = data[: self._raw]
            data = data[self._raw :]
            self._raw = 0
            yield head
        self._buffer += data
        while self._buffer:
            if self._raw:
                count = min(self._raw, len(self._buffer))
                chunk = bytes(self._buffer[:count])
                del self._buffer[:count]
                self._raw -= count
                yield chunk
                continue
            if len(self._buffer) < HEADER.size:
                return
            kind, length = HEADER.unpack_from(self._buffer)
            if kind not in _KNOWN:
                raise ProtocolError(
                    "bad-frame",
                    f"unknown frame type 0x{kind:02x}: this is not an e-POP {self._peer}",
                )
            limit = self._max_data if kind == FrameType.DATA else MAX_CONTROL_PAYLOAD
            if length > limit:
                raise ProtocolError(
                    "frame-too-large",
                    f"{FrameType(kind).name} frame of {length} bytes exceeds "
                    f"the limit of {limit} bytes",
                )
            end = HEADER.size + length
            if len(self._buffer) < end:
                return
            payload = bytes(self._buffer[HEADER.size : end])
            del self._buffer[:end]
            yield Frame(FrameType(kind), payload)
