"""
The sandbox's latest receipts, for its page at C{/}: read back from the
receipt each upload folder keeps (so a restart still lists them), never
from the uploaded files, and only the newest few, however many are kept.
"""

from __future__ import annotations

import datetime
import html
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.python.filepath import FilePath

from epop.messages import Text, grouped, system_reason, translations
from epop.sandbox.retention import Keep
from epop.sandbox.uploads import RECEIPT_NAME, is_secret_field

__all__ = [
    "FILES_SHOWN",
    "MASK",
    "MAX_RECEIPT_BYTES",
    "RECEIPTS_SHOWN",
    "LatestUploads",
    "StoredUpload",
    "latest_uploads",
    "render_latest",
    "render_rules",
]

#: Uploads the page lists, newest first.
RECEIPTS_SHOWN = 20
#: Files the page lists for one upload (a form may carry a thousand).
FILES_SHOWN = 10
#: Largest receipt read back; a thousand files and fields fit well within.
MAX_RECEIPT_BYTES = 1 << 20

#: What the page shows in place of a secret field's value (never kept).
MASK = "********"


@dataclass(frozen=True)
class StoredUpload:
    """One upload as its receipt tells it, or as its folder shows it without one."""

    upload_id: str
    #: The receipt; without one, only C{files} (names and sizes) are known.
    receipt: Mapping[str, Any] | None
    #: Its files, at most L{FILES_SHOWN}.
    files: list[Mapping[str, Any]] = field(default_factory=list)
    #: How many files it holds in all.
    file_count: int = 0
    #: Why its receipt could not be read, if it could not.
    problem: Text | None = None


@dataclass(frozen=True)
class LatestUploads:
    """The newest uploads (newest first) and how many the sandbox keeps."""

    uploads: list[StoredUpload]
    total: int


def latest_uploads(upload_directory: FilePath, limit: int = RECEIPTS_SHOWN) -> LatestUploads:
    """
    The C{limit} newest complete uploads under C{upload_directory}: upload
    ids sort by arrival, and hidden folders are still arriving.
    """
    try:
        with os.scandir(upload_directory.path) as entries:
            names = [
                entry.name
                for entry in entries
                if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False)
            ]
    except FileNotFoundError:
        names = []
    names.sort(reverse=True)
    return LatestUploads(
        [_read_upload(upload_directory.child(name)) for name in names[:limit]], len(names)
    )


def _read_upload(folder: FilePath) -> StoredUpload:
    upload_id = folder.basename()
    try:
        with open(folder.child(RECEIPT_NAME).path, "rb") as handle:
            raw = handle.read(MAX_RECEIPT_BYTES + 1)
    except FileNotFoundError:
        return _from_folder(folder, None)
    except OSError as error:
        return _from_folder(folder, Text("its receipt could not be read: {why}", why=system_reason(error)))
    if len(raw) > MAX_RECEIPT_BYTES:
        return _from_folder(folder, Text("its receipt is larger than {size} bytes", size=MAX_RECEIPT_BYTES))
    try:
        receipt = json.loads(raw)
    except ValueError:
        return _from_folder(folder, Text("its receipt is not valid JSON"))
    files = receipt.get("files") if isinstance(receipt, dict) else None
    if not isinstance(files, list):
        return _from_folder(folder, Text("its receipt lists no files"))
    return StoredUpload(
        upload_id,
        receipt,
        [entry for entry in files[:FILES_SHOWN] if isinstance(entry, dict)],
        len(files),
    )


def _from_folder(folder: FilePath, problem: Text | None) -> StoredUpload:
    """An upload without a usable receipt: its files' names and sizes, from the folder."""
    try:
        with os.scandir(folder.path) as entries:
            names = sorted(entry.name for entry in entries if not entry.name.startswith("."))
    except OSError:
        names = []
    files = []
    for name in names[:FILES_SHOWN]:
        try:
            size: int | None = os.stat(folder.child(name).path).st_size
        except OSError:
            size = None
        files.append({"filename": name, "size": size})
    return StoredUpload(folder.basename(), None, files, len(names), problem)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _say(text: Text, language: str, **markup: str) -> str:
    """C{text} in C{language}, HTML-escaped; C{markup}: parameters that are HTML already."""
    values = {
        name: _e(value.render(language) if isinstance(value, Text) else value) for name, value in text.params.items()
    }
    return _e(translations(language).gettext(text.template)).format(**values, **markup)


