"""
The workstation side: send a file to e-PMSI, or test the connection, either
through a relay (e-POP protocol) or directly (HTTPS).

Everything returns a L{Deferred} and takes the reactor as its first argument::

    from twisted.internet.task import react
    from epop.workstation.client import RelayAddress, send_file

    def main(reactor):
        d = send_file(reactor, "rss.zip", to="/syriusUpload.do", field="theFile",
                      relay=RelayAddress.parse("10.1.2.3"))
        d.addCallback(lambda reply: print(reply.status, reply.body))
        return d

    react(main)
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectingCancelledError, ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from epop._version import __version__
from epop.addressing import DEFAULT_PORT, format_peer, host_port
from epop.errors import (
    EpopError,
    ProtocolError,
    RelayError,
    describe_connect_failure,
    describe_relay_tls_failure,
    describe_upstream_failure,
)
from epop.local_tls import ClientTLS
from epop.messages import Text
from epop.multipart import MultipartFileBody, make_cooperator
from epop.epmsi.proxy import ProxyConfig
from epop.epmsi.origin import tls_policy
from epop.epmsi.upstream import CheckResult, Upstream, response_headers
from epop.wire import (
    PROTOCOL_NAME,
    PROTOCOL_VERSIONS,
    Frame,
    FrameReader,
    FrameType,
    encode_message,
)

__all__ = [
    "DEFAULT_RELAY_PORT",
    "RelayAddress",
    "Reply",
    "TestReport",
    "UploadFailed",
    "RelayClientProtocol",
    "connect_to_relay",
    "send_file",
    "test_connection",
]

DEFAULT_RELAY_PORT = DEFAULT_PORT
DEFAULT_TIMEOUT = 10.0
#: Longer than the relay's own wait on e-PMSI (its --epmsi-timeout, 300 s by
#: default), so that when e-PMSI is the slow side the relay's error, which
#: says so, arrives before the workstation gives up on its own.
DEFAULT_STALL_TIMEOUT = 360.0


@dataclass(frozen=True)
class RelayAddress:
    """A relay's address as a person types it: C{HOST}, C{HOST:PORT}, C{[v6]:PORT}."""

    host: str
    port: int = DEFAULT_RELAY_PORT

    @classmethod
    def parse(cls, text: str) -> "RelayAddress":
        text = text.strip()
        host, port = text, None
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"invalid relay address {text!r}: expected [IPv6]:PORT")
            port = rest[1:] if rest else None
        elif text.count(":") == 1:
            host, port = text.split(":")
        if not host:
            raise ValueError(f"invalid relay address {text!r}: no host")
        if port is None:
            return cls(host)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"invalid relay port {port!r}: expected a number from 1 to 65535")
        return cls(host, int(port))

    def __str__(self) -> str:
        return host_port(self.host, self.port)


