"""
The direct mode: a workstation that has Internet access sends to e-PMSI
itself, over HTTPS, with no relay.  Same upload account, same watchdog and
same reports as through a relay, so that C{--direct} reads the same.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.python.failure import Failure
from twisted.internet.protocol import Protocol
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from epop.epmsi.proxy import ProxyConfig
from epop.epmsi.origin import tls_policy
from epop.epmsi.upstream import CheckResult, Upstream, response_headers
from epop.errors import EpopError, describe_upstream_failure
from epop.messages import Text, reason_of
from epop.multipart import MultipartFileBody
from epop.workstation.deadlines import Watchdog
from epop.workstation.outcomes import Reply, TestReport
from epop.workstation.upload import Upload


class _Collector(Protocol):
    """
    Collects e-PMSI's answer body (direct sending).  Cancelling stops the
    answer, so that a stalled one cannot hold the upload's Deferred.
    """

    def __init__(self, output: Any, reply: Reply, on_data: Any) -> None:
        self.output = output
        self.reply = reply
        self._on_data = on_data
        self.done: Deferred[Reply] = Deferred(self._cancelled)

    def _cancelled(self, _: Deferred[Reply]) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._on_data()
        self.reply.length += len(data)
        try:
            self.output.write(data)
        except OSError as e:
            self.done.errback(
                EpopError(
                    "output-failed",
                    Text("Could not write e-PMSI's answer: {why}.", why=e.strerror or str(e)),
                )
            )
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(self.reply)
        else:
            self.done.errback(reason)


def _upstream(
    reactor: Any, epmsi: str, ca_file: str | None, timeout: float, proxy: ProxyConfig | None
) -> Upstream:
    return Upstream(reactor, epmsi, tls_policy(ca_file), connect_timeout=timeout, proxy=proxy)


def send_direct(
    reactor: Any,
    body: MultipartFileBody,
    path: str,
    *,
    to: str,
    headers: Sequence[tuple[str, str]],
    epmsi: str,
    ca_file: str | None,
    proxy: ProxyConfig | None,
    output: Any,
    timeout: float,
    stall_timeout: float,
) -> Deferred[Reply]:
    """L{epop.workstation.send_file} without a relay: POST C{body} to e-PMSI."""
    try:
        upstream = _upstream(reactor, epmsi, ca_file, timeout, proxy)
    except ValueError as e:
        return fail(EpopError("bad-settings", reason_of(e)))
    sink = output if output is not None else io.BytesIO()

    upload = Upload(body, path, via_relay=False, watchdog=None)
    upload.watchdog = Watchdog(reactor, stall_timeout, upload.stall)

    def answered(response: IResponse) -> Deferred[Reply]:
        reply = Reply(
            response.code,
            response.phrase.decode("latin-1"),
            response_headers(response),
            sent=body.length,
        )
        assert upload.watchdog is not None
        upload.watchdog.progress()
        collector = _Collector(sink, reply, upload.watchdog.progress)
        response.deliverBody(collector)

        def lost(failure: Failure) -> Failure:
            if failure.check(EpopError, CancelledError):
                return failure
            return Failure(describe_upstream_failure(failure, upstream.url, timeout=timeout))

        return collector.done.addErrback(lost)

    def finished(result: Any) -> Deferred[Any]:
        assert upload.watchdog is not None
        upload.watchdog.stop()
        if isinstance(result, Reply) and output is None:
            result.body = sink.getvalue()
        return upstream.close().addCallback(lambda _: result)

    upload.started = True
    upload.watchdog.start()
    d = upstream.request("POST", to, headers, upload.body)
    return upload.follow(d.addCallback(answered).addBoth(finished))


def test_direct(
    reactor: Any,
    *,
    epmsi: str,
    ca_file: str | None,
    proxy: ProxyConfig | None,
    timeout: float,
) -> Deferred[TestReport]:
    """L{epop.workstation.test_connection} without a relay: check e-PMSI itself."""
    try:
        upstream = _upstream(reactor, epmsi, ca_file, timeout, proxy)
    except ValueError as e:
        return succeed(TestReport(None, error=EpopError("bad-settings", reason_of(e)),
                                  failed_step="settings"))

    def checked(result: CheckResult) -> Deferred[TestReport]:
        report = TestReport(None, epmsi=result, error=result.error,
                            failed_step=None if result.ok else "epmsi")
        return upstream.close().addCallback(lambda _: report)

    return upstream.check().addCallback(checked)
