"""
The workstation-to-relay leg: the relay's protocol and factory.

A connection says HELLO, then runs operations one at a time.  Each operation
is an object, instantiated when it starts and released when it ends, as the
original relay's journal showed: L{RelayedRequest} forwards one HTTP request
to e-PMSI, L{ConnectivityTest} is the manual's "Tester e-PMSI".

Flow control works both ways, as in L{twisted.protocols.portforward}: e-PMSI's
connection pauses the workstation's while the upload is faster than the
Internet link, and the workstation's connection pauses e-PMSI's answer.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from enum import Enum, auto
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from epop.journal import events as journal
from epop._version import __version__
from epop.addressing import client_key, format_peer
from epop.errors import EpopError, ProtocolError, UpstreamError, excerpt
from epop.messages import Text
from epop.relay.pacing import (
    DEFAULT_CHECKS_PER_CLIENT,
    DEFAULT_CHECKS_PER_CONNECTION,
    DEFAULT_FRAME_TIMEOUT,
    DEFAULT_HELLO_TIMEOUT,
    DEFAULT_UPLOAD_GRACE,
    DEFAULT_UPLOAD_MIN_RATE,
    Deadline,
    RatesByClient,
    TokenBucket,
    UploadPace,
    seconds_to_wait,
)
from epop.tuning import HELD_TAIL, ReadBudget, tune
from epop.epmsi.upstream import CheckResult, Upstream, response_headers
from epop.wire import (
    HEADER,
    MAX_BODY_LENGTH,
    MAX_CONTROL_PAYLOAD,
    MAX_DATA_PAYLOAD,
    PROTOCOL_NAME,
    PROTOCOL_VERSIONS,
    Frame,
    FrameReader,
    FrameType,
    encode_message,
    frame_header,
)

__all__ = ["RelayFactory", "RelayProtocol", "RelayedRequest", "ConnectivityTest"]

ALLOWED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

#: Headers the relay owns: framing, hop-by-hop and proxy headers.
FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)

#: Response headers that describe e-PMSI's connection, not the answer.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
     "proxy-authenticate", "proxy-connection"}
)

MAX_HEADERS = 100
MAX_PATH = 8192
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PATH = re.compile(r"/[\x21-\x7e]*")
#: Header values: visible Latin-1 characters, spaces and tabs (RFC 9110 field-value).
_VALUE = re.compile(r"[\t\x20-\x7e\xa0-\xff]*")
#: Time a closing connection gets to flush its last frame.
CLOSE_GRACE = 5.0


class _OversizedFrame(Exception):
    """
    The relay was about to send a control frame over the limit it enforces
    on others: a defect of ours, never sent.
    """

    def __init__(self, kind: FrameType, size: int) -> None:
        super().__init__(f"{kind.name} frame of {size} bytes exceeds {MAX_CONTROL_PAYLOAD}")
        self.kind = kind
        self.size = size


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


def internal_error() -> EpopError:
    return EpopError("internal-error", Text("The relay hit an internal error; see its log."))


def relay_stopping() -> EpopError:
    """What a workstation is told when the relay stops under it."""
    return EpopError(
        "relay-stopping", Text("The relay is stopping; send again once it is back.")
    )


def parse_request(message: dict[str, Any]) -> tuple[str, str, list[tuple[str, str]], int]:
    """Validate a REQUEST frame: the client chooses the path, nothing else."""
    method = message.get("method")
    path = message.get("path")
    headers = message.get("headers", [])
    length = message.get("length")
    if not isinstance(method, str) or method not in ALLOWED_METHODS:
        raise ProtocolError(
            "bad-request",
            f"method '{excerpt(method)}' is not relayed; use one of {', '.join(sorted(ALLOWED_METHODS))}",
        )
    if not isinstance(path, str) or len(path) > MAX_PATH or not _PATH.fullmatch(path):
        raise ProtocolError(
            "bad-request",
            "path must start with '/' and hold only printable ASCII without spaces",
        )
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise ProtocolError("bad-request", "length must be a whole number of bytes, 0 or more")
    if length > MAX_BODY_LENGTH:
        raise ProtocolError("bad-request", f"length must be at most {MAX_BODY_LENGTH} bytes")
    if not isinstance(headers, list) or len(headers) > MAX_HEADERS:
        raise ProtocolError("bad-request", f"headers must be a list of at most {MAX_HEADERS} pairs")
    checked: list[tuple[str, str]] = []
    for pair in headers:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(item, str) for item in pair)
        ):
            raise ProtocolError("bad-request", "each header must be a [name, value] pair of strings")
        name, value = pair
        if not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            raise ProtocolError("bad-request", f"invalid header '{excerpt(name)}'")
        if name.lower() in FORBIDDEN_HEADERS:
            raise ProtocolError("bad-request", f"header '{excerpt(name)}' is set by the relay, not the client")
        checked.append((name, value))
    return method, path, checked, length


class _State(Enum):
    HELLO = auto()
    READY = auto()
    BODY = auto()
    BODY_END = auto()
    BUSY = auto()
    CLOSING = auto()


@implementer(IBodyProducer)
class _ClientBody:
    """
    The upload as e-PMSI's connection sees it: bytes from the workstation,
    hashed on the way, with the body's last L{HELD_TAIL} bytes held back until
    the client's SHA-256 matches.  If it does not, the request is aborted that
    many bytes short, so e-PMSI never receives a complete but corrupt file.

    Holding back a tail rather than the last read keeps what each upload
    pins down in the relay to a few bytes instead of up to a whole read
    (L{epop.tuning.READ_SIZE}), and every read but the one that reaches the
    tail is forwarded as it came, without a copy.
    """

    def __init__(self, length: int, protocol: "RelayProtocol") -> None:
        self.length = length
        self.received = 0
        self._protocol = protocol
        self._sha = hashlib.sha256()
        self._consumer: Any = None
        self._done: Deferred[None] | None = None
        self._early: list[bytes] = []
        self._forwarded = 0
        self._held = b""
        self._verified = False
        self._failure: BaseException | None = None
        self._budget = protocol.factory.read_budget
        self._budget.started()
        self._in_flight = True

    # IBodyProducer, driven by the HTTP client
    def startProducing(self, consumer: Any) -> Deferred[None]:
        self._consumer = consumer
        self._done = Deferred()
        if self._failure is not None:
            self._done.errback(self._failure)
            return self._done
        early, self._early = self._early, []
        for chunk in early:
            self._forward(chunk)
        if self._verified:
            self._flush()
        else:
            self._resume()
        return self._done

    def pauseProducing(self) -> None:
        self._protocol.pause_client()

    def resumeProducing(self) -> None:
        self._resume()

    def _resume(self) -> None:
        # Each read waits in e-PMSI's connection until sent: its size is this
        # upload's share of what the uploads in flight may hold together.
        tune(self._protocol.transport, read_size=self._budget.read_size())
        self._protocol.resume_client()

    def _landed(self) -> None:
        """No more bytes of this upload will be read or held."""
        if self._in_flight:
            self._in_flight = False
            self._budget.ended()

    def stopProducing(self) -> None:
        """
        e-PMSI's connection is gone; its request fails on its own and the
        operation reports that failure.
        """

    # fed by the relay protocol
    def body_received(self, data: bytes) -> None:
        self._sha.update(data)
        self.received += len(data)
        if self._consumer is None:
            self._early.append(data)
        else:
            self._forward(data)

    def _forward(self, data: bytes) -> None:
        releasable = self.length - HELD_TAIL - self._forwarded
        if releasable >= len(data):
            self._consumer.write(data)
            self._forwarded += len(data)
            return
        if releasable > 0:
            self._consumer.write(data[:releasable])
            self._forwarded += releasable
            data = data[releasable:]
        self._held += data

    @property
    def held(self) -> int:
        """Bytes received but kept from e-PMSI until the hash matches."""
        return len(self._held) + sum(len(chunk) for chunk in self._early)

    def verify(self, sha256: object) -> bool:
        """Compare the client's hash; on a match, release the held tail."""
        expected = self._sha.hexdigest()
        if not isinstance(sha256, str) or not hmac.compare_digest(expected, sha256.lower()):
            return False
        self._verified = True
        if self._consumer is not None:
            self._flush()
        return True

    def _flush(self) -> None:
        if self._held:
            self._consumer.write(self._held)
            self._forwarded += len(self._held)
            self._held = b""
        self._landed()
        assert self._done is not None
        self._done.callback(None)
        # The HTTP client unregisters us once the body is done: it will not
        # resume the workstation's connection if its last write paused it.
        self._protocol.resume_client()

    def abort(self, reason: BaseException) -> None:
        """Make e-PMSI's request fail; it never gets the held tail."""
        self._held = b""
        self._early = []
        self._failure = reason
        self._landed()
        if self._done is not None and not self._done.called:
            self._done.errback(reason)


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
        self.body = _ClientBody(length, protocol) if length else None
        self._headers = headers
        self._request: Deferred[IResponse] | None = None
        factory = protocol.factory
        self._timeout = factory.epmsi_timeout
        self._watchdog = protocol.clock.callLater(self._timeout, self._stalled)
        self._pace: UploadPace | None = None
        protocol.journal_event(
            "object-instantiated",
            "Object instantiated: {kind} {method} {path} ({length} bytes)",
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
        self._request.addCallbacks(self._answered, self._failed).addErrback(self._crashed)

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
        except _OversizedFrame as oversized:
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

    def _crashed(self, failure: Failure) -> None:
        """A bug of ours: say so to the workstation rather than hang."""
        self.protocol.log.failure("Relayed request failed unexpectedly", failure)
        self.protocol.fail(internal_error())

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
        self.protocol.journal_event(
            "object-released",
            "Object released: {kind} {method} {path}: {outcome}",
            level=LogLevel.info if outcome == "completed" else LogLevel.warn,
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
            "object-instantiated", "Object instantiated: {kind}", kind=self.kind
        )
        self._check = protocol.factory.upstream.check()
        self._check.addCallback(self._checked).addErrback(self._crashed)

    def _crashed(self, failure: Failure) -> None:
        """A bug of ours: say so to the workstation rather than hang."""
        self.protocol.log.failure("Connectivity test failed unexpectedly", failure)
        self.protocol.fail(internal_error())

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
        self.protocol.journal_event(
            "object-released",
            "Object released: {kind}: {outcome}",
            level=LogLevel.info if fields["outcome"] == "completed" else LogLevel.warn,
            kind=self.kind,
            **fields,
        )

    def abort(self, error: EpopError | None) -> None:
        if not self._finished:
            self._release(None, error)
            self._check.cancel()


class RelayProtocol(Protocol, TimeoutMixin):
    """
    One workstation's connection.  The idle timeout runs only while the relay
    waits for the workstation, never while e-PMSI is the slow side.

    The idle timeout restarts at every byte, so deadlines that a trickle
    cannot extend back it up (L{epop.relay.pacing}): the whole HELLO, each whole
    control frame, and an upload's average rate.  None of them counts the
    time the relay itself holds the workstation back.
    """

    log = Logger()

    def __init__(self, factory: "RelayFactory", connection_id: int) -> None:
        self.factory = factory
        self.clock = factory.reactor
        self.connection_id = connection_id
        self.client = "?"
        self.bytes_in = 0
        self.bytes_out = 0
        self.operation: RelayedRequest | ConnectivityTest | None = None
        self._reader = FrameReader()
        self._state = _State.HELLO
        self._close_reason: str | None = None
        self._close_error: str | None = None
        self._opened = 0.0
        self._paused = False
        #: Seconds the relay has held the workstation back (not counting
        #: the current hold), and since when it holds it, if it does.
        self._held_total = 0.0
        self._held_since: float | None = None
        self._journaled = False
        self._grace: Any = None
        self._hello_deadline = Deadline(self.clock, factory.hello_timeout, self._hello_too_slow)
        self._frame_deadline = Deadline(self.clock, factory.frame_timeout, self._frame_too_slow)
        self._checks: TokenBucket | None = None
        self.lost = Deferred[None]()

    def callLater(self, period: float, func: Any) -> Any:
        return self.clock.callLater(period, func)

    def journal_event(self, event_type: str, format: str, **fields: Any) -> None:
        journal.emit(
            self.log,
            self.factory.relay_id,
            event_type,
            format,
            connection=self.connection_id,
            client=self.client,
            **fields,
        )

    # connection lifetime
    def connectionMade(self) -> None:
        self._opened = self.clock.seconds()
        self.factory.connections[self.connection_id] = self
        self.setTimeout(self.factory.idle_timeout)
        self._hello_deadline.start()
        if self.factory.draining:
            # Accepted before listening stopped, but it has no operation yet.
            self.fail(relay_stopping())

    def opened(self) -> None:
        """
        Journal the connection's opening, once its peer is known for sure:
        behind a load balancer speaking the PROXY protocol, the real client's
        address is known only after the first bytes.
        """
        if self._journaled:
            return
        self._journaled = True
        self.client = format_peer(self.transport.getPeer())
        self.journal_event(
            "connection-opened", "Connection {connection} opened from {client}"
        )

    def connectionLost(self, reason: Failure = ResponseDone) -> None:
        self.opened()
        self._state = _State.CLOSING
        self.setTimeout(None)
        self._stop_deadlines()
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        if self.operation is not None:
            if self._close_reason is None and getattr(self.operation, "awaiting_body", False):
                self._close_reason = "short-body"
            self.operation.abort(None)
            self.operation = None
        if self._close_reason is None:
            self._close_reason = "truncated-frame" if self._reader.pending else "closed-by-client"
        self.factory.connections.pop(self.connection_id, None)
        self.journal_event(
            "connection-closed",
            "Connection {connection} from {client} closed: {reason}",
            duration=round(self.clock.seconds() - self._opened, 6),
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            reason=self._close_reason,
            **({"error": self._close_error} if self._close_error else {}),
        )
        self.lost.callback(None)

    def ending_because(self, reason: str, error: str | None = None) -> None:
        """
        Why the connection is ending, from a layer around it that knows
        (TLS, the PROXY header), unless the relay already decided.
        """
        if self._close_reason is None:
            self._close_reason, self._close_error = reason, error

    def timeoutConnection(self) -> None:
        self.fail(
            ProtocolError(
                "idle-timeout",
                Text(
                    "The relay waited {seconds} s for this workstation and received "
                    "nothing; the connection is closed.",
                    seconds=f"{self.factory.idle_timeout:g}",
                ),
            )
        )

    def _stop_deadlines(self) -> None:
        self._hello_deadline.stop()
        self._frame_deadline.stop()

    def _hello_too_slow(self) -> None:
        self.fail(
            ProtocolError(
                "hello-timeout",
                Text(
                    "The workstation did not send its whole HELLO, the start of every e-POP "
                    "session, within {seconds} s; the connection is closed.",
                    seconds=f"{self.factory.hello_timeout:g}",
                ),
            )
        )

    def _frame_too_slow(self) -> None:
        self.fail(
            ProtocolError(
                "frame-timeout",
                Text(
                    "A frame from the workstation took more than {seconds} s to arrive whole; "
                    "the connection is closed. Check the network between the workstation "
                    "and the relay.",
                    seconds=f"{self.factory.frame_timeout:g}",
                ),
            )
        )

    # sending
    def send_message(self, kind: FrameType, message: dict[str, Any]) -> None:
        """
        Send a control frame.  The relay never sends what it would refuse
        to read: a frame over the limit raises L{_OversizedFrame} instead.
        """
        frame = encode_message(kind, message)
        size = len(frame) - HEADER.size
        if size > MAX_CONTROL_PAYLOAD:
            raise _OversizedFrame(kind, size)
        self.bytes_out += len(frame)
        self.transport.write(frame)

    def send_data(self, data: bytes) -> None:
        for start in range(0, len(data), MAX_DATA_PAYLOAD):
            chunk = data[start : start + MAX_DATA_PAYLOAD] if len(data) > MAX_DATA_PAYLOAD else data
            self.bytes_out += HEADER.size + len(chunk)
            self.transport.writeSequence([frame_header(FrameType.DATA, len(chunk)), chunk])

    def fail(self, error: EpopError) -> None:
        """Send an error frame and close: the connection cannot go on."""
        if self._state is _State.CLOSING:
            return
        self.opened()
        self._state = _State.CLOSING
        self._close_reason = error.code
        self.setTimeout(None)
        self._stop_deadlines()
        operation, self.operation = self.operation, None
        if operation is not None:
            operation.abort(error)
        try:
            self.send_message(FrameType.ERROR, error.to_wire())
        except _OversizedFrame as oversized:
            self.log.critical(
                "Connection {connection}: the {code} error frame would be {size} bytes, "
                "over the protocol's limit; sent as internal-error",
                connection=self.connection_id,
                code=error.code,
                size=oversized.size,
            )
            self.send_message(FrameType.ERROR, internal_error().to_wire())
        self.transport.loseConnection()
        # A peer that does not read could keep a closing connection forever.
        self._grace = self.clock.callLater(CLOSE_GRACE, self.transport.abortConnection)

    # flow control for the upload: e-PMSI's side pauses the workstation's
    def pause_client(self) -> None:
        if not self._paused:
            self._held_since = self.clock.seconds()
        self._paused = True
        self.setTimeout(None)
        self._frame_deadline.hold()
        self.transport.pauseProducing()

    def resume_client(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self._held_since is not None:
            self._held_total += self.clock.seconds() - self._held_since
            self._held_since = None
        self._frame_deadline.release()
        if isinstance(self.operation, RelayedRequest):
            self.operation.progress()  # e-PMSI took what it had
        if self._state in (_State.BODY, _State.BODY_END):
            self.setTimeout(self.factory.idle_timeout)
        self.transport.resumeProducing()

    def held_seconds(self) -> float:
        """Seconds the relay has held this workstation back so far."""
        if self._held_since is None:
            return self._held_total
        return self._held_total + self.clock.seconds() - self._held_since

    # receiving
    def dataReceived(self, data: bytes) -> None:
        if not self._journaled:
            self.opened()
        self.bytes_in += len(data)
        if self._state is _State.CLOSING:
            return
        if not self._paused:
            self.resetTimeout()
        try:
            for item in self._reader.feed(data):
                if self._state is _State.CLOSING:
                    return
                if isinstance(item, bytes):
                    self._body_received(item)
                else:
                    self._frame_received(item)
        except EpopError as error:
            self.fail(error)
        except Exception:
            self.log.failure("Unexpected error on connection {connection}", connection=self.connection_id)
            self.fail(internal_error())
            return
        # A control frame has begun: it must now arrive whole in time (the
        # HELLO has its own deadline, from the connection's first byte).
        if self._reader.pending and not self._frame_deadline.running:
            if self._state is not _State.CLOSING and self._state is not _State.HELLO:
                self._frame_deadline.start()

    def _body_received(self, data: bytes) -> None:
        operation = self.operation
        assert isinstance(operation, RelayedRequest)
        operation.body_received(data)
        if not self._reader.raw_outstanding:
            self._state = _State.BODY_END
            operation.body_complete()

    def _frame_received(self, frame: Frame) -> None:
        expected = {
            _State.HELLO: (FrameType.HELLO,),
            _State.READY: (FrameType.REQUEST, FrameType.CHECK),
            _State.BODY_END: (FrameType.BODY_END,),
        }.get(self._state, ())
        self._frame_deadline.stop()
        if frame.kind not in expected:
            raise ProtocolError(
                "unexpected-frame",
                f"{frame.kind.name} frame was not expected here"
                + (f"; expected {' or '.join(k.name for k in expected)}" if expected else ""),
            )
        message = frame.message()
        if frame.kind is FrameType.HELLO:
            self._hello(message)
        elif frame.kind is FrameType.REQUEST:
            self._request(message)
        elif frame.kind is FrameType.CHECK:
            self._admit_check()
            self._state = _State.BUSY
            self.setTimeout(None)
            self.operation = ConnectivityTest(self)
        else:
            self._body_end(message)

    def _admit_check(self) -> None:
        """
        Each check opens a new TLS connection to e-PMSI: allow a few, per
        connection and per client address, not a loop.
        """
        factory = self.factory
        now = self.clock.seconds()
        limits: list[tuple[TokenBucket, Callable[[str, str], Text]]] = []
        if factory.checks_per_connection:
            if self._checks is None:
                self._checks = TokenBucket(factory.checks_per_connection, now)
            limits.append((self._checks, _too_many_checks_on_connection))
        if factory.check_rates is not None:
            host = getattr(self.transport.getPeer(), "host", "") or "?"
            bucket = factory.check_rates.bucket(client_key(host), now)
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

    def _hello(self, message: dict[str, Any]) -> None:
        versions = message.get("versions")
        if message.get("protocol") != PROTOCOL_NAME or not isinstance(versions, list):
            raise ProtocolError("bad-frame", "HELLO must name protocol 'e-pop' and its versions")
        offered = {v for v in versions if type(v) is int}
        common = [v for v in PROTOCOL_VERSIONS if v in offered]
        if not common:
            # Quote the offer briefly: a message must not grow with its input.
            shown = ", ".join(excerpt(v, 12) for v in versions[:8])
            if len(versions) > 8:
                shown += ", ..."
            raise ProtocolError(
                "unsupported-version",
                Text(
                    "This relay speaks e-POP protocol version {ours}; the workstation "
                    "offered {theirs}. Update the older of the two.",
                    ours=", ".join(map(str, PROTOCOL_VERSIONS)),
                    theirs=excerpt(shown) or "-",
                ),
            )
        self._hello_deadline.stop()
        self.send_message(
            FrameType.WELCOME,
            {"version": max(common), "relay": f"epop {__version__}", "epmsi": self.factory.upstream.url},
        )
        self._state = _State.READY

    def _request(self, message: dict[str, Any]) -> None:
        method, path, headers, length = parse_request(message)
        if length:
            # The body's first bytes start e-PMSI's request (RelayedRequest).
            self._state = _State.BODY
            self._reader.expect_raw(length)
        else:
            self._state = _State.BUSY
            self.setTimeout(None)
        self.operation = RelayedRequest(self, method, path, headers, length)

    def _body_end(self, message: dict[str, Any]) -> None:
        operation = self.operation
        assert isinstance(operation, RelayedRequest)
        self._state = _State.BUSY
        self.setTimeout(None)
        operation.body_ended(message.get("sha256"))

    def operation_finished(self, operation: object) -> None:
        if self.operation is operation:
            self.operation = None
            self._state = _State.READY
            self.setTimeout(self.factory.idle_timeout)
            if self.factory.draining:
                self.fail(relay_stopping())


class RelayFactory(Factory):
    """
    Builds one L{RelayProtocol} per workstation connection and numbers them,
    as the manual's journal did ("Id de connexion").

    @param reactor: the clock and network for every connection.
    @param upstream: the e-PMSI side shared by all connections.
    @param relay_id: tags this relay's journal events.
    @param hello_timeout: seconds a connection has to send its whole HELLO.
    @param frame_timeout: seconds a control frame has to arrive whole, from
        its first byte.
    @param upload_min_rate: bytes per second an upload must average, once
        C{upload_grace} seconds have passed; 0 for no minimum.
    @param checks_per_connection: e-PMSI checks allowed a minute on one
        connection (0: no limit).
    @param checks_per_client: the same for all the connections of one
        client address (0: no limit).
    """

    protocol = RelayProtocol
    noisy = False  # the journal says when listening opens and closes
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        upstream: Upstream,
        relay_id: str,
        *,
        idle_timeout: float = 120.0,
        epmsi_timeout: float = 300.0,
        hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
        frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
        upload_min_rate: float = DEFAULT_UPLOAD_MIN_RATE,
        upload_grace: float = DEFAULT_UPLOAD_GRACE,
        checks_per_connection: int = DEFAULT_CHECKS_PER_CONNECTION,
        checks_per_client: int = DEFAULT_CHECKS_PER_CLIENT,
    ) -> None:
        self.reactor = reactor
        self.upstream = upstream
        self.relay_id = relay_id
        self.idle_timeout = idle_timeout
        self.epmsi_timeout = epmsi_timeout
        self.hello_timeout = hello_timeout
        self.frame_timeout = frame_timeout
        self.upload_min_rate = upload_min_rate
        self.upload_grace = upload_grace
        self.checks_per_connection = checks_per_connection
        #: Each client address's allowance of checks (None: no limit).
        self.check_rates = RatesByClient(checks_per_client) if checks_per_client else None
        self.connections: dict[int, RelayProtocol] = {}
        #: How much each upload in flight reads per call.
        self.read_budget = ReadBudget()
        #: Set once the relay is stopping: no new operation starts.
        self.draining = False
        self._next_id = 1

    def buildProtocol(self, addr: IAddress) -> RelayProtocol:
        connection_id = self._next_id
        self._next_id += 1
        protocol = RelayProtocol(self, connection_id)
        return protocol

    def close_connections(self) -> Deferred[Any]:
        """Close every open connection (relay stopping) and wait for them."""
        waiting = []
        for protocol in list(self.connections.values()):
            waiting.append(protocol.lost)
            protocol.fail(relay_stopping())
        return gatherResults(waiting)

    def drain(self, seconds: float) -> Deferred[None]:
        """
        Let the operations in flight finish before the relay stops, so that a
        restart does not cost a DIM a long upload: idle connections are
        closed now, each busy one once its operation ends, and those still
        busy after C{seconds} are aborted (e-PMSI never gets their last
        chunk, so never a complete file).  Fires once every connection is
        closed.
        """
        self.draining = True
        busy = 0
        for protocol in list(self.connections.values()):
            if protocol.operation is None:
                protocol.fail(relay_stopping())
            else:
                busy += 1
        if not self.connections:
            return succeed(None)
        if busy:
            self.log.info(
                "Relay stopping: waiting up to {seconds} s for {count} operation(s) in flight",
                seconds=f"{seconds:g}",
                count=busy,
            )
        deadline = self.reactor.callLater(max(seconds, 0.0), self._drain_deadline)

        def closed(result: object) -> Deferred[None] | None:
            # A connection accepted just before listening stopped may still
            # have been building its protocol: wait for it too.
            if self.connections:
                return gatherResults([p.lost for p in self.connections.values()]).addCallback(closed)
            if deadline.active():
                deadline.cancel()
            return None

        return gatherResults([p.lost for p in self.connections.values()]).addCallback(closed)

    def _drain_deadline(self) -> None:
        busy = [p for p in self.connections.values() if p.operation is not None]
        if busy:
            self.log.warn(
                "Relay stopping: {count} operation(s) still in flight after the grace "
                "period are aborted",
                count=len(busy),
            )
        self.close_connections()
