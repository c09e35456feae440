"""
The upload handling of the sandbox: a request body streamed to disk as it
arrives (raw, or C{multipart/form-data} parsed as it comes), hashed on the
way, and published under its final name only once it is whole, so that
nothing half-written is ever visible.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from multipart import (
    MultipartError,
    MultipartSegment,
    ParserLimitReached,
    PushMultipartParser,
    parse_content_disposition,
    parse_options_header,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from epop.messages import Text, log_format

if TYPE_CHECKING:
    from epop.sandbox.site import SandboxSite

__all__ = [
    "Body",
    "DEFAULT_FILENAME",
    "MAX_FIELD_SIZE",
    "MAX_NAME_BYTES",
    "MAX_PARTS",
    "MAX_KEPT_VALUE",
    "PARTIAL_SUFFIX",
    "PendingUpload",
    "RECEIPT_NAME",
    "UploadRejected",
    "UploadResult",
    "is_secret_field",
    "open_body",
    "sanitize_filename",
]

#: Largest accepted value of a non-file form field: e-PMSI fields are short
#: identifiers, anything bigger is a client bug we want a test to notice.
MAX_FIELD_SIZE = 64 * 1024
#: Most parts accepted in one multipart body (e-PMSI uses about six).
MAX_PARTS = 1000
#: Largest accepted header line inside a multipart part.
MAX_PART_HEADER_SIZE = 8 * 1024
#: Most header lines accepted inside a multipart part.
MAX_PART_HEADERS = 16

#: Stored name of a file whose client gave no usable name.
DEFAULT_FILENAME = "upload.bin"

#: Suffix of what is still being written: never a stored file's name.
PARTIAL_SUFFIX = ".partial"

#: Each upload's receipt, kept in its folder for the sandbox's page (so a
#: restart still lists it).  Hidden, so never a client's file name: those
#: lose their leading dots.
RECEIPT_NAME = ".receipt.json"

#: Characters of a form field's value the receipt keeps: e-PMSI's fields
#: are short identifiers; a longer value is cut, not kept whole.
MAX_KEPT_VALUE = 200

#: Form field names whose values may be secrets: never kept, only masked.
_SECRET_FIELD = re.compile(r"pwd|pass|secret|token|key|mdp|credential|auth", re.IGNORECASE)

_FORBIDDEN_CHARACTERS = re.compile(r'[<>:"|?*\x00-\x1f\x7f]')
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com\d|lpt\d)(\..*)?$", re.IGNORECASE)


#: Longest file name, in bytes, most file systems take.
MAX_NAME_BYTES = 255
#: Longest ending kept as an extension when a long name is shortened.
_MAX_EXTENSION_BYTES = 16


def _split_extension(name: str) -> tuple[str, str]:
    """C{name} as stem and extension, the extension only if it is short."""
    stem, extension = os.path.splitext(name)
    if len(extension.encode("utf-8")) > _MAX_EXTENSION_BYTES:
        return name, ""
    return stem, extension


def _fit_name(stem: str, ending: str) -> str:
    """
    C{stem + ending} in at most L{MAX_NAME_BYTES} UTF-8 bytes: the stem is
    shortened (never in the middle of a character) so that the extension, or
    a de-duplicating C{-2}, survives.
    """
    room = MAX_NAME_BYTES - len(ending.encode("utf-8"))
    return stem.encode("utf-8")[:room].decode("utf-8", "ignore") + ending


def sanitize_filename(name: str | None) -> str:
    """
    Turn a client-supplied file name into a safe name for one directory
    entry.

    Keeps the base name only (both C{/} and C{\\} separate components), drops
    control and Windows-reserved characters and leading dots, shortens it to
    L{MAX_NAME_BYTES} keeping its extension, and falls back to
    C{upload.bin}: a client must never be able to write outside its
    upload folder, create hidden files, or collide with our C{.partial}
    names.
    """
    if not name:
        return DEFAULT_FILENAME
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable() or ch == " ")
    base = _FORBIDDEN_CHARACTERS.sub("_", base)
    base = base.strip().lstrip(".").strip().rstrip(". ")
    if _WINDOWS_RESERVED.match(base):
        base = "_" + base
    base = _fit_name(*_split_extension(base))
    if not base or base.endswith(PARTIAL_SUFFIX):
        return DEFAULT_FILENAME if not base else _fit_name(base, ".bin")
    return base


def is_secret_field(name: str) -> bool:
    """Whether a form field's name says its value may be a password (C{userPwd})."""
    return _SECRET_FIELD.search(name) is not None


def _kept_field(name: str, value: bytes | None, size: int) -> dict[str, Any]:
    """A form field as its receipt keeps it: a secret masked, a long value cut."""
    if value is None:
        return {"name": name, "secret": True}
    text = value.decode("utf-8", "replace")
    kept: dict[str, Any] = {"name": name, "value": text[:MAX_KEPT_VALUE]}
    if len(text) > MAX_KEPT_VALUE or size > len(value):
        kept["truncated"] = True
    return kept


