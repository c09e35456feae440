"""
What a relay connection does once past HELLO: its operations, one at a
time, as the original relay's journal showed them ("Object instantiated",
"Object released").

L{RelayedRequest} forwards one HTTP request to e-PMSI, L{ConnectivityTest}
is the manual's "Tester e-PMSI" (as often as L{CheckAllowance} lets it).  Each is an object instantiated when it
starts and released when it ends; the protocol (L{epop.relay.protocol})
decides when one may start, the operation what happens until it ends.

Flow control works both ways, as in L{twisted.protocols.portforward}: e-PMSI's
connection pauses the workstation's while the upload is faster than the
Internet link, and the workstation's connection pauses e-PMSI's answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from epop.epmsi.upstream import CheckResult, response_headers
from epop.addressing import client_key
from epop.errors import EpopError, ProtocolError, UpstreamError
from epop.journal import events as journal
from epop.messages import Text
from epop.relay.failures import OversizedFrame, internal_error
from epop.relay.pacing import RatesByClient, TokenBucket, UploadPace, seconds_to_wait
from epop.relay.request_rules import HOP_BY_HOP
from epop.relay.upload_body import UploadBody
from epop.wire import MAX_CONTROL_PAYLOAD, FrameType

if TYPE_CHECKING:
    from epop.relay.protocol import RelayProtocol

__all__ = ["CheckAllowance", "ConnectivityTest", "RelayedRequest"]


def _crashed(failure: Failure, protocol: "RelayProtocol", what: str) -> None:
    """A bug of ours: say so to the workstation rather than hang."""
    protocol.log.failure(what, failure)
    protocol.fail(internal_error())


class _ResponseStreamer(Protocol):
    """Carries e-PMSI's answer to the workstation as DATA frames."""

    def __init__(self, operation: "RelayedRequest") -> None:
        self._operation = operation
        self.length = 0

    def connectionMade(self) -> None:
        self._operation.protocol.transport.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.length += len(data)
        self._operation.progress()
        self._operation.protocol.send_data(data)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:
        self._operation.protocol.transport.unregisterProducer()
        self._operation.response_finished(reason)


