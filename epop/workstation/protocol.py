"""
The e-POP protocol, client side: HELLO, then one operation at a time, each
frame checked against the table of L{epop.workstation.states}, and one
method, L{RelayClientProtocol._enter}, that enters a state and sets its
timer.  Whatever the relay does, every Deferred handed out here fires.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IBodyProducer

from epop._version import __version__
from epop.addressing import format_peer
from epop.epmsi.upstream import CheckResult
from epop.errors import EpopError, ProtocolError, RelayError, describe_relay_tls_failure
from epop.messages import Text
from epop.wire import PROTOCOL_NAME, PROTOCOL_VERSIONS, Frame, FrameReader, FrameType
from epop.wire import encode_message
from epop.workstation.deadlines import DEFAULT_STALL_TIMEOUT, DEFAULT_TIMEOUT, Watchdog
from epop.workstation.outcomes import Reply
from epop.workstation.states import STATES, State, Timer, unexpected_frame
from epop.workstation.upload import CountingConsumer, file_unreadable


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


class _Operation:
    """One REQUEST or CHECK: its Deferred, its answer so far, and its body's progress."""

    def __init__(self, canceller: Callable[[Deferred[Any]], None], output: Any = None) -> None:
        self.done: Deferred[Any] = Deferred(canceller)
        self.output = output
        self.reply: Reply | None = None
        self.body: IBodyProducer | None = None
        self.length = 0
        self.sent = 0
        self.body_sent = True