class UploadRejected(Exception):
    """An upload the sandbox refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _IncomingFile:
    """One file being written under a temporary name while it is hashed."""

    def __init__(
        self, partial: FilePath, field: str | None, filename: str | None, stored_name: str
    ) -> None:
        self.partial = partial
        self.field = field
        self.filename = filename
        self.stored_name = stored_name
        self.size = 0
        self._sha256 = hashlib.sha256()
        # "x": never reuse or truncate an existing file.
        self._handle: io.BufferedWriter | None = open(partial.path, "xb")

    def write(self, data: bytes) -> None:
        """Append one chunk; only this chunk is ever held in memory."""
        assert self._handle is not None, "write after close"
        self._handle.write(data)
        self._sha256.update(data)
        self.size += len(data)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            handle.close()

    def receipt(self) -> dict[str, Any]:
        """The receipt entry for this file."""
        return {
            "field": self.field,
            "filename": self.filename,
            "size": self.size,
            "sha256": self._sha256.hexdigest(),
        }


class PendingUpload:
    """
    The files of one request, invisible until L{commit}.

    Files go into a hidden C{.<id>.partial} folder as C{NNNN.partial}; on
    commit they get their final names and the folder is renamed to C{<id>}
    in one step, so a reader sees either a complete upload or nothing.
    """

    def __init__(self, site: SandboxSite) -> None:
        self._site = site
        self.upload_id: str | None = None
        self._folder: FilePath | None = None
        self._files: list[_IncomingFile] = []
        self._names: set[str] = set()
        self.finished = False

    @property
    def log(self) -> Logger:
        return self._site.logger

    def _ensure_folder(self) -> FilePath:
        if self._folder is None:
            self.upload_id, self._folder = self._site.allocate_upload()
        return self._folder

    def _unique_name(self, wanted: str) -> str:
        name = wanted
        counter = 1
        while name.casefold() in self._names:
            counter += 1
            stem, extension = _split_extension(wanted)
            name = _fit_name(stem, f"-{counter}{extension}")
        self._names.add(name.casefold())
        return name

    def new_file(self, field: str | None, filename: str | None) -> _IncomingFile:
        """Start a new file; C{filename} is the client's, unsanitised."""
        folder = self._ensure_folder()
        stored_name = self._unique_name(sanitize_filename(filename))
        partial = folder.child(f"{len(self._files):04d}{PARTIAL_SUFFIX}")
        incoming = _IncomingFile(
            partial, field, stored_name if filename else None, stored_name
        )
        self._files.append(incoming)
        return incoming

    def commit(
        self, method: str = "", path: str = "", fields: list[dict[str, Any]] | None = None
    ) -> tuple[str, list[dict[str, Any]]]:
        """Give every file its final name, write the receipt and publish the folder."""
        folder = self._ensure_folder()
        assert self.upload_id is not None
        for incoming in self._files:
            incoming.close()
        for incoming in self._files:
            os.rename(incoming.partial.path, folder.child(incoming.stored_name).path)
        files = [incoming.receipt() for incoming in self._files]
        received = datetime.datetime.fromtimestamp(
            self._site.reactor.seconds(), datetime.timezone.utc
        )
        with open(folder.child(RECEIPT_NAME).path, "x", encoding="utf-8") as receipt:
            json.dump(
                {
                    "upload": self.upload_id,
                    "received": received.isoformat(timespec="seconds"),
                    "method": method,
                    "path": path,
                    "files": files,
                    "fields": fields or [],
                },
                receipt,
            )
        # os.rename refuses to replace a non-empty directory, and
        # _allocate_upload made sure the final name was free.
        os.rename(folder.path, self._site.upload_directory.child(self.upload_id).path)
        self.finished = True
        self._site.keep.prune(self._site.upload_directory, self._site.language)
        return self.upload_id, files

    def discard(self) -> None:
        """Delete everything written so far (idempotent)."""
        self.finished = True
        for incoming in self._files:
            incoming.close()
        if self._folder is not None:
            folder, self._folder = self._folder, None
            try:
                folder.remove()
            except OSError:
                self._site.logger.failure(
                    log_format(Text("Could not delete partial upload {folder}"), self._site.language),
                    folder=folder.path,
                )


@dataclass(frozen=True)
class UploadResult:
    upload_id: str
    files: list[dict[str, Any]]
    fields: list[str]


