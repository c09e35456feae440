"""
A multipart/form-data upload streamed from disk.

e-PMSI takes files as HTML form uploads.  A PMSI archive can weigh several
GB, so the body is never built in memory: its length is computed up front
(e-PMSI gets a Content-Length, and the e-POP protocol needs one), then the
form fields, the file and the closing boundary are written in chunks as the
connection asks for them.
"""

from __future__ import annotations

import os
import secrets
from contextlib import suppress
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred
from twisted.internet.task import Cooperator, NotPaused, TaskFinished, TaskStopped
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

__all__ = ["MultipartFileBody", "make_cooperator"]

READ_SIZE = 256 * 1024


def make_cooperator(reactor: Any) -> Cooperator:
    """A cooperator driven by C{reactor}, not the global one."""
    return Cooperator(scheduler=lambda work: reactor.callLater(0, work))


def _quote(value: str) -> bytes:
    """Quote a name or file name inside Content-Disposition, as browsers do."""
    return (
        value.replace("\\", "\\\\")
        .replace('"', "%22")
        .replace("\r", "%0D")
        .replace("\n", "%0A")
        .encode("utf-8")
    )


@implementer(IBodyProducer)
class MultipartFileBody:
    """
    A form with text C{fields} and one file part, produced chunk by chunk.

    @param path: the file to send; its size is read now and must not change.
    @param field: the form field that carries the file.
    @param fields: other form fields, in order, as (name, value) pairs.
    @param cooperator: schedules reads; see L{make_cooperator}.
    """

    def __init__(
        self,
        path: str,
        *,
        field: str,
        cooperator: Cooperator,
        fields: Sequence[tuple[str, str]] = (),
        filename: str | None = None,
        content_type: str = "application/octet-stream",
        read_size: int = READ_SIZE,
    ) -> None:
        self.path = path
        self.file_size = os.path.getsize(path)
        boundary = "epop-" + secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={boundary}"
        mark = b"--" + boundary.encode("ascii")
        parts = []
        for name, value in fields:
            parts.append(
                mark
                + b'\r\nContent-Disposition: form-data; name="'
                + _quote(name)
                + b'"\r\n\r\n'
                + value.encode("utf-8")
                + b"\r\n"
            )
        name = filename if filename is not None else os.path.basename(path)
        parts.append(
            mark
            + b'\r\nContent-Disposition: form-data; name="'
            + _quote(field)
            + b'"; filename="'
            + _quote(name)
            + b'"\r\nContent-Type: '
            + content_type.encode("ascii")
            + b"\r\n\r\n"
        )
        self._preamble = b"".join(parts)
        #: Where the file's bytes start in the body: what comes before is the form's.
        self.file_offset = len(self._preamble)
        self._epilogue = b"\r\n" + mark + b"--\r\n"
        self.length = len(self._preamble) + self.file_size + len(self._epilogue)
        self._cooperator = cooperator
        self._read_size = read_size
        self._task: Any = None

    def _chunks(self, source: BinaryIO, consumer: Any) -> Iterator[None]:
        consumer.write(self._preamble)
        yield None
        left = self.file_size
        while left:
            chunk = source.read(min(self._read_size, left))
            if not chunk:
                raise OSError(
                    f"{self.path} got shorter while it was being sent; send it again "
                    "once nothing is writing to it"
                )
            left -= len(chunk)
            consumer.write(chunk)
            yield None
        consumer.write(self._epilogue)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        source = open(self.path, "rb")
        self._task = self._cooperator.cooperate(self._chunks(source, consumer))
        d = self._task.whenDone()

        def done(result: object) -> object:
            source.close()
            return result

        def stopped(failure: Any) -> Any:
            # After stopProducing, IBodyProducer's Deferred must never fire.
            failure.trap(TaskStopped)
            return Deferred()

        return d.addBoth(done).addCallback(lambda _: None).addErrback(stopped)

    # A transport stops its producer when the connection is lost, and the
    # protocol may stop it again while failing the operation: every call
    # after the task has finished, or been stopped, is a no-op.  (Twisted's
    # TaskStopped and TaskDone are siblings under TaskFinished.)

    def pauseProducing(self) -> None:
        with suppress(TaskFinished):
            self._task.pause()

    def resumeProducing(self) -> None:
        with suppress(TaskFinished, NotPaused):
            self._task.resume()

    def stopProducing(self) -> None:
        with suppress(TaskFinished):
            self._task.stop()