class RelayClientProtocol(Protocol):
    """
    The e-POP protocol, client side: HELLO, then one operation at a time.

    Every operation's Deferred fires, whatever the relay does: an answer, an
    ERROR, a closed or reset connection, garbage, or silence for
    C{stall_timeout} seconds (nothing taken of the upload, nothing received).
    Cancelling it drops the connection: a request cut short this way never
    reaches e-PMSI whole, as the relay aborts e-PMSI's side without BODY_END.

    @ivar welcomed: fires with this protocol once the relay said WELCOME.
    @ivar version: the protocol version the relay's WELCOME chose.
    """

    def __init__(
        self,
        reactor: Any,
        timeout: float = DEFAULT_TIMEOUT,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._reader = FrameReader(peer="relay")
        self._state = State.CONNECTING
        self._operation: _Operation | None = None
        self._timer: IDelayedCall | None = None
        self._watchdog = Watchdog(reactor, stall_timeout, self._stalled)
        self.welcomed: Deferred[RelayClientProtocol] = Deferred(self._cancelled)
        self.version: int | None = None
        self._on_frame: dict[FrameType, Callable[[dict[str, Any]], None]] = {
            FrameType.ERROR: self._error_received,
            FrameType.WELCOME: self._welcome_received,
            FrameType.RESPONSE: self._response_received,
            FrameType.RESPONSE_END: self._response_end_received,
            FrameType.CHECK_RESULT: self._check_result_received,
        }

    @property
    def state(self) -> State:
        """What this connection waits for from the relay (a row of L{STATES})."""
        return self._state

    def _enter(self, state: State) -> None:
        """
        Enter C{state}: stop the timer of the state left, start the one of
        the state entered (a timer both run goes on, not restarted).
        """
        before, after = STATES[self._state].timer, STATES[state].timer
        self._state = state
        if before is after:
            return
        if before is Timer.WELCOME and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        elif before is Timer.STALL:
            self._watchdog.stop()
        if after is Timer.WELCOME:
            self._timer = self._reactor.callLater(self._timeout, self._no_welcome)
        elif after is Timer.STALL:
            self._watchdog.start()

    def connectionMade(self) -> None:
        self.transport.write(
            encode_message(
                FrameType.HELLO,
                {"protocol": PROTOCOL_NAME, "versions": list(PROTOCOL_VERSIONS),
                 "client": f"epop {__version__}"},
            )
        )
        self._enter(State.WELCOME)

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
        if self._state is State.CHECK_RESULT:
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
        if self._state is State.CLOSED:
            return
        self._watchdog.progress()
        try:
            for frame in self._reader.feed(data):
                assert isinstance(frame, Frame)
                self._frame_received(frame)
                if self._state is State.CLOSED:
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
        """
        Check C{frame} against the state's rule, then handle it.  DATA is
        raw bytes; any other frame's JSON is read before its place is
        checked, so that garbage is called garbage in any state.
        """
        if frame.kind is FrameType.DATA:
            if FrameType.DATA not in STATES[self._state].accepts:
                raise unexpected_frame(self._state, frame.kind)
            self._data_received(frame.payload)
            return
        message = frame.message()
        if frame.kind not in STATES[self._state].accepts:
            raise unexpected_frame(self._state, frame.kind)
        self._on_frame[frame.kind](message)

    def _error_received(self, message: dict[str, Any]) -> None:
        self._fail(RelayError.from_wire(message))

    def _welcome_received(self, message: dict[str, Any]) -> None:
        self.version = message.get("version")
        self._enter(State.READY)
        self.welcomed.callback(self)

    def _response_received(self, message: dict[str, Any]) -> None:
        operation = self._current()
        operation.reply = Reply(
            int(message["status"]),
            str(message.get("reason", "")),
            [(str(n), str(v)) for n, v in message.get("headers", [])],
            answered_at=self._reactor.seconds(),
        )
        self._enter(State.RESPONSE_END)

    def _data_received(self, payload: bytes) -> None:
        operation = self._current()
        assert operation.reply is not None
        operation.reply.length += len(payload)
        operation.output.write(payload)

    def _response_end_received(self, message: dict[str, Any]) -> None:
        operation = self._current()
        assert operation.reply is not None
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
        if operation.body_sent:
            self._finish(operation, operation.reply)
        else:
            self._enter(State.SENDING)

    def _check_result_received(self, message: dict[str, Any]) -> None:
        operation = self._current()
        self._finish(operation, _check_from_wire(message))

    def _current(self) -> _Operation:
        assert self._operation is not None
        return self._operation

    def _finish(self, operation: _Operation, result: Any) -> None:
        """The operation is complete: back to READY, then tell its caller."""
        self._operation = None
        self._enter(State.READY)
        operation.done.callback(result)

    def _cancelled(self, _: Deferred[Any]) -> None:
        self._fail(CancelledError())

    def _fail(self, error: Exception) -> None:
        """
        Fail whatever is waiting and drop the connection.  Each step runs
        whatever the previous one did, so the caller always hears back.
        """
        if self._state is State.CLOSED:
            return
        self._enter(State.CLOSED)
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
        if self._state in (State.READY, State.CLOSED):
            self._enter(State.CLOSED)
            return
        operation = self._operation
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

    def _start(self, state: State, output: Any = None) -> _Operation:
        if self._state is State.CLOSED:
            raise RuntimeError("this relay connection has failed; open a new one")
        if self._state in (State.CONNECTING, State.WELCOME):
            raise RuntimeError("wait for the relay's WELCOME (welcomed) before an operation")
        if self._state is not State.READY:
            raise RuntimeError("one operation at a time on a relay connection")
        self._operation = _Operation(self._cancelled, output)
        self._enter(state)
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
        operation = self._start(State.RESPONSE, output if output is not None else io.BytesIO())
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
            self._send_body(operation, body)

        def finished(reply: Reply) -> Reply:
            reply.sent = length
            if isinstance(operation.output, io.BytesIO) and output is None:
                reply.body = operation.output.getvalue()
            return reply

        return operation.done.addCallback(finished)

    def _send_body(self, operation: _Operation, body: IBodyProducer) -> None:
        """
        Stream the body, hashing it, then BODY_END; the relay's frames keep
        arriving meanwhile.  If the relay already ended its answer
        (L{State.SENDING}), the body's end completes the operation.
        """
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
            self.transport.write(encode_message(FrameType.BODY_END, {"sha256": sha256.hexdigest()}))
            if self._state is State.SENDING:
                self._finish(operation, operation.reply)

        def failed(failure: Failure) -> None:
            if operation.body_sent:
                return
            # Closing without BODY_END: the relay aborts e-PMSI's side.
            path = getattr(body, "path", "the file")
            self._fail(file_unreadable(failure, path))

        consumer = CountingConsumer(self.transport, wrote)
        body.startProducing(consumer).addCallbacks(sent, failed)

    def check(self) -> Deferred[CheckResult]:
        """Ask the relay whether it can reach e-PMSI right now."""
        operation = self._start(State.CHECK_RESULT)
        self.transport.write(encode_message(FrameType.CHECK, {}))
        return operation.done

    def close(self) -> None:
        self.transport.loseConnection()
