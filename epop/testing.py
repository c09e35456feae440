"""
Test doubles for code that builds on epop, as L{treq.testing} is for treq.

A relay's protocol can run on a fake clock and a memory transport; what it
talks to on the other sides must be faked too, and faked once, here, with
the interfaces the real ones declare (checked by C{tests/test_testing.py}):

 - L{FakeUpstream} stands for e-PMSI's side (L{IUpstream}): the test decides
   when and how e-PMSI answers each request and each check;
 - L{MemoryJournalWriter} keeps the journal's records in a list
   (L{IJournalWriter}).

See C{docs/compose.md} ("Testing code that uses the relay").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import Response
from twisted.web.http import RESPONSES
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from epop.epmsi.proxy import ProxyConfig
from epop.epmsi.upstream import CheckResult, IUpstream
from epop.journal.writer import IJournalWriter

__all__ = ["FakeRequest", "FakeUpstream", "MemoryJournalWriter"]


class FakeRequest(NamedTuple):
    """
    One request the relay asked e-PMSI's side to send, as it asked it.

    @ivar answer: fires the relay's request: call it back with an
        L{IResponse} (L{respond} builds one), or errback it with an
        L{epop.errors.UpstreamError} as the real upstream fails.
    """

    method: str
    path: str
    headers: Sequence[tuple[str, str]]
    body: IBodyProducer | None
    answer: Deferred[IResponse]

    def respond(
        self, code: int = 200, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> IResponse:
        """
        Answer with a whole HTTP/1.1 response: its status, its headers in
        order, and its body, which ends at once.
        """
        raw = Headers()
        for name, value in headers:
            raw.addRawHeader(name.encode("ascii"), value.encode("latin-1"))
        response = Response((b"HTTP", 1, 1), code, RESPONSES.get(code, b""), raw, StringTransport())
        self.answer.callback(response)
        # Twisted's HTTP client feeds a response's body this way; until
        # someone calls deliverBody, the response keeps what it is given.
        if body:
            response._bodyDataReceived(body)
        response._bodyDataFinished()
        return response

    def read_body(self) -> Deferred[bytes]:
        """
        Take the request's body as an HTTP client does: fires with all its
        bytes once the relay has produced them (C{b""} without a body), or
        fails as the body's production fails (an aborted upload).
        """
        if self.body is None:
            return succeed(b"")
        sink = _Collect()
        return self.body.startProducing(sink).addCallback(lambda _: b"".join(sink.chunks))


class _Collect:
    """The consumer a body is written to."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


@implementer(IUpstream)
class FakeUpstream:
    """
    e-PMSI's side, answered by the test.

    Each request is recorded in L{requests} and left waiting for the test's
    answer; each check is recorded in L{checks} and left waiting too, unless
    a C{check_result} is given, which answers every check at once.

    @param url: the origin the relay names in its WELCOME.
    @param proxy: what L{IUpstream.proxy} says.
    @param check_result: the answer to every check, if checks should not wait.
    @param read_bodies: take each request's body at once, as the real
        upstream's HTTP client does, its bytes and its outcome dropped: the
        relay then sees its upload read to the end (or fail) with no more
        help from the test.
    """

    def __init__(
        self,
        url: str = "https://epmsi.example",
        *,
        proxy: ProxyConfig | None = None,
        check_result: CheckResult | None = None,
        read_bodies: bool = False,
    ) -> None:
        self.url = url
        self.proxy = proxy
        self.requests: list[FakeRequest] = []
        self.checks: list[Deferred[CheckResult]] = []
        self.closed = False
        self._check_result = check_result
        self._read_bodies = read_bodies

    def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]],
        body: IBodyProducer | None,
    ) -> Deferred[IResponse]:
        request = FakeRequest(method, path, headers, body, Deferred())
        self.requests.append(request)
        if self._read_bodies:
            request.read_body().addErrback(_ignore)
        return request.answer

    def check(self) -> Deferred[CheckResult]:
        checked: Deferred[CheckResult] = Deferred()
        self.checks.append(checked)
        if self._check_result is not None:
            checked.callback(self._check_result)
        return checked

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)


def _ignore(failure: Failure) -> None:
    return None


@implementer(IJournalWriter)
class MemoryJournalWriter:
    """The journal as a list of records, for tests to read."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.closed = False

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def close(self) -> None:
        self.closed = True