class _Dropper(Protocol):
    """Takes an answer the relay cannot pass on, and closes its connection."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()


class RelayedRequest:
    """
    One HTTP request relayed to e-PMSI, from REQUEST frame to RESPONSE_END.

    A request without a body goes to e-PMSI at once; an upload only once its
    first body bytes are in, so a client that declares a body and sends none
    never holds a connection to e-PMSI.
    """

    def __init__(
        self,
        protocol: "RelayProtocol",
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        length: int,
    ) -> None:
        self.protocol = protocol
        self.method = method
        self.path = path
        self.length = length
        self.kind = "upload" if length else "request"
        self.started = protocol.clock.seconds()
        self.status: int | None = None
        self.integrity = "pending" if length else "none"
        self._streamer: _ResponseStreamer | None = None
        self._response_done = False
        self._finished = False
        self.body = UploadBody(length, protocol) if length else None
        self._headers = headers
        self._request: Deferred[IResponse] | None = None
        factory = protocol.factory
        self._timeout = factory.epmsi_timeout
        self._watchdog = protocol.clock.callLater(self._timeout, self._stalled)
        self._pace: UploadPace | None = None
        protocol.journal_event(
            "object-instantiated",
            Text("Object instantiated: {kind} {method} {path} ({length} bytes)").template,
            kind=self.kind,
            method=method,
            path=journal.strip_query(path),
            length=length,
        )
        if self.body is None:
            self._start()
            return
        body = self.body
        self._pace = UploadPace(
            protocol.clock,
            factory.upload_min_rate,
            factory.upload_grace,
            received=lambda: body.received,
            held=protocol.held_seconds,
            too_slow=self._too_slow,
        )

    def _start(self) -> None:
        """Send the request to e-PMSI."""
        self._request = self.protocol.factory.upstream.request(
            self.method, self.path, self._headers, self.body
        )
        self._request.addCallbacks(self._answered, self._failed).addErrback(
            _crashed, self.protocol, "Relayed request failed unexpectedly"
        )

    def progress(self) -> None:
        """Bytes moved: the operation is alive."""
        if self._watchdog.active():
            self._watchdog.reset(self._timeout)

    def _stalled(self) -> None:
        self.protocol.fail(
            EpopError(
                "stalled",
                Text(
                    "Nothing moved between the workstation and e-PMSI for {seconds} s "
                    "(e-PMSI stopped answering, or the workstation stopped reading); "
                    "the operation was cancelled.",
                    seconds=f"{self._timeout:g}",
                ),
            )
        )

    @property
    def awaiting_body(self) -> bool:
        return self.body is not None and self.integrity == "pending"

    def _too_slow(self, received: int, active: float) -> None:
        # Whole bytes/s, never "1e+07": the rate rounded down and the
        # minimum up, so that the rate shown is always below the minimum.
        rate = int(received // active) if active > 0 else 0
        minimum = int(-(-self.protocol.factory.upload_min_rate // 1))
        self.protocol.fail(
            EpopError(
                "upload-too-slow",
                Text(
                    "The upload reached the relay at {rate} bytes/s on average over {seconds} s, "
                    "below the {minimum} bytes/s this relay requires; it was cancelled and "
                    "e-PMSI did not receive the file. Check the network between the "
                    "workstation and the relay, then send the file again.",
                    rate=str(rate),
                    seconds=f"{active:.0f}",
                    minimum=str(minimum),
                ),
            )
        )

    def body_received(self, data: bytes) -> None:
        assert self.body is not None
        self.progress()
        self.body.body_received(data)
        if self._request is None:
            # The first body bytes: hold the rest of the upload until
            # e-PMSI's connection is ready for it.
            self.protocol.pause_client()
            self._start()

    def body_complete(self) -> None:
        """Every body byte is in: the upload's pace no longer matters."""
        if self._pace is not None:
            self._pace.stop()

    def body_ended(self, sha256: object) -> None:
        assert self.body is not None
        if self.body.verify(sha256):
            self.integrity = "ok"
            self._end_response()
            return
        self.integrity = "mismatch"
        self.protocol.fail(
            EpopError(
                "integrity-mismatch",
                Text(
                    "The file changed on its way to the relay: its SHA-256 does not match "
                    "what the workstation sent. Nothing was delivered to e-PMSI; send it again."
                ),
            )
        )

    def _answered(self, response: IResponse) -> None:
        self.progress()
        self.status = response.code
        headers = [
            [name, value] for name, value in response_headers(response) if name.lower() not in HOP_BY_HOP
        ]
        try:
            self.protocol.send_message(
                FrameType.RESPONSE,
                {
                    "status": response.code,
                    "reason": response.phrase.decode("latin-1"),
                    "headers": headers,
                },
            )
        except OversizedFrame as oversized:
            response.deliverBody(_Dropper())
            self.protocol.fail(
                UpstreamError(
                    "epmsi-answer-too-large",
                    Text(
                        "e-PMSI's answer has headers too large to pass on ({size} bytes, "
                        "the e-POP protocol allows {limit}); the operation was cancelled.",
                        size=oversized.size,
                        limit=MAX_CONTROL_PAYLOAD,
                    ),
                )
            )
            return
        self._streamer = _ResponseStreamer(self)
        response.deliverBody(self._streamer)

    def _failed(self, failure: Failure) -> None:
        if self._finished or failure.check(CancelledError):
            return
        failure.trap(EpopError)
        self.protocol.fail(failure.value)

    def response_finished(self, reason: Failure) -> None:
        if self._finished:
            return
        if not reason.check(ResponseDone, PotentialDataLoss):
            self.protocol.fail(
                UpstreamError(
                    "epmsi-unreachable",
                    Text("e-PMSI's answer was cut short: {why}.", why=reason.getErrorMessage()),
                    "connection-lost",
                )
            )
            return
        self._response_done = True
        self._end_response()

    def _end_response(self) -> None:
        """
        RESPONSE_END goes out only once e-PMSI's answer has ended and the
        upload (if any) has been verified: to the workstation it means done.
        """
        if self._response_done and not self.awaiting_body:
            assert self._streamer is not None
            self._finished = True
            self._watchdog.cancel()
            self.body_complete()
            self.protocol.send_message(FrameType.RESPONSE_END, {"length": self._streamer.length})
            self._release("completed")
            self.protocol.operation_finished(self)

    def abort(self, error: EpopError | None) -> None:
        """
        Stop e-PMSI's side of the operation: because of C{error}, or, with
        C{None}, because the workstation went away.
        """
        if self._finished:
            return
        self._finished = True
        if self._watchdog.active():
            self._watchdog.cancel()
        self.body_complete()
        if error is None:
            outcome = "short-body" if self.awaiting_body else "client-disconnected"
            if self.awaiting_body:
                self.integrity = "short-body"
            error = EpopError(outcome, "the workstation disconnected before the end")
        if self.body is not None:
            self.body.abort(error)
        if self._request is not None:
            self._request.cancel()
        if self._streamer is not None and self._streamer.transport is not None:
            self._streamer.transport.stopProducing()
        self._release(error.code, error.cause)

    def _release(self, outcome: str, cause: str | None = None) -> None:
        fields: dict[str, Any] = {}
        if cause is not None:
            fields["error"] = cause
        self.protocol.journal_released(
            Text("Object released: {kind} {method} {path}: {outcome}").template,
            kind=self.kind,
            method=self.method,
            path=journal.strip_query(self.path),
            length=self.body.received if self.body is not None else 0,
            integrity=self.integrity,
            status=self.status,
            outcome=outcome,
            duration=round(self.protocol.clock.seconds() - self.started, 6),
            **fields,
        )


