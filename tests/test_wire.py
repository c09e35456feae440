"""Tests for L{epop.wire}: framing, limits and the raw body mode."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from epop.errors import ProtocolError
from epop.wire import (
    MAX_CONTROL_PAYLOAD,
    Frame,
    FrameReader,
    FrameType,
    encode_frame,
    encode_message,
    nesting_exceeds,
)


class FrameReaderTests(SynchronousTestCase):
    def test_round_trip_byte_by_byte(self) -> None:
        """Frames split at every byte boundary come out whole and in order."""
        data = encode_message(FrameType.HELLO, {"a": 1}) + encode_frame(FrameType.DATA, b"xyz")
        reader = FrameReader()
        out: list[Frame | bytes] = []
        for i in range(len(data)):
            out.extend(reader.feed(data[i : i + 1]))
        self.assertEqual(
            out,
            [Frame(FrameType.HELLO, b'{"a":1}'), Frame(FrameType.DATA, b"xyz")],
        )
        self.assertEqual(out[0].message(), {"a": 1})
        self.assertEqual(reader.pending, 0)

    def test_raw_bytes_pass_through_uncopied(self) -> None:
        """In raw mode, a chunk that is all body is handed on as the same object."""
        reader = FrameReader()
        reader.expect_raw(10)
        chunk = b"0123456789"
        [out] = list(reader.feed(chunk))
        self.assertIs(out, chunk)
        self.assertEqual(reader.raw_outstanding, 0)

    def test_raw_then_frame_in_one_chunk(self) -> None:
        """Body bytes and the frame after them, in one read, are told apart."""
        reader = FrameReader()
        reader.expect_raw(4)
        trailer = encode_message(FrameType.BODY_END, {"sha256": "00"})
        out = list(reader.feed(b"body" + trailer))
        self.assertEqual(out, [b"body", Frame(FrameType.BODY_END, trailer[5:])])

    def test_frame_then_raw_in_one_chunk(self) -> None:
        """A REQUEST and the start of its body in one read: the reader switches mid-chunk."""
        reader = FrameReader()
        request = encode_message(FrameType.REQUEST, {"length": 6})
        out = []
        for item in reader.feed(request + b"abc"):
            out.append(item)
            if isinstance(item, Frame):
                reader.expect_raw(6)
        out.extend(reader.feed(b"def"))
        self.assertEqual(out[1:], [b"abc", b"def"])

    def test_unknown_type(self) -> None:
        """Bytes that are not a frame type (plain text, TLS...) are refused at once."""
        reader = FrameReader()
        with self.assertRaises(ProtocolError) as caught:
            list(reader.feed(b"GET / HTTP/1.1\r\n"))
        self.assertEqual(caught.exception.code, "bad-frame")

    def test_oversized_control_frame(self) -> None:
        """A control frame's declared size is checked before waiting for it."""
        reader = FrameReader()
        header = bytes([FrameType.REQUEST]) + (MAX_CONTROL_PAYLOAD + 1).to_bytes(4, "big")
        with self.assertRaises(ProtocolError) as caught:
            list(reader.feed(header))
        self.assertEqual(caught.exception.code, "frame-too-large")

    def test_data_frames_have_their_own_limit(self) -> None:
        """DATA frames may exceed the control limit, up to the reader's own."""
        reader = FrameReader(max_data=MAX_CONTROL_PAYLOAD * 2)
        payload = b"x" * (MAX_CONTROL_PAYLOAD + 1)
        [frame] = list(reader.feed(encode_frame(FrameType.DATA, payload)))
        self.assertEqual(frame.payload, payload)

    def test_bad_json(self) -> None:
        """A control payload that is not a JSON object is a protocol error."""
        for payload in (b"{", b"[1]", b"\xff"):
            with self.assertRaises(ProtocolError) as caught:
                Frame(FrameType.HELLO, payload).message()
            self.assertEqual(caught.exception.code, "bad-frame")

    def test_partial_frame_is_pending(self) -> None:
        """A truncated frame stays pending, so the relay can say it was truncated."""
        reader = FrameReader()
        self.assertEqual(list(reader.feed(encode_message(FrameType.HELLO, {})[:3])), [])
        self.assertEqual(reader.pending, 3)


class ControlPayloadTests(SynchronousTestCase):
    """What a control frame's payload may hold: every refusal is a C{bad-frame}."""

    def refused(self, payload: bytes) -> str:
        with self.assertRaises(ProtocolError) as caught:
            Frame(FrameType.REQUEST, payload).message()
        self.assertEqual(caught.exception.code, "bad-frame")
        return caught.exception.message

    def test_deep_nesting(self) -> None:
        """30,000 nested brackets are refused before the parser recurses."""
        for payload in (b"[" * 30_000, b"[" * 30_000 + b"]" * 30_000, b'{"a":' * 20_000):
            self.assertEqual(
                self.refused(payload), "REQUEST frame nests arrays and objects more than 32 levels deep"
            )

    def test_nesting_bound(self) -> None:
        """32 levels are accepted, 33 are not; brackets inside strings do not count."""
        deepest = b'{"a":' + b"[" * 31 + b"]" * 31 + b"}"
        self.assertEqual(Frame(FrameType.REQUEST, deepest).message(), {"a": json.loads(b"[" * 31 + b"]" * 31)})
        self.refused(b'{"a":' + b"[" * 32 + b"]" * 32 + b"}")
        quoted = b'{"a":"' + b"[" * 100 + b'\\"' + b"{" * 100 + b'"}'
        self.assertEqual(Frame(FrameType.REQUEST, quoted).message(), {"a": "[" * 100 + '"' + "{" * 100})

    def test_nesting_counts_unclosed_brackets(self) -> None:
        """Unbalanced brackets cannot hide depth: an unclosed run is counted too."""
        self.assertTrue(nesting_exceeds(b"]" * 100 + b"[" * 33))
        self.assertTrue(nesting_exceeds(b"[1," * 33))
        self.assertFalse(nesting_exceeds(b"[]" * 30_000))

    def test_number_too_long(self) -> None:
        """An integer of more than 4300 digits (Python refuses to read it) is a bad frame that says so."""
        self.assertEqual(
            self.refused(b'{"length":' + b"1" * 4301 + b"}"),
            "REQUEST frame holds a number with too many digits",
        )

    def test_utf8_only(self) -> None:
        """The payload is UTF-8: UTF-16 JSON, which Python's json would guess, is refused."""
        self.assertIn("not valid UTF-8", self.refused('{"a":1}'.encode("utf-16")))
