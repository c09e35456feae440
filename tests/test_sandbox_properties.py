"""
Properties of the sandbox's upload parsing (L{epop.sandbox.uploads}), checked with
hypothesis over the HTTP channel itself, in memory.

Whatever the body, however it is split into reads, and whatever boundary
the Content-Type names, a request ends one of two ways: a stored upload
whose files are exactly what the receipt says (and only for a complete
form), or a 4xx JSON rejection that leaves nothing in the uploads folder.
Never a 500, a logged error, or a partial file.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from epop.sandbox.site import make_sandbox_site
from epop.sandbox.uploads import MAX_FIELD_SIZE, MAX_PARTS, RECEIPT_NAME

#: Boundary characters RFC 2046 allows (a space, but not as the last one).
_BCHARS = string.ascii_letters + string.digits + "'()+_,-./:=?"

#: Characters of an HTTP token: a boundary made of them needs no quotes.
_TOKEN = set(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")

#: Characters a client may put in a header value (no CR, LF or NUL).
_HEADER_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")

#: Characters of names and file names our test forms quote as they are.
_NAME_CHARS = st.characters(
    min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters='"%\\\x7f'
)

_FILE_NAMES = st.text(
    # Surrogates are not characters a file name can be written with.
    st.characters(min_codepoint=0x20, exclude_characters='"%\\\x7f', exclude_categories=("Cs",)),
    min_size=1,
    max_size=300,
)
#: Names near and past what a file system takes (255 bytes), one or two
#: bytes a character, with or without an extension.
_LONG_FILE_NAMES = st.builds(
    lambda character, count, extension: character * count + extension,
    st.sampled_from(["a", "é", "€", " ", "."]),
    st.integers(100, 300),
    st.sampled_from(["", ".zip", ".tar.gz", ".partial"]),
)

PROPERTIES = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def rfc_boundaries() -> st.SearchStrategy[str]:
    """Boundaries as RFC 2046 has them: 1 to 70 characters, no trailing space."""
    return st.text(alphabet=_BCHARS + " ", min_size=1, max_size=70).filter(
        lambda b: not b.endswith(" ")
    )


def boundary_parameter(boundary: str, quote: bool) -> str:
    """C{boundary=...} as a client writes it: quoted when it must be, or when asked."""
    if quote or not boundary or not set(boundary) <= _TOKEN:
        escaped = boundary.replace("\\", "\\\\").replace('"', '\\"')
        return f'boundary="{escaped}"'
    return f"boundary={boundary}"


def any_boundaries() -> st.SearchStrategy[str]:
    """Any boundary a Content-Type header can carry, valid or not."""
    return st.one_of(rfc_boundaries(), st.text(_HEADER_CHARS, max_size=90))


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    content: bytes


@st.composite
def forms(draw: Any, boundary: str | None = None) -> tuple[str, list[Part], bytes]:
    """A well-formed multipart form: its boundary, its parts and its bytes."""
    if boundary is None:
        boundary = draw(rfc_boundaries())
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    parts = draw(
        st.lists(
            st.builds(
                Part,
                st.text(_NAME_CHARS, min_size=1, max_size=12),
                st.one_of(st.none(), st.text(_NAME_CHARS, max_size=20)),
                st.binary(max_size=3000).filter(lambda c: delimiter not in b"\r\n" + c + b"\r\n"),
            ),
            max_size=4,
        )
    )
    chunks = []
    for part in parts:
        disposition = f'form-data; name="{part.name}"'
        if part.filename is not None:
            disposition += f'; filename="{part.filename}"'
        chunks.append(
            b"--%s\r\nContent-Disposition: %s\r\n\r\n%s\r\n"
            % (boundary.encode("latin-1"), disposition.encode("utf-8"), part.content)
        )
    chunks.append(b"--%s--\r\n" % (boundary.encode("latin-1"),))
    return boundary, parts, b"".join(chunks)


def splits(body: bytes) -> st.SearchStrategy[list[bytes]]:
    """C{body} cut into reads at any points."""
    return st.lists(st.integers(0, len(body)), max_size=8).map(
        lambda cuts: [
            body[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(body)])
        ]
    )


@dataclass
class Outcome:
    """What one request did: its status and JSON, and what the folder holds."""

    status: int | None
    document: dict[str, Any] | None
    entries: list[str]
    stored: dict[str, bytes]
    #: The receipts the sandbox kept, by upload.
    receipts: dict[str, Any]


class SandboxExchange:
    """
    One sandbox site in memory and one HTTP/1.1 request to it, fed in the
    reads the test chooses.
    """

    def __init__(self, folder: FilePath) -> None:
        self.folder = folder
        self.site = make_sandbox_site(folder, Clock())

    def post(
        self,
        content_type: str,
        reads: list[bytes],
        declared: int | None = None,
        complete: bool = True,
        chunked: bool = False,
        headers: bytes = b"",
    ) -> Outcome:
        """
        POST the body C{reads} make up, one C{dataReceived} per read (or one
        HTTP chunk per read with C{chunked}); without C{complete}, the
        connection is lost after the last read.
        """
        body_length = sum(map(len, reads))
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        if chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        else:
            framing = b"Content-Length: %d\r\n" % (body_length if declared is None else declared,)
        channel.dataReceived(
            b"POST /syriusUpload.do HTTP/1.1\r\nHost: sandbox\r\n"
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n" + headers + framing + b"\r\n"
        )
        for read in reads:
            if read and chunked:
                channel.dataReceived(b"%x\r\n%s\r\n" % (len(read), read))
            elif read:
                channel.dataReceived(read)
        if chunked and complete:
            channel.dataReceived(b"0\r\n\r\n")
        if not complete:
            channel.connectionLost(Failure(ConnectionDone()))
        answer = transport.value()
        if complete:
            channel.connectionLost(Failure(ConnectionDone()))
        status = document = None
        if answer:
            status_line, _, rest = answer.partition(b"\r\n")
            status = int(status_line.split()[1])
            document = json.loads(rest.partition(b"\r\n\r\n")[2])
        return Outcome(status, document, self._entries(), self._stored(), self._receipts())

    def _entries(self) -> list[str]:
        return sorted(child.basename() for child in self.folder.children())

    def _stored(self) -> dict[str, bytes]:
        stored = {}
        for upload in self.folder.children():
            if upload.isdir():
                for item in upload.children():
                    if item.basename() != RECEIPT_NAME:
                        stored[f"{upload.basename()}/{item.basename()}"] = item.getContent()
        return stored

    def _receipts(self) -> dict[str, Any]:
        return {
            upload.basename(): json.loads(upload.child(RECEIPT_NAME).getContent())
            for upload in self.folder.children()
            if upload.child(RECEIPT_NAME).exists()
        }


class SandboxParsingProperties(SynchronousTestCase):
    """Any body, any split, any boundary: stored whole, or a 4xx and nothing."""

    def setUp(self) -> None:
        self.base = FilePath(self.mktemp())
        self.base.makedirs()
        self.count = 0
        self.errors: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if "log_failure" in event:
                self.errors.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def exchange(self) -> SandboxExchange:
        """A fresh sandbox, with its own empty uploads folder."""
        self.count += 1
        folder = self.base.child(str(self.count))
        folder.makedirs()
        self.errors.clear()
        return SandboxExchange(folder)

    def check_consistent(self, outcome: Outcome) -> None:
        """The rules every request obeys, whatever it sent."""
        self.assertEqual(self.errors, [], "the sandbox logged an error")
        self.assertIn(outcome.status, (200, 400, 413), outcome.document)
        assert outcome.document is not None
        if outcome.status != 200:
            self.assertEqual(outcome.document["status"], "error")
            self.assertTrue(outcome.document["error"])
            self.assertEqual(outcome.entries, [], "a rejected upload left files behind")
            return
        upload = outcome.document["upload"]
        self.assertEqual(outcome.entries, [upload])
        # The receipt kept for the sandbox's page says what the answer said.
        kept = outcome.receipts[upload]
        self.assertEqual(kept["files"], outcome.document["files"])
        self.assertEqual([f["name"] for f in kept["fields"]], outcome.document["fields"])
        for name in outcome.stored:
            stored_name = name.partition("/")[2]
            self.assertFalse(
                stored_name.startswith(".") or stored_name.endswith(".partial"), name
            )
        self.assertEqual(
            sorted((len(c), hashlib.sha256(c).hexdigest()) for c in outcome.stored.values()),
            sorted((f["size"], f["sha256"]) for f in outcome.document["files"]),
        )

    @PROPERTIES
    @given(st.data())
    def test_well_formed_forms_are_stored_whole(self, data: Any) -> None:
        """A complete form, read in any split, is stored: each file byte for byte, each field named."""
        boundary, parts, body = data.draw(forms())
        reads = data.draw(splits(body))
        parameter = boundary_parameter(boundary, data.draw(st.booleans()))
        outcome = self.exchange().post(f"multipart/form-data; {parameter}", reads)
        self.check_consistent(outcome)
        self.assertEqual(outcome.status, 200, outcome.document)
        assert outcome.document is not None
        files = [p for p in parts if p.filename is not None]
        self.assertEqual(
            [(f["field"], f["size"], f["sha256"]) for f in outcome.document["files"]],
            [(p.name, len(p.content), hashlib.sha256(p.content).hexdigest()) for p in files],
        )
        self.assertEqual(outcome.document["fields"], [p.name for p in parts if p.filename is None])
        self.assertEqual(
            sorted(outcome.stored.values()), sorted(p.content for p in files)
        )

    @PROPERTIES
    @given(st.data())
    def test_cut_short_forms_are_refused(self, data: Any) -> None:
        """A form cut before its closing boundary is a 400 and leaves nothing, in any split."""
        _, _, body = data.draw(forms())
        boundary = body[2 : body.index(b"\r\n")].decode("latin-1")
        complete_at = len(body) - len(b"\r\n")  # the closing "--" is in
        cut = data.draw(st.integers(0, complete_at - 1))
        reads = data.draw(splits(body[:cut]))
        outcome = self.exchange().post(f"multipart/form-data; {boundary_parameter(boundary, False)}", reads)
        self.check_consistent(outcome)
        self.assertEqual(outcome.status, 400, outcome.document)

    @PROPERTIES
    @given(st.data())
    def test_connection_lost_mid_body_leaves_nothing(self, data: Any) -> None:
        """A client gone before the end of its body gets no answer and leaves nothing behind."""
        boundary, _, body = data.draw(forms())
        cut = data.draw(st.integers(0, len(body) - 1))
        reads = data.draw(splits(body[:cut]))
        outcome = self.exchange().post(
            f"multipart/form-data; {boundary_parameter(boundary, False)}", reads, declared=len(body), complete=False
        )
        self.assertEqual(self.errors, [])
        self.assertIsNone(outcome.status)
        self.assertEqual(outcome.entries, [])

    @PROPERTIES
    @given(any_boundaries(), st.binary(max_size=4000), st.data())
    def test_any_bytes_any_boundary(self, boundary: str, body: bytes, data: Any) -> None:
        """
        Arbitrary bytes under an arbitrary boundary: stored only if the body
        closes that boundary, else a 4xx with nothing kept; the same outcome
        in one read or in many.
        """
        parameter = boundary_parameter(boundary, data.draw(st.booleans()))
        content_type = f"multipart/form-data; {parameter}"
        whole = self.exchange().post(content_type, [body])
        self.check_consistent(whole)
        if whole.status == 200:
            self.assertIn(b"--" + boundary.encode("latin-1") + b"--", body)
        reads = data.draw(splits(body))
        chunked = data.draw(st.booleans())
        split = self.exchange().post(content_type, reads, chunked=chunked)
        self.check_consistent(split)
        self.assertEqual(split.status, whole.status, (whole.document, split.document))
        self.assertEqual(sorted(split.stored.values()), sorted(whole.stored.values()))

    @PROPERTIES
    @given(
        st.sampled_from(["", "application/octet-stream", "application/zip", "text/plain; charset=utf-8"]),
        st.text(_HEADER_CHARS, max_size=80),
        st.binary(max_size=4000),
        st.data(),
    )
    def test_raw_bodies(self, content_type: str, disposition: str, body: bytes, data: Any) -> None:
        """A body that is not a form, under any Content-Disposition, is stored as one file, byte for byte."""
        reads = data.draw(splits(body))
        outcome = self.exchange().post(
            content_type,
            reads,
            chunked=data.draw(st.booleans()),
            headers=b"Content-Disposition: " + disposition.strip().encode("latin-1") + b"\r\n",
        )
        self.check_consistent(outcome)
        self.assertEqual(outcome.status, 200, outcome.document)
        self.assertEqual(list(outcome.stored.values()), [body])

    @PROPERTIES
    @given(st.data())
    def test_damaged_forms(self, data: Any) -> None:
        """A well-formed form with bytes changed, added or removed is stored consistently, or refused and gone."""
        boundary, _, body = data.draw(forms())
        damaged = bytearray(body)
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(damaged)))
            how = data.draw(st.sampled_from(["flip", "insert", "delete"]))
            if how == "insert":
                damaged[at:at] = data.draw(st.binary(min_size=1, max_size=8))
            elif at < len(damaged):
                if how == "flip":
                    damaged[at] ^= data.draw(st.integers(1, 255))
                else:
                    del damaged[at]
        reads = data.draw(splits(bytes(damaged)))
        outcome = self.exchange().post(f"multipart/form-data; {boundary_parameter(boundary, False)}", reads)
        self.check_consistent(outcome)

    @PROPERTIES
    @given(st.text(_NAME_CHARS, min_size=1, max_size=10), st.integers(0, 2 * MAX_FIELD_SIZE), st.data())
    def test_field_size_limit(self, name: str, size: int, data: Any) -> None:
        """A field up to MAX_FIELD_SIZE is accepted, a larger one is a 413 that names it, in any split."""
        boundary = data.draw(rfc_boundaries())
        body = (
            b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n--%s--\r\n"
            % (boundary.encode(), name.encode("utf-8"), b"v" * size, boundary.encode())
        )
        reads = data.draw(splits(body))
        outcome = self.exchange().post(f"multipart/form-data; {boundary_parameter(boundary, False)}", reads)
        self.check_consistent(outcome)
        self.assertEqual(outcome.status, 200 if size <= MAX_FIELD_SIZE else 413, outcome.document)

    @PROPERTIES
    @given(st.text(_HEADER_CHARS, min_size=1, max_size=70), st.data())
    def test_boundary_is_the_header_bytes(self, boundary: str, data: Any) -> None:
        """
        Whatever characters a quoted boundary holds, the body's delimiter is
        the header's own bytes: a form written with them is stored whole.
        """
        _, parts, body = data.draw(forms(boundary))
        reads = data.draw(splits(body))
        outcome = self.exchange().post(f"multipart/form-data; {boundary_parameter(boundary, True)}", reads)
        self.check_consistent(outcome)
        self.assertEqual(outcome.status, 200, outcome.document)
        self.assertEqual(
            sorted(outcome.stored.values()), sorted(p.content for p in parts if p.filename is not None)
        )

    @settings(PROPERTIES, max_examples=8)
    @given(st.integers(MAX_PARTS - 2, MAX_PARTS + 2), st.data())
    def test_part_count_limit(self, count: int, data: Any) -> None:
        """Up to MAX_PARTS parts are accepted, more are a 413, in any split."""
        boundary = data.draw(rfc_boundaries())
        part = b'--%s\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n' % (boundary.encode(),)
        body = part * count + b"--%s--\r\n" % (boundary.encode(),)
        reads = data.draw(splits(body))
        outcome = self.exchange().post(f"multipart/form-data; {boundary_parameter(boundary, False)}", reads)
        self.check_consistent(outcome)
        self.assertEqual(outcome.status, 200 if count <= MAX_PARTS else 413, outcome.document)

    @PROPERTIES
    @given(
        st.lists(st.one_of(_FILE_NAMES, _LONG_FILE_NAMES), min_size=1, max_size=4),
        st.data(),
    )
    def test_any_file_names(self, names: list[str], data: Any) -> None:
        """
        Files under any names, long ones and repeated ones included, are all
        stored, each under a name of at most 255 bytes, none overwritten.
        """
        repeated = data.draw(st.lists(st.sampled_from(names), max_size=3))
        parts = [Part("f", name, b"%d" % (i,)) for i, name in enumerate(names + repeated)]
        chunks = [
            b'--epopB\r\nContent-Disposition: form-data; name="f"; filename="%s"\r\n\r\n%s\r\n'
            % (p.filename.encode("utf-8"), p.content)  # type: ignore[union-attr]
            for p in parts
        ]
        body = b"".join(chunks) + b"--epopB--\r\n"
        outcome = self.exchange().post("multipart/form-data; boundary=epopB", data.draw(splits(body)))
        self.check_consistent(outcome)
        self.assertEqual(outcome.status, 200, outcome.document)
        self.assertEqual(sorted(outcome.stored.values()), sorted(p.content for p in parts))
        for stored in outcome.stored:
            self.assertLessEqual(len(stored.partition("/")[2].encode("utf-8")), 255, stored)