class ConnectivityTest:
    """The manual's "Tester": can this relay reach e-PMSI right now?"""

    kind = "test"

    def __init__(self, protocol: "RelayProtocol") -> None:
        self.protocol = protocol
        self._finished = False
        protocol.journal_event(
            "object-instantiated", Text("Object instantiated: {kind}").template, kind=self.kind
        )
        self._check = protocol.factory.upstream.check()
        self._check.addCallback(self._checked).addErrback(
            _crashed, protocol, "Connectivity test failed unexpectedly"
        )

    def _checked(self, result: CheckResult) -> None:
        if self._finished:
            return
        self.protocol.send_message(FrameType.CHECK_RESULT, result.to_wire())
        self._release(result)
        self.protocol.operation_finished(self)

    def _release(self, result: CheckResult | None, error: EpopError | None = None) -> None:
        self._finished = True
        fields: dict[str, Any] = {"outcome": error.code if error else "client-disconnected"}
        if result is not None:
            fields = {
                "outcome": "completed" if result.ok else "epmsi-unreachable",
                "status": result.status,
                "epmsi_address": result.address,
                "duration": round(result.elapsed, 6),
            }
            if result.error is not None and result.error.cause is not None:
                fields["error"] = result.error.cause
        self.protocol.journal_released(Text("Object released: {kind}: {outcome}").template, kind=self.kind, **fields)

    def abort(self, error: EpopError | None) -> None:
        if not self._finished:
            self._release(None, error)
            self._check.cancel()


def _too_many_checks_on_connection(limit: str, seconds: str) -> Text:
    return Text(
        "Too many e-PMSI checks on this connection: this relay allows {limit} a minute; "
        "try again in {seconds} s.",
        limit=limit,
        seconds=seconds,
    )


def _too_many_checks_from_address(limit: str, seconds: str) -> Text:
    return Text(
        "Too many e-PMSI checks from this workstation's address: this relay allows {limit} "
        "a minute; try again in {seconds} s.",
        limit=limit,
        seconds=seconds,
    )


class CheckAllowance:
    """
    How many connectivity tests one connection may run.  Each opens a new
    TLS connection to e-PMSI: allow a few a minute, per connection and per
    client address, not a loop.

    @param per_connection: checks a minute on this connection (0: no limit).
    @param by_client: every client address's allowance, shared by the
        relay's connections (C{None}: no limit).
    """

    def __init__(self, per_connection: int, by_client: RatesByClient | None) -> None:
        self._per_connection = per_connection
        self._by_client = by_client
        self._bucket: TokenBucket | None = None

    def take(self, host: str, now: float) -> None:
        """
        Count one check from C{host}.

        @raise ProtocolError: C{too-many-checks}, saying when to try again.
        """
        limits: list[tuple[TokenBucket, Callable[[str, str], Text]]] = []
        if self._per_connection:
            if self._bucket is None:
                self._bucket = TokenBucket(self._per_connection, now)
            limits.append((self._bucket, _too_many_checks_on_connection))
        if self._by_client is not None:
            bucket = self._by_client.bucket(client_key(host), now)
            limits.append((bucket, _too_many_checks_from_address))
        refused = [(bucket.wait(now), bucket, text) for bucket, text in limits]
        refused = [found for found in refused if found[0] > 0]
        if refused:
            wait, bucket, text = max(refused, key=lambda found: found[0])
            raise ProtocolError(
                "too-many-checks", text(f"{bucket.capacity:g}", str(seconds_to_wait([wait])))
            )
        for bucket, _ in limits:
            bucket.take(now)