def _when(upload: StoredUpload) -> str:
    """The upload's arrival, in UTC, from its receipt or else from its id."""
    received = upload.receipt.get("received") if upload.receipt else None
    try:
        if isinstance(received, str):
            moment = datetime.datetime.fromisoformat(received)
        else:
            moment = datetime.datetime.strptime(
                upload.upload_id.partition("-")[0], "%Y%m%dT%H%M%S"
            ).replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return ""
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fields(upload: StoredUpload, language: str) -> str:
    if upload.receipt is None:
        return _say(Text("not recorded"), language)
    shown = []
    for kept in upload.receipt.get("fields") or []:
        if not isinstance(kept, dict):
            continue
        name = str(kept.get("name", ""))
        if kept.get("secret") or is_secret_field(name):
            value = MASK
        else:
            value = _e(kept.get("value", ""))
            if kept.get("truncated"):
                value += "…"
        shown.append(f"<code>{_e(name)}</code> = {value}")
    return "<br>".join(shown) or _say(Text("no form field"), language)


def _file_cells(entry: Mapping[str, Any] | None, language: str) -> str:
    if entry is None:
        no_file = _say(Text("no file"), language)
        return f'<td colspan="3">{no_file}</td>'
    name = _e(entry.get("filename") or "") or _say(Text("(no name: upload.bin)"), language)
    size = entry.get("size")
    digest = entry.get("sha256")
    shown_size = _e(grouped(size, language)) if isinstance(size, int) else _say(Text("unknown"), language)
    shown_digest = f"<code>{_e(digest)}</code>" if digest else _say(Text("not recorded"), language)
    return f"<td>{name}</td><td>{shown_size}</td><td>{shown_digest}</td>"


def _rows(upload: StoredUpload, language: str) -> str:
    """One row per file shown; the upload's own cells span them."""
    files: list[Mapping[str, Any] | None] = list(upload.files) or [None]
    more = upload.file_count - len(upload.files)
    span = len(files) + (1 if more > 0 else 0)
    receipt = upload.receipt or {}
    request = " ".join(str(receipt.get(key, "")) for key in ("method", "path")).strip()
    note = f"<br>{_say(upload.problem, language)}" if upload.problem else ""
    request = _e(request) or _say(Text("not recorded"), language)
    first = (
        f'<tr><td rowspan="{span}">{_e(_when(upload))}</td>'
        f'<td rowspan="{span}"><code>{_e(upload.upload_id)}</code>{note}</td>'
        f'<td rowspan="{span}">{request}</td>'
    )
    rows = [
        (first if index == 0 else "<tr>") + _file_cells(entry, language)
        + (f'<td rowspan="{span}">{_fields(upload, language)}</td>' if index == 0 else "")
        + "</tr>\n"
        for index, entry in enumerate(files)
    ]
    if more > 0:
        and_more = _say(Text("and {count} more file(s)", count=more), language)
        rows.append(f'<tr><td colspan="3">{and_more}</td></tr>\n')
    return "".join(rows)


def render_latest(latest: LatestUploads, language: str = "en") -> str:
    """The page's list of receipts in C{language}, HTML-escaped throughout."""
    title = "<h2>" + _say(Text("Latest receipts"), language) + "</h2>\n"
    if not latest.uploads:
        return title + "<p>" + _say(Text("No upload yet."), language) + "</p>\n"
    count = len(latest.uploads)
    headings = "".join(
        f"<th>{_say(heading, language)}</th>"
        for heading in (
            Text("Received"), Text("Upload"), Text("Request"), Text("File"), Text("Size (bytes)"),
            Text("SHA-256"), Text("Form fields"),
        )
    )
    newest = Text("The {count} newest of {total} upload(s) kept, newest first.", count=count, total=latest.total)
    return (
        title
        + f"<p>{_say(newest, language)}</p>\n"
        + f'<table id="receipts" border="1">\n<thead><tr>{headings}</tr></thead>\n<tbody>\n'
        + "".join(_rows(upload, language) for upload in latest.uploads)
        + "</tbody>\n</table>\n"
    )


def render_rules(reject: Mapping[str, int], keep: Keep, language: str = "en") -> str:
    """What the sandbox was told to do, in C{language}: refusals (C{--reject}) and retention (C{--keep})."""
    refusals = "".join(
        "<li>"
        + _say(
            Text("Uploads to {path} are refused with {status} ({option}); nothing is stored.", status=status),
            language,
            path=f"<code>{_e(path)}</code>",
            option=f"<code>--reject {_e(path)}={status}</code>",
        )
        + "</li>\n"
        for path, status in sorted(reject.items())
    )
    if not refusals:
        every = Text("Every complete upload is stored and answered with a receipt (no {option}).")
        refusals = f"<li>{_say(every, language, option='<code>--reject</code>')}</li>\n"
    keeps = Text("It keeps {keep}, deleting the oldest first ({option}).", keep=keep.describe(language))
    return (
        "<h2>" + _say(Text("How it answers"), language) + '</h2>\n<ul id="rules">\n'
        + refusals
        + f"<li>{_say(keeps, language, option='<code>--keep</code>')}</li>\n"
        + "</ul>\n"
    )
