"""
The sandbox's web site: one resource that answers every path (its upload
form and latest receipts at C{/}, a health document, an upload's receipt,
or 405), over
requests whose bodies go straight to L{epop.sandbox.uploads} instead of
being spooled by twisted.web, and connections it can close all at once.
"""

from __future__ import annotations

import datetime
import html
import io
import json
import os
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from epop.messages import Text, language_of, log_format
from epop.sandbox.receipts import latest_uploads, render_latest, render_rules
from epop.sandbox.retention import Keep
from epop.sandbox.uploads import (
    PARTIAL_SUFFIX,
    Body,
    PendingUpload,
    UploadRejected,
    UploadResult,
    open_body,
)

__all__ = ["DEFAULT_UPLOAD_PATH", "SandboxRequest", "SandboxSite", "make_sandbox_site"]

#: Where the upload form posts: e-PMSI's documented upload path.
DEFAULT_UPLOAD_PATH = "/syriusUpload.do"

_UPLOAD_METHODS = (b"POST", b"PUT")
_ALLOWED_METHODS = (b"GET", b"HEAD", b"POST", b"PUT")


def _json_body(request: Request, status: int, document: dict[str, Any]) -> bytes:
    body = json.dumps(document).encode("utf-8") + b"\n"
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return body


def _upload_form(upload_path: str, after: str = "", language: str = "en") -> bytes:
    """
    The sandbox's own upload page (not an imitation of e-PMSI's site), in
    C{language}: one form posting e-PMSI's documented fields, for browsers
    and demos, then C{after} (HTML, already escaped).
    """

    def say(text: Text) -> str:
        return html.escape(text.render(language), quote=True)

    title, heading = say(Text("e-PMSI sandbox: upload")), say(Text("e-PMSI sandbox"))
    about = say(Text("A local stand-in for e-PMSI: the file is stored and a JSON receipt is shown."))
    file, send = say(Text("File")), say(Text("Send"))
    action = html.escape(upload_path, quote=True)
    text_fields = "".join(
        f'<p><label>{say(label)} <input type="{kind}" name="{name}"></label></p>\n'
        for label, kind, name in (
            (Text("User"), "text", "userId"),
            (Text("Password"), "password", "userPwd"),
            (Text("Year"), "text", "year"),
            (Text("Period"), "text", "period"),
            (Text("FINESS"), "text", "finess"),
        )
    )
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="{language}"><head><meta charset="utf-8">'
        f"<title>{title}</title></head>\n<body>\n"
        f"<h1>{heading}</h1>\n"
        f"<p>{about}</p>\n"
        f'<form method="post" action="{action}" enctype="multipart/form-data">\n'
        f"{text_fields}"
        f'<p><label>{file} <input type="file" name="theFile"></label></p>\n'
        f'<p><button type="submit">{send}</button></p>\n'
        "</form>\n"
        f"{after}"
        "</body></html>\n"
    ).encode("utf-8")


def _html_body(request: Request, body: bytes) -> bytes:
    request.setResponseCode(200)
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    # Nothing to load from anywhere, and the form only posts back here.
    request.setHeader(
        b"Content-Security-Policy", b"default-src 'none'; form-action 'self'"
    )
    return body