@dataclass
class Reply:
    """e-PMSI's answer: its status line, headers and body (if collected)."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    length: int = 0
    body: bytes | None = None
    sent: int = 0

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


#: The relay's ERROR codes for a limit on connections or checks: it was
#: reached and answered, and asks to come back later.
_RELAY_LIMITS = frozenset(
    {
        "too-many-checks",
        "too-many-connections",
        "too-many-connections-from-client",
        "too-many-silent-connections",
    }
)


@dataclass
class TestReport:
    """
    The manual's "Tester", step by step: reaching the relay, then the relay
    reaching e-PMSI (or, direct, reaching e-PMSI).

    @ivar failed_step: C{None} on success, else C{"relay"} or C{"epmsi"}.
    """

    relay: str | None
    relay_elapsed: float | None = None
    protocol_version: int | None = None
    epmsi: CheckResult | None = None
    error: EpopError | None = None
    failed_step: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed_step is None

    def describe(self, language: str = "en") -> str:
        lines = []
        if self.relay is not None and self.relay_elapsed is not None:
            lines.append(
                Text(
                    "Relay {relay} answered in {ms} ms (e-POP protocol {version}).",
                    relay=self.relay,
                    ms=f"{self.relay_elapsed * 1000:.0f}",
                    version=self.protocol_version,
                )
            )
        if self.epmsi is not None:
            text = _check_text(self.epmsi)
            lines.append(Text("Through the relay: {check}", check=text) if self.relay else text)
        elif self.error is not None:
            lines.append(self.error.text)
        return "\n".join(line.render(language) for line in lines)

    @property
    def step(self) -> Text:
        """
        Which step failed, in words: the manual's list of causes.  A relay
        that answered but refused on its own account was reached: say which
        of its rules turned the workstation away.
        """
        code = self.error.code if self.error is not None else ""
        if code == "not-authorized":
            return Text("being allowed by the relay")
        if code in ("relay-tls", "tls-required", "tls-not-configured"):
            return Text("encrypting the connection to the relay (TLS)")
        if code in _RELAY_LIMITS:
            return Text("being served by the relay (its limits)")
        if code in ("no-proxy-header", "bad-proxy-header"):
            return Text("reaching the relay through its load balancer")
        if code in ("hello-timeout", "frame-timeout"):
            return Text("sending to the relay within its time limits")
        if self.failed_step == "relay":
            return Text("reaching the relay")
        if self.failed_step == "epmsi" and self.relay is not None:
            return Text("the relay reaching e-PMSI")
        if self.failed_step == "epmsi":
            return Text("reaching e-PMSI")
        return Text("starting")


def _check_text(check: CheckResult) -> Text:
    """
    A check's outcome in words.  A timeout already says how long it waited
    ("no answer in time (3 s)"): the time it took would only say it twice.
    """
    if not check.ok and check.error is not None and check.error.cause == "timeout":
        return check.error.text
    return check.text()


def _closed_how(reason: Failure) -> Text | str | None:
    """
    How the relay's connection ended, in plain words rather than Twisted's:
    nothing to add for a clean close, "cut" for a lost one.
    """
    if reason.check(ConnectionDone):
        return None
    if reason.check(ConnectionLost):
        return Text("the connection was cut, not closed cleanly")
    return reason.getErrorMessage()  # anything else: what little we know


def _check_from_wire(message: dict[str, Any]) -> CheckResult:
    error = message.get("error")
    return CheckResult(
        ok=bool(message.get("ok")),
        url=str(message.get("url")),
        elapsed=float(message.get("elapsed") or 0.0),
        address=message.get("address"),
        status=message.get("status"),
        error=RelayError.from_wire(error) if isinstance(error, dict) else None,
        proxy=message.get("proxy"),
    )


class _Watchdog:
    """
    Calls C{on_stall} once nothing has moved for C{seconds}: a bound on
    silence rather than on duration, so that a big upload that keeps moving
    is never cut, while a peer that stops taking or sending bytes is.
    """

    def __init__(self, clock: Any, seconds: float, on_stall: Any) -> None:
        self._clock = clock
        self.seconds = seconds
        self._on_stall = on_stall
        self._call: Any = None

    def start(self) -> None:
        self.stop()
        self._call = self._clock.callLater(self.seconds, self._expired)

    def progress(self) -> None:
        if self._call is not None and self._call.active():
            self._call.reset(self.seconds)

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _expired(self) -> None:
        self._call = None
        self._on_stall()


class _CountingConsumer:
    """Passes the upload on, counting it and reporting each write as progress."""

    def __init__(self, consumer: Any, on_write: Any) -> None:
        self._consumer = consumer
        self._on_write = on_write

    def write(self, data: bytes) -> None:
        self._on_write(data)
        self._consumer.write(data)


@implementer(IBodyProducer)
class _WatchedBody:
    """A body producer whose writes are counted, for the stall watchdog."""

    def __init__(self, body: IBodyProducer, on_write: Any, path: str) -> None:
        self._body = body
        self._on_write = on_write
        self.path = path
        self.length = body.length
        self.sent = 0

    def _wrote(self, data: bytes) -> None:
        self.sent += len(data)
        self._on_write()

    def startProducing(self, consumer: Any) -> Deferred[None]:
        return self._body.startProducing(_CountingConsumer(consumer, self._wrote))

    def pauseProducing(self) -> None:
        self._body.pauseProducing()

    def resumeProducing(self) -> None:
        self._body.resumeProducing()

    def stopProducing(self) -> None:
        self._body.stopProducing()


class UploadFailed(EpopError):
    """
    Why L{send_file} failed, at which step, and whether e-PMSI may have the
    file: a person must know whether to send it again.

    @ivar reason: the underlying error; L{code}, L{cause} and the message
        are its.
    @ivar step: C{"connect"}, C{"upload"} or C{"answer"}.
    @ivar maybe_delivered: C{False} when e-PMSI certainly did not get the
        whole file; C{True} when all of it had left and the answer was lost,
        so that only e-PMSI can tell.
    """

    def __init__(
        self, reason: EpopError, step: str, *, via_relay: bool, maybe_delivered: bool
    ) -> None:
        super().__init__(reason.code, reason.text, reason.cause)
        self.reason = reason
        self.step = step
        self.via_relay = via_relay
        self.maybe_delivered = maybe_delivered

    @property
    def step_text(self) -> Text:
        """The step that failed, in words."""
        if self.step == "connect":
            return Text("reaching the relay") if self.via_relay else Text("reaching e-PMSI")
        if self.step == "upload":
            if self.via_relay:
                return Text("sending the file through the relay")
            return Text("sending the file to e-PMSI")
        return Text("waiting for e-PMSI's answer")

    def outcome(self, path: str) -> Text:
        """What became of the file, for the person who sent it."""
        if self.maybe_delivered:
            return Text(
                "All of {file} was sent, but the answer was lost (failed step: {step}): "
                "e-PMSI may have received it. Check on e-PMSI before sending it again.",
                file=path,
                step=self.step_text,
            )
        return Text(
            "{file} was not delivered: e-PMSI did not receive it (failed step: {step}).",
            file=path,
            step=self.step_text,
        )


class _Upload:
    """One L{send_file}: how far it got, to say what failed and what became of the file."""

    def __init__(
        self, body: IBodyProducer, path: str, via_relay: bool, watchdog: _Watchdog | None
    ) -> None:
        self.body = _WatchedBody(body, self._progress, path)
        self.via_relay = via_relay
        self.started = False
        self.stalled = False
        self.cancelled = False
        self.watchdog = watchdog
        self._inner: Deferred[Any] | None = None
        self._result: Deferred[Reply] | None = None

    def follow(self, inner: Deferred[Any]) -> Deferred[Reply]:
        """
        The Deferred the caller gets: C{inner}'s outcome, explained.  Owning
        it lets cancelling say "cancelled", whatever error cancelling the
        inner work turns into (an HTTP client's, for one).
        """
        self._inner = inner
        self._result = Deferred(self._cancel)
        inner.addErrback(self.explain).addBoth(self._settle)
        return self._result

    def _settle(self, outcome: Any) -> None:
        assert self._result is not None
        if self._result.called:
            return  # already failed as cancelled
        if isinstance(outcome, Failure):
            self._result.errback(outcome)
        else:
            self._result.callback(outcome)

    def _cancel(self, result: Deferred[Reply]) -> None:
        self.cancelled = True
        assert self._inner is not None
        self._inner.cancel()
        if not result.called:
            result.errback(self.explain(Failure(CancelledError())))

    def stall(self) -> None:
        """The watchdog's verdict: stop the work in flight."""
        self.stalled = True
        if self._inner is not None:
            self._inner.cancel()

    def _progress(self) -> None:
        if self.watchdog is not None:
            self.watchdog.progress()

    @property
    def whole_file_sent(self) -> bool:
        return self.body.sent >= self.body.length

    def stalled_error(self) -> EpopError:
        assert self.watchdog is not None
        seconds = f"{self.watchdog.seconds:g}"
        if not self.whole_file_sent:
            text = Text(
                "Nothing moved for {seconds} s while sending the file to e-PMSI "
                "({sent} of {total} bytes sent): e-PMSI stopped taking it.",
                seconds=seconds,
                sent=self.body.sent,
                total=self.body.length,
            )
        else:
            text = Text(
                "e-PMSI's answer did not come, or stopped coming, for {seconds} s after "
                "the whole file was sent: no answer in time.",
                seconds=seconds,
            )
        return EpopError("stalled", text, "timeout")

    def explain(self, failure: Failure) -> Failure:
        if self.watchdog is not None:
            self.watchdog.stop()
        if failure.check(UploadFailed):
            return failure
        if self.stalled:
            reason: EpopError = self.stalled_error()
        elif self.cancelled:
            reason = EpopError("cancelled", Text("The upload was cancelled."))
        elif isinstance(failure.value, EpopError):
            reason = failure.value
        else:
            return failure
        whole = self.whole_file_sent
        if not self.started:
            step = "connect"
        else:
            step = "answer" if whole else "upload"
        maybe = whole and reason.code not in ("integrity-mismatch", "file-unreadable")
        return Failure(
            UploadFailed(reason, step, via_relay=self.via_relay, maybe_delivered=maybe)
        )


def _file_unreadable(failure: Failure, path: str) -> EpopError:
    """The file could not be read while it was being sent."""
    why = getattr(failure.value, "strerror", None) or failure.getErrorMessage()
    return EpopError(
        "file-unreadable",
        Text("Could not read {path} while sending it: {why}.", path=path, why=why),
    )


class _Operation:
    def __init__(self, kind: str, canceller: Any, output: Any = None) -> None:
        self.kind = kind
        self.done: Deferred[Any] = Deferred(canceller)
        self.output = output
        self.reply: Reply | None = None
        self.body: IBodyProducer | None = None
        self.length = 0
        self.sent = 0
        self.body_sent = True
        self.response_ended = False


class RelayClientProtocol(Protocol):
    """
    The e-POP protocol, client side: HELLO, then one operation at a time.

    Every operation's Deferred fires, whatever the relay does: an answer, an
    ERROR, a closed or reset connection, garbage, or silence for
    C{stall_timeout} seconds (nothing taken of the upload, nothing received).
    Cancelling it drops the connection: a request cut short this way never
    reaches e-PMSI whole, as the relay aborts e-PMSI's side without BODY_END.

    @ivar welcomed: fires with this protocol once the relay said WELCOME.
    """

    def __init__(
        self,
        reactor: Any,
        timeout: float = DEFAULT_TIMEOUT,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._reader = FrameReader()
        self._operation: _Operation | None = None
        self._timer: Any = None
        self._watchdog = _Watchdog(reactor, stall_timeout, self._stalled)
        self._failed = False
        self.welcomed: Deferred[RelayClientProtocol] = Deferred(self._cancelled)
        self.version: int | None = None
        self.relay_info: dict[str, Any] = {}

    def connectionMade(self) -> None:
        self.transport.write(
            encode_message(
                FrameType.HELLO,
                {"protocol": PROTOCOL_NAME, "versions": list(PROTOCOL_VERSIONS),
                 "client": f"epop {__version__}"},
            )
        )
        self._timer = self._reactor.callLater(self._timeout, self._no_welcome)

    def _no_welcome(self) -> None:
        self._timer = None
        self._fail(
            EpopError(
                "relay-unreachable",
                Text(
                    "The machine at {where} accepted the connection but did not answer as "
                    "an e-POP relay within {seconds} s: no answer in time. Check the "
                    "address and port.",
                    where=format_peer(self.transport.getPeer()),
                    seconds=f"{self._timeout:g}",
                ),
                "timeout",
            )
        )

    def _stalled(self) -> None:
        operation = self._operation
        if operation is None:
            return
        seconds = f"{self._watchdog.seconds:g}"
        if operation.kind == "check":
            text = Text(
                "The relay gave no answer to the check within {seconds} s: no answer in time.",
                seconds=seconds,
            )
        elif not operation.body_sent:
            text = Text(
                "Nothing moved for {seconds} s while sending the file to the relay "
                "({sent} of {total} bytes sent): the relay stopped taking it.",
                seconds=seconds,
                sent=operation.sent,
                total=operation.length,
            )
        else:
            text = Text(
                "The relay sent nothing for {seconds} s after the whole file was sent: "
                "no answer in time.",
                seconds=seconds,
            )
        self._fail(EpopError("stalled", text, "timeout"))

    def dataReceived(self, data: bytes) -> None:
        if self._failed:
            return
        self._watchdog.progress()
        try:
            for frame in self._reader.feed(data):
                assert isinstance(frame, Frame)
                self._frame_received(frame)
                if self._failed:
                    return
        except EpopError as error:
            self._fail(error)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            # Well-formed JSON with fields of the wrong kind: still garbage.
            self._fail(
                ProtocolError(
                    "bad-frame",
                    Text(
                        "The relay sent a frame this client cannot read ({why}): "
                        "this is not an e-POP relay, or it is broken.",
                        why=f"{type(e).__name__}: {e}",
                    ),
                )
            )
        except OSError as e:
            self._fail(
                EpopError(
                    "output-failed",
                    Text("Could not write e-PMSI's answer: {why}.", why=e.strerror or str(e)),
                )
            )

    def _frame_received(self, frame: Frame) -> None:
        if frame.kind is FrameType.DATA:
            operation = self._expect_operation(frame)
            if operation.reply is None:
                raise ProtocolError("unexpected-frame", "DATA frame before RESPONSE")
            operation.reply.length += len(frame.payload)
            operation.output.write(frame.payload)
            return
        message = frame.message()
        if frame.kind is FrameType.ERROR:
            self._fail(RelayError.from_wire(message))
        elif frame.kind is FrameType.WELCOME and not self.welcomed.called:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.version = message.get("version")
            self.relay_info = message
            self.welcomed.callback(self)
        elif frame.kind is FrameType.RESPONSE:
            operation = self._expect_operation(frame)
            operation.reply = Reply(
                int(message["status"]),
                str(message.get("reason", "")),
                [(str(n), str(v)) for n, v in message.get("headers", [])],
            )
        elif frame.kind is FrameType.RESPONSE_END:
            operation = self._expect_operation(frame)
            if operation.reply is None:
                raise ProtocolError("unexpected-frame", "RESPONSE_END frame before RESPONSE")
            announced = message.get("length", operation.reply.length)
            if int(announced) != operation.reply.length:
                raise ProtocolError(
                    "bad-frame",
                    Text(
                        "e-PMSI's answer arrived incomplete: the relay announced {announced} "
                        "bytes and {received} arrived.",
                        announced=int(announced),
                        received=operation.reply.length,
                    ),
                )
            operation.response_ended = True
            self._maybe_done(operation)
        elif frame.kind is FrameType.CHECK_RESULT:
            operation = self._expect_operation(frame)
            result = _check_from_wire(message)
            self._finish(operation)
            operation.done.callback(result)
        else:
            raise ProtocolError("unexpected-frame", f"{frame.kind.name} frame was not expected")

    def _expect_operation(self, frame: Frame) -> _Operation:
        if self._operation is None:
            raise ProtocolError("unexpected-frame", f"{frame.kind.name} frame with no operation")
        return self._operation

    def _finish(self, operation: _Operation) -> None:
        self._watchdog.stop()
        self._operation = None

    def _maybe_done(self, operation: _Operation) -> None:
        if operation.body_sent and operation.response_ended:
            self._finish(operation)
            operation.done.callback(operation.reply)

    def _cancelled(self, _: Deferred[Any]) -> None:
        self._fail(CancelledError())

    def _fail(self, error: Exception) -> None:
        """
        Fail whatever is waiting and drop the connection.  Each step runs
        whatever the previous one did, so the caller always hears back.
        """
        if self._failed:
            return
        self._failed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._watchdog.stop()
        operation, self._operation = self._operation, None
        try:
            if not self.welcomed.called:
                self.welcomed.errback(Failure(error))
            if operation is not None and not operation.done.called:
                operation.done.errback(Failure(error))
        finally:
            try:
                if operation is not None and operation.body is not None and not operation.body_sent:
                    operation.body_sent = True
                    operation.body.stopProducing()
            finally:
                if self.transport is not None:
                    self.transport.abortConnection()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:
        operation = self._operation
        if self.welcomed.called and operation is None:
            self._failed = True
            return
        where = format_peer(self.transport.getPeer()) if self.transport else "?"
        error = describe_relay_tls_failure(reason, where)
        how = _closed_how(reason)
        if error is None and operation is not None and operation.body is not None and not operation.body_sent:
            if how is None:
                text = Text(
                    "The relay closed the connection during the upload, after {sent} of "
                    "{total} bytes: e-PMSI did not receive the file.",
                    sent=operation.sent,
                    total=operation.length,
                )
            else:
                text = Text(
                    "The relay closed the connection during the upload, after {sent} of "
                    "{total} bytes ({how}): e-PMSI did not receive the file.",
                    sent=operation.sent,
                    total=operation.length,
                    how=how,
                )
            error = EpopError("relay-closed", text, "connection-lost")
        elif error is None:
            if how is None:
                text = Text("The relay closed the connection before answering.")
            else:
                text = Text("The relay closed the connection before answering ({how}).", how=how)
            error = EpopError("relay-closed", text, "connection-lost")
        self._fail(error)

    def _start(self, kind: str, output: Any = None) -> _Operation:
        if self._failed:
            raise RuntimeError("this relay connection has failed; open a new one")
        if self._operation is not None:
            raise RuntimeError("one operation at a time on a relay connection")
        self._operation = _Operation(kind, self._cancelled, output)
        self._watchdog.start()
        return self._operation

    def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        body: IBodyProducer | None = None,
        output: Any = None,
    ) -> Deferred[Reply]:
        """
        Relay one HTTP request; e-PMSI's answer body is written to C{output}
        (any object with C{write}) as it arrives.
        """
        operation = self._start("request", output if output is not None else io.BytesIO())
        length = body.length if body is not None else 0
        operation.length = length
        self.transport.write(
            encode_message(
                FrameType.REQUEST,
                {"method": method, "path": path, "headers": [list(h) for h in headers],
                 "length": length},
            )
        )
        if body is not None and length:
            operation.body = body
            operation.body_sent = False
            sha256 = hashlib.sha256()

            def wrote(data: bytes) -> None:
                sha256.update(data)
                operation.sent += len(data)
                self._watchdog.progress()

            self.transport.registerProducer(body, True)

            def sent(_: object) -> None:
                if operation.body_sent:
                    return
                self.transport.unregisterProducer()
                operation.body_sent = True
                self.transport.write(
                    encode_message(FrameType.BODY_END, {"sha256": sha256.hexdigest()})
                )
                self._maybe_done(operation)

            def failed(failure: Failure) -> None:
                if operation.body_sent:
                    return
                # Closing without BODY_END: the relay aborts e-PMSI's side.
                path = getattr(body, "path", "the file")
                self._fail(_file_unreadable(failure, path))

            consumer = _CountingConsumer(self.transport, wrote)
            body.startProducing(consumer).addCallbacks(sent, failed)

        def finished(reply: Reply) -> Reply:
            reply.sent = length
            if isinstance(operation.output, io.BytesIO) and output is None:
                reply.body = operation.output.getvalue()
            return reply

        return operation.done.addCallback(finished)

    def check(self) -> Deferred[CheckResult]:
        """Ask the relay whether it can reach e-PMSI right now."""
        operation = self._start("check")
        self.transport.write(encode_message(FrameType.CHECK, {}))
        return operation.done

    def close(self) -> None:
        self.transport.loseConnection()


def connect_to_relay(
    reactor: Any,
    relay: RelayAddress,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    tls: ClientTLS | None = None,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
) -> Deferred[RelayClientProtocol]:
    """
    Connect and shake hands, encrypted when C{tls} is given; failures are
    L{EpopError}s that say what to check (no answer in time, refused, not
    authorized, certificate...).
    """
    endpoint: Any = HostnameEndpoint(reactor, relay.host, relay.port, timeout=timeout)
    if tls is not None:
        try:
            endpoint = wrapClientTLS(tls.creator(relay.host), endpoint)
        except ValueError as e:
            return fail(EpopError("bad-settings", str(e)))
    d = connectProtocol(endpoint, RelayClientProtocol(reactor, timeout, stall_timeout))
    d.addCallback(lambda protocol: protocol.welcomed)

    def failed(failure: Failure) -> Failure:
        if failure.check(CancelledError, ConnectingCancelledError):
            return Failure(CancelledError())
        return Failure(describe_connect_failure(failure, str(relay), timeout=timeout))

    return d.addErrback(failed)


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


def send_file(
    reactor: Any,
    path: str,
    *,
    to: str,
    field: str = "file",
    fields: Sequence[tuple[str, str]] = (),
    relay: RelayAddress | None = None,
    epmsi: str | None = None,
    ca_file: str | None = None,
    proxy: ProxyConfig | None = None,
    tls: ClientTLS | None = None,
    output: Any = None,
    timeout: float = DEFAULT_TIMEOUT,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
) -> Deferred[Reply]:
    """
    Upload C{path} as a multipart/form-data POST to C{to} on e-PMSI, through
    C{relay} (encrypted with C{tls} if given) or, when C{relay} is C{None},
    directly to C{epmsi} (through C{proxy} if given).

    e-PMSI's answer body goes to C{output} as it arrives; without one it is
    collected in L{Reply.body}.

    The Deferred always fires: C{timeout} bounds connecting (and the relay's
    WELCOME), C{stall_timeout} any silence after that (nothing of the file
    taken, nothing of the answer received).  Failures are L{UploadFailed}:
    the error, the step, and whether e-PMSI may have the file.  Cancelling
    the Deferred stops the upload before e-PMSI gets the whole file (unless
    all of it was already sent), and fails it with code C{cancelled}.
    """
    try:
        body = MultipartFileBody(
            path, field=field, fields=fields, cooperator=make_cooperator(reactor)
        )
    except OSError as e:
        return fail(
            EpopError("file-unreadable", Text("Cannot read {path}: {why}.", path=path, why=e.strerror))
        )
    headers = [("Content-Type", body.content_type)]
    if relay is not None:
        upload = _Upload(body, path, via_relay=True, watchdog=None)
        d = connect_to_relay(reactor, relay, timeout=timeout, tls=tls, stall_timeout=stall_timeout)

        def connected(protocol: RelayClientProtocol) -> Deferred[Reply]:
            upload.started = True
            result = protocol.request("POST", to, headers, upload.body, output)
            return result.addBoth(lambda r: (protocol.close(), r)[1])

        return upload.follow(d.addCallback(connected))
    if epmsi is None:
        return fail(ValueError("give a relay, or an e-PMSI URL to send directly"))
    try:
        upstream = _upstream(reactor, epmsi, ca_file, timeout, proxy)
    except ValueError as e:
        return fail(EpopError("bad-settings", str(e)))
    sink = output if output is not None else io.BytesIO()

    upload = _Upload(body, path, via_relay=False, watchdog=None)
    upload.watchdog = _Watchdog(reactor, stall_timeout, upload.stall)

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
    upload.watchdog.start()  # type: ignore[union-attr]
    d = upstream.request("POST", to, headers, upload.body)
    return upload.follow(d.addCallback(answered).addBoth(finished))


def test_connection(
    reactor: Any,
    *,
    relay: RelayAddress | None = None,
    epmsi: str | None = None,
    ca_file: str | None = None,
    proxy: ProxyConfig | None = None,
    tls: ClientTLS | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
) -> Deferred[TestReport]:
    """
    The manual's "Tester": reach the relay and have it reach e-PMSI, or reach
    e-PMSI directly.  Never fails: the report says which step went wrong,
    including a relay silent for C{stall_timeout} seconds after the check
    was asked.  Cancelling it drops the connection (L{CancelledError}).
    """
    if relay is None:
        if epmsi is None:
            return fail(ValueError("give a relay, or an e-PMSI URL to test directly"))
        try:
            upstream = _upstream(reactor, epmsi, ca_file, timeout, proxy)
        except ValueError as e:
            return succeed(TestReport(None, error=EpopError("bad-settings", str(e)),
                                      failed_step="settings"))

        def checked(result: CheckResult) -> Deferred[TestReport]:
            report = TestReport(None, epmsi=result, error=result.error,
                                failed_step=None if result.ok else "epmsi")
            return upstream.close().addCallback(lambda _: report)

        return upstream.check().addCallback(checked)

    started = reactor.seconds()
    report = TestReport(str(relay))

    def connected(protocol: RelayClientProtocol) -> Deferred[TestReport]:
        report.relay_elapsed = reactor.seconds() - started
        report.protocol_version = protocol.version

        def checked(result: CheckResult) -> TestReport:
            report.epmsi = result
            if not result.ok:
                report.error = result.error
                report.failed_step = "epmsi"
            return report

        def lost(failure: Failure) -> TestReport:
            failure.trap(EpopError)
            report.error = failure.value
            report.failed_step = "relay"
            return report

        d = protocol.check().addCallbacks(checked, lost)
        return d.addBoth(lambda r: (protocol.close(), r)[1])

    def unreachable(failure: Failure) -> TestReport:
        failure.trap(EpopError)
        report.error = failure.value
        report.failed_step = "relay"
        return report

    return connect_to_relay(
        reactor, relay, timeout=timeout, tls=tls, stall_timeout=stall_timeout
    ).addCallbacks(
        connected, unreachable
    )