class Body:
    """
    Where a request body goes while it arrives.

    Once something goes wrong the partial files are deleted at once and the
    rest of the body is drained and ignored, so the error can still be
    answered when the request completes.
    """

    def __init__(self, upload: PendingUpload) -> None:
        self._upload = upload
        self.rejection: UploadRejected | None = None
        self.received = 0
        self.field_names: list[str] = []
        #: The form fields as the receipt keeps them (L{_kept_field}).
        self.fields: list[dict[str, Any]] = []

    @property
    def done(self) -> bool:
        return self._upload.finished

    def feed(self, data: bytes) -> None:
        """Handle one chunk of body."""
        self.received += len(data)
        if self.rejection is not None or not data:
            return
        try:
            self._feed(data)
        except Exception:
            self._reject(Failure())

    def finish(self, method: str = "", path: str = "") -> UploadResult:
        """
        End of body: check it was complete and publish the files, with a
        receipt saying they came by C{method} to C{path}.

        @raise UploadRejected: if the body was unacceptable.
        """
        if self.rejection is None:
            try:
                self._finish()
                upload_id, files = self._upload.commit(method, path, self.fields)
            except Exception:
                self._reject(Failure())
            else:
                return UploadResult(upload_id, files, list(self.field_names))
        assert self.rejection is not None
        raise self.rejection

    def abort(self) -> None:
        """Forget the body, deleting anything already written."""
        self._upload.discard()

    def _reject(self, failure: Failure) -> None:
        self._upload.discard()
        error = failure.value
        if isinstance(error, UploadRejected):
            self.rejection = error
        elif isinstance(error, ParserLimitReached):
            self.rejection = UploadRejected(413, f"multipart limit reached: {error}")
        elif isinstance(error, MultipartError):
            self.rejection = UploadRejected(400, f"malformed multipart body: {error}")
        elif isinstance(error, OSError):
            self._upload.log.failure("Could not store upload", failure)
            self.rejection = UploadRejected(
                500, f"could not store upload: {error.strerror or error}"
            )
        else:
            self._upload.log.failure("Unexpected error storing upload", failure)
            self.rejection = UploadRejected(500, "internal error storing upload")

    def _feed(self, data: bytes) -> None:
        raise NotImplementedError()

    def _finish(self) -> None:
        raise NotImplementedError()


class _RejectedBody(Body):
    """A body refused from its headers alone (e.g. multipart without boundary)."""

    def __init__(self, upload: PendingUpload, rejection: UploadRejected) -> None:
        super().__init__(upload)
        self.rejection = rejection


class _RawBody(Body):
    """A non-multipart body: stored as one file."""

    def __init__(self, upload: PendingUpload, filename: str | None) -> None:
        super().__init__(upload)
        self._filename = filename
        self._file: _IncomingFile | None = None

    def _target(self) -> _IncomingFile:
        if self._file is None:
            self._file = self._upload.new_file(None, self._filename)
        return self._file

    def _feed(self, data: bytes) -> None:
        self._target().write(data)

    def _finish(self) -> None:
        # An empty body still makes an (empty) file.
        self._target().close()


class _MultipartBody(Body):
    """A C{multipart/form-data} body: file parts go to disk, fields are counted."""

    def __init__(
        self, upload: PendingUpload, boundary: bytes, content_length: int | None
    ) -> None:
        super().__init__(upload)
        self._parser = PushMultipartParser(
            boundary,
            content_length=-1 if content_length is None else content_length,
            max_header_size=MAX_PART_HEADER_SIZE,
            max_header_count=MAX_PART_HEADERS,
            max_segment_count=MAX_PARTS,
        )
        self._file: _IncomingFile | None = None
        self._field_size = 0
        #: The start of the current field's value; None for a secret one.
        self._value: bytearray | None = None

    def _feed(self, data: bytes) -> None:
        for event in self._parser.parse(data):
            if isinstance(event, MultipartSegment):
                if event.filename is not None:
                    self._file = self._upload.new_file(event.name, event.filename)
                else:
                    # The answer names the fields only; the receipt also
                    # keeps the start of values, but never a password's.
                    self.field_names.append(event.name or "")
                    self._field_size = 0
                    self._value = None if is_secret_field(event.name or "") else bytearray()
            elif event is None:
                if self._file is not None:
                    self._file.close()
                    self._file = None
                else:
                    self.fields.append(
                        _kept_field(self.field_names[-1], self._value, self._field_size)
                    )
            elif self._file is not None:
                self._file.write(event)
            else:
                self._field_size += len(event)
                if self._value is not None:
                    # Four UTF-8 bytes at most per character kept.
                    room = 4 * MAX_KEPT_VALUE - len(self._value)
                    self._value += event[: max(room, 0)]
                if self._field_size > MAX_FIELD_SIZE:
                    raise UploadRejected(
                        413,
                        f"form field {self.field_names[-1]!r} is larger than "
                        f"{MAX_FIELD_SIZE} bytes",
                    )

    def _finish(self) -> None:
        # Raises ParserError unless the closing boundary was seen.
        self._parser.close()


def open_body(
    upload: PendingUpload, content_type: str, content_disposition: str, length: int | None
) -> Body:
    """
    Where a request body goes, from its C{Content-Type} and
    C{Content-Disposition} headers (empty if absent): parsed as
    C{multipart/form-data}, stored whole as one file, or refused.
    """
    media_type, options = parse_options_header(content_type)
    if media_type == "multipart/form-data":
        boundary = options.get("boundary")
        if not boundary:
            return _RejectedBody(
                upload, UploadRejected(400, "multipart/form-data without boundary")
            )
        try:
            # The header was read as Latin-1: its own bytes delimit the
            # parts, not their UTF-8 re-encoding.
            return _MultipartBody(upload, boundary.encode("latin-1"), length)
        except MultipartError as error:
            return _RejectedBody(
                upload, UploadRejected(400, f"bad multipart boundary: {error}")
            )
    filename = parse_content_disposition(content_disposition)[2] if content_disposition else None
    return _RawBody(upload, filename)