class SandboxRequest(Request):
    """
    A request whose body is streamed to disk as it arrives.

    twisted.web normally spools the whole body into C{self.content} before
    rendering; that would hold multi-gigabyte uploads in memory or in an
    anonymous temporary file.  Here C{gotLength} and C{handleContentChunk}
    hand each chunk to a L{Body} and C{content} stays an empty buffer.
    """

    def __init__(self, channel: HTTPChannel, *args: Any, **kwargs: Any) -> None:
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(channel, *args, **kwargs)
        self._site: SandboxSite = channel.site  # type: ignore[attr-defined]
        self._body: Body | None = None
        #: Set once the body is complete for POST and PUT.
        self.upload_outcome: UploadResult | UploadRejected | None = None

    def gotLength(self, length: int | None) -> None:
        """Headers are in: prepare the body's destination (lazily, on disk)."""
        self.content = io.BytesIO()
        if length != 0:
            self._body = self._open_body(length)

    def handleContentChunk(self, data: bytes) -> None:
        """Stream a body chunk to disk instead of buffering it."""
        if self._body is not None:
            self._body.feed(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The whole body is in: publish or discard the upload, then render."""
        if command in _UPLOAD_METHODS:
            if self._body is None:
                self._body = self._open_body(0)
            try:
                refusal = self._site.refusal_for(path.split(b"?", 1)[0].decode("latin-1"))
                if refusal is not None:
                    # A rehearsal of e-PMSI refusing: nothing is kept.
                    self._body.abort()
                    raise refusal
                self.upload_outcome = self._body.finish(
                    command.decode("latin-1"), path.split(b"?", 1)[0].decode("latin-1")
                )
            except UploadRejected as rejection:
                self.upload_outcome = rejection
                self._site.logger.warn(
                    # {error} is the answer's text, as the client got it.
                    log_format(Text("Upload rejected with {status}: {error}"), self._site.language),
                    status=rejection.status,
                    error=rejection.message,
                    method=command.decode("latin-1"),
                )
            else:
                self._site.logger.info(
                    log_format(Text("Upload {upload} received: {count} file(s), {size} bytes"), self._site.language),
                    upload=self.upload_outcome.upload_id,
                    count=len(self.upload_outcome.files),
                    size=sum(entry["size"] for entry in self.upload_outcome.files),
                )
        elif self._body is not None:
            # A body on GET, DELETE...: not an upload, keep nothing.
            self._body.abort()
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Failure) -> None:
        """Delete whatever a client that went away had sent so far."""
        body = self._body
        if body is not None and not body.done:
            body.abort()
            self._site.logger.warn(
                log_format(
                    Text("Upload abandoned: connection lost after {received} bytes of body; partial files deleted"),
                    self._site.language,
                ),
                received=body.received,
            )
        super().connectionLost(reason)

    def _open_body(self, length: int | None) -> Body:
        return open_body(
            PendingUpload(self._site),
            _header(self, b"Content-Type"),
            _header(self, b"Content-Disposition"),
            length,
        )


def _header(request: Request, name: bytes) -> str:
    values = request.requestHeaders.getRawHeaders(name)
    return values[0].decode("latin-1") if values else ""


class _SandboxResource(Resource):
    """Answers every path: the upload form, a health document, receipts, or 405."""

    isLeaf = True

    def __init__(self, upload_path: str) -> None:
        super().__init__()
        self._upload_path = upload_path

    def _page(self, site: SandboxSite, language: str) -> bytes:
        """The form, what the sandbox was told, and its latest receipts, as they are now, in C{language}."""
        return _upload_form(
            self._upload_path,
            render_rules(site.reject, site.keep, language)
            + render_latest(latest_uploads(site.upload_directory), language),
            language,
        )

    def render(self, request: SandboxRequest) -> bytes:  # type: ignore[override]
        method = request.method
        if method in (b"GET", b"HEAD"):
            if request.path == b"/":
                # In the browser's language, as the relay's own page.
                language = language_of(_header(request, b"Accept-Language"))
                request.setHeader(b"Vary", b"Accept-Language")
                body = _html_body(request, self._page(request._site, language))
            else:
                body = _json_body(
                    request, 200, {"service": "e-PMSI sandbox", "status": "ok"}
                )
            if method == b"HEAD":
                request.setHeader(b"Content-Length", b"%d" % (len(body),))
                return b""
            return body
        if method in _UPLOAD_METHODS:
            outcome = request.upload_outcome
            if isinstance(outcome, UploadResult):
                return _json_body(
                    request,
                    200,
                    {
                        "status": "received",
                        "method": method.decode("latin-1"),
                        "path": request.path.decode("latin-1"),
                        "upload": outcome.upload_id,
                        "files": outcome.files,
                        "fields": outcome.fields,
                    },
                )
            if isinstance(outcome, UploadRejected):
                return _json_body(
                    request, outcome.status, {"status": "error", "error": outcome.message}
                )
            return _json_body(
                request, 500, {"status": "error", "error": "upload was not processed"}
            )
        request.setHeader(b"Allow", b", ".join(_ALLOWED_METHODS))
        return _json_body(
            request,
            405,
            {"status": "error", "error": f"method {method.decode('latin-1')} not allowed"},
        )


class _SandboxChannel(HTTPChannel):
    """An HTTP/1.1 channel that tells its site when it opens and closes."""

    site: SandboxSite

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site._channel_opened(self)

    def connectionLost(self, reason: Failure) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.site._channel_closed(self)


class SandboxSite(Site):
    """
    The sandbox's web site: streams uploads into C{upload_directory}.

    It tracks its connections so that tests and L{SandboxService} can close
    them (L{close_connections}) and leave a clean reactor behind.
    """

    # Not "log": HTTPFactory.log() writes the access log.
    logger = Logger()
    #: No "Starting factory <...SandboxSite object at 0x...>": the sandbox says where it listens.
    noisy = False
    protocol = _SandboxChannel  # type: ignore[assignment]
    requestFactory = SandboxRequest

    def __init__(
        self,
        upload_directory: FilePath,
        reactor: Any = None,
        upload_path: str = DEFAULT_UPLOAD_PATH,
        keep: Keep = Keep(),
        reject: Mapping[str, int] | None = None,
        language: str = "en",
    ) -> None:
        super().__init__(_SandboxResource(upload_path), reactor=reactor)
        self.upload_directory = upload_directory
        #: The language of the lines logged for the person who runs the sandbox.
        self.language = language
        #: Which uploads stay once a new one is stored (by default, all).
        self.keep = keep
        #: Paths whose uploads are refused with a status, to rehearse a refusal.
        self.reject: dict[str, int] = dict(reject or {})
        self._counter = 0
        self._channels: set[_SandboxChannel] = set()
        self._idle_waiters: list[Deferred[None]] = []

    def refusal_for(self, path: str) -> UploadRejected | None:
        """The refusal L{reject} asks for uploads to C{path}, if any."""
        status = self.reject.get(path)
        if status is None:
            return None
        return UploadRejected(
            status,
            f"the e-PMSI sandbox refuses uploads to {path} with {status}, as it was told "
            f"(--reject {path}={status}): a rehearsal of a refusal; nothing was stored",
        )

    def acceptableProtocols(self) -> list[bytes]:
        """Only HTTP/1.1: body streaming is implemented for it alone."""
        return [b"http/1.1"]

    def close_connections(self) -> Deferred[None]:
        """Abort every open connection; fires once they are all gone."""
        if not self._channels:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        for channel in list(self._channels):
            transport = channel.transport
            if transport is not None:
                transport.abortConnection()  # type: ignore[attr-defined]
        return waiter

    def _channel_opened(self, channel: _SandboxChannel) -> None:
        self._channels.add(channel)

    def _channel_closed(self, channel: _SandboxChannel) -> None:
        self._channels.discard(channel)
        if not self._channels:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def allocate_upload(self) -> tuple[str, FilePath]:
        """
        Reserve a fresh, sortable upload id and create its hidden folder.

        Ids look like C{20261125T192233-000001} (UTC time, then a counter)
        so that C{ls} lists uploads in arrival order.
        """
        self.upload_directory.makedirs(ignoreExistingDirectory=True)
        stamp = datetime.datetime.fromtimestamp(
            self.reactor.seconds(), datetime.timezone.utc
        ).strftime("%Y%m%dT%H%M%S")
        while True:
            self._counter += 1
            upload_id = f"{stamp}-{self._counter:06d}"
            if self.upload_directory.child(upload_id).exists():
                continue
            folder = self.upload_directory.child(f".{upload_id}{PARTIAL_SUFFIX}")
            try:
                os.mkdir(folder.path, 0o700)
            except FileExistsError:
                continue
            return upload_id, folder


def make_sandbox_site(
    upload_directory: FilePath,
    reactor: Any = None,
    upload_path: str = DEFAULT_UPLOAD_PATH,
    keep: Keep = Keep(),
    reject: Mapping[str, int] | None = None,
    language: str = "en",
) -> SandboxSite:
    """
    Build the sandbox web site storing uploads under C{upload_directory}.

    @param reactor: used for upload time stamps and HTTP timeouts; the global
        reactor when L{None}.
    @param upload_path: where the form at C{/} posts (uploads are accepted
        on every path all the same).
    @param keep: which uploads stay once a new one is stored.
    @param reject: paths whose uploads are refused, with the HTTP status.
    @param language: the language of the lines it logs (its pages follow
        each browser's).
    """
    upload_directory.makedirs(ignoreExistingDirectory=True)
    return SandboxSite(upload_directory, reactor, upload_path, keep, reject, language)
