"""
The workstation side: send a file to e-PMSI, or test the connection, either
through a relay (e-POP protocol) or directly (HTTPS).

Everything returns a L{Deferred} and takes the reactor as its first argument::

    from twisted.internet.task import react
    from epop.client import Endpoint, send_file

    def main(reactor):
        d = send_file(reactor, "rss.zip", to="/syriusUpload.do", field="theFile",
                      relay=Endpoint.parse("10.1.2.3"))
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

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer, IResponse

from epop._version import __version__
from epop.addressing import format_peer, host_port
from epop.errors import (
    EpopError,
    ProtocolError,
    RelayError,
    describe_connect_failure,
    describe_relay_tls_failure,
)
from epop.local_tls import ClientTLS
from epop.messages import Text
from epop.multipart import MultipartFileBody, make_cooperator
from epop.proxy import ProxyConfig
from epop.upstream import CheckResult, Upstream, tls_policy
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
    "Endpoint",
    "Reply",
    "TestReport",
    "RelayClientProtocol",
    "connect_to_relay",
    "send_file",
    "test_connection",
]

DEFAULT_RELAY_PORT = 3358
DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Endpoint:
    """A relay's address as a person types it: C{HOST}, C{HOST:PORT}, C{[v6]:PORT}."""

    host: str
    port: int = DEFAULT_RELAY_PORT

    @classmethod
    def parse(cls, text: str) -> "Endpoint":
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
            text = self.epmsi.text()
            lines.append(Text("Through the relay: {check}", check=text) if self.relay else text)
        elif self.error is not None:
            lines.append(self.error.text)
        return "\n".join(line.render(language) for line in lines)

    @property
    def step(self) -> Text:
        """Which step failed, in words: the manual's list of causes."""
        code = self.error.code if self.error is not None else ""
        if code == "not-authorized":
            return Text("being allowed by the relay")
        if code in ("relay-tls", "tls-required", "tls-not-configured"):
            return Text("encrypting the connection to the relay (TLS)")
        if self.failed_step == "relay":
            return Text("reaching the relay")
        if self.failed_step == "epmsi" and self.relay is not None:
            return Text("the relay reaching e-PMSI")
        if self.failed_step == "epmsi":
            return Text("reaching e-PMSI")
        return Text("starting")


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


class _HashingConsumer:
    """Hashes the upload as it is written, for the relay's integrity check."""

    def __init__(self, protocol: "RelayClientProtocol") -> None:
        self._protocol = protocol
        self.sha256 = hashlib.sha256()
        self.length = 0

    def write(self, data: bytes) -> None:
        self.sha256.update(data)
        self.length += len(data)
        self._protocol.transport.write(data)


class _Operation:
    def __init__(self, output: Any = None) -> None:
        self.done: Deferred[Any] = Deferred()
        self.output = output
        self.reply: Reply | None = None
        self.body: IBodyProducer | None = None
        self.body_sent = True
        self.response_ended = False


class RelayClientProtocol(Protocol):
    """
    The e-POP protocol, client side: HELLO, then one operation at a time.

    @ivar welcomed: fires with this protocol once the relay said WELCOME.
    """

    def __init__(self, reactor: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._reader = FrameReader()
        self._operation: _Operation | None = None
        self._timer: Any = None
        self.welcomed: Deferred[RelayClientProtocol] = Deferred()
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

    def dataReceived(self, data: bytes) -> None:
        try:
            for frame in self._reader.feed(data):
                assert isinstance(frame, Frame)
                self._frame_received(frame)
        except EpopError as error:
            self._fail(error)

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
            operation.response_ended = True
            self._maybe_done(operation)
        elif frame.kind is FrameType.CHECK_RESULT:
            operation = self._expect_operation(frame)
            self._operation = None
            operation.done.callback(_check_from_wire(message))
        else:
            raise ProtocolError("unexpected-frame", f"{frame.kind.name} frame was not expected")

    def _expect_operation(self, frame: Frame) -> _Operation:
        if self._operation is None:
            raise ProtocolError("unexpected-frame", f"{frame.kind.name} frame with no operation")
        return self._operation

    def _maybe_done(self, operation: _Operation) -> None:
        if operation.body_sent and operation.response_ended:
            self._operation = None
            operation.done.callback(operation.reply)

    def _fail(self, error: EpopError) -> None:
        """Fail whatever is waiting and drop the connection."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.welcomed.called:
            self.welcomed.errback(error)
        operation, self._operation = self._operation, None
        if operation is not None:
            if operation.body is not None and not operation.body_sent:
                operation.body_sent = True
                operation.body.stopProducing()
            operation.done.errback(error)
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = ResponseDone) -> None:
        if not self.welcomed.called or self._operation is not None:
            where = format_peer(self.transport.getPeer()) if self.transport else "?"
            error = describe_relay_tls_failure(reason, where)
            self._fail(
                error
                or EpopError(
                    "relay-closed",
                    "The relay closed the connection before answering "
                    f"({reason.getErrorMessage()}).",
                    "connection-lost",
                )
            )

    def _start(self, output: Any = None) -> _Operation:
        if self._operation is not None:
            raise RuntimeError("one operation at a time on a relay connection")
        self._operation = _Operation(output)
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
        operation = self._start(output if output is not None else io.BytesIO())
        length = body.length if body is not None else 0
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
            consumer = _HashingConsumer(self)
            self.transport.registerProducer(body, True)

            def sent(_: object) -> None:
                self.transport.unregisterProducer()
                if operation.body_sent:
                    return
                operation.body_sent = True
                self.transport.write(
                    encode_message(FrameType.BODY_END, {"sha256": consumer.sha256.hexdigest()})
                )
                self._maybe_done(operation)

            def failed(failure: Failure) -> None:
                if not operation.body_sent:
                    operation.body_sent = True
                    if self._operation is operation:
                        self._operation = None
                        operation.done.errback(failure)
                    # Closing without BODY_END: the relay aborts e-PMSI's side.
                    self.transport.abortConnection()

            body.startProducing(consumer).addCallbacks(sent, failed)

        def finished(reply: Reply) -> Reply:
            reply.sent = length
            if isinstance(operation.output, io.BytesIO) and output is None:
                reply.body = operation.output.getvalue()
            return reply

        return operation.done.addCallback(finished)

    def check(self) -> Deferred[CheckResult]:
        """Ask the relay whether it can reach e-PMSI right now."""
        operation = self._start()
        self.transport.write(encode_message(FrameType.CHECK, {}))
        return operation.done

    def close(self) -> None:
        self.transport.loseConnection()


def connect_to_relay(
    reactor: Any,
    relay: Endpoint,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    tls: ClientTLS | None = None,
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
    d = connectProtocol(endpoint, RelayClientProtocol(reactor, timeout))
    d.addCallback(lambda protocol: protocol.welcomed)

    def failed(failure: Failure) -> Failure:
        return Failure(describe_connect_failure(failure, str(relay), timeout=timeout))

    return d.addErrback(failed)


class _Collector(Protocol):
    def __init__(self, output: Any, reply: Reply) -> None:
        self.output = output
        self.reply = reply
        self.done: Deferred[Reply] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.reply.length += len(data)
        self.output.write(data)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:
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
    relay: Endpoint | None = None,
    epmsi: str | None = None,
    ca_file: str | None = None,
    proxy: ProxyConfig | None = None,
    tls: ClientTLS | None = None,
    output: Any = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Deferred[Reply]:
    """
    Upload C{path} as a multipart/form-data POST to C{to} on e-PMSI, through
    C{relay} (encrypted with C{tls} if given) or, when C{relay} is C{None},
    directly to C{epmsi} (through C{proxy} if given).

    e-PMSI's answer body goes to C{output} as it arrives; without one it is
    collected in L{Reply.body}.
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
        d = connect_to_relay(reactor, relay, timeout=timeout, tls=tls)

        def connected(protocol: RelayClientProtocol) -> Deferred[Reply]:
            result = protocol.request("POST", to, headers, body, output)
            return result.addBoth(lambda r: (protocol.close(), r)[1])

        return d.addCallback(connected)
    if epmsi is None:
        return fail(ValueError("give a relay, or an e-PMSI URL to send directly"))
    try:
        upstream = _upstream(reactor, epmsi, ca_file, timeout, proxy)
    except ValueError as e:
        return fail(EpopError("bad-settings", str(e)))
    sink = output if output is not None else io.BytesIO()

    def answered(response: IResponse) -> Deferred[Reply]:
        reply = Reply(
            response.code,
            response.phrase.decode("latin-1"),
            [
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, values in response.headers.getAllRawHeaders()
                for value in values
            ],
            sent=body.length,
        )
        collector = _Collector(sink, reply)
        response.deliverBody(collector)
        return collector.done

    def finished(result: Any) -> Deferred[Any]:
        if isinstance(result, Reply) and output is None:
            result.body = sink.getvalue()
        return upstream.close().addCallback(lambda _: result)

    d = upstream.request("POST", to, headers, body)
    return d.addCallback(answered).addBoth(finished)


def test_connection(
    reactor: Any,
    *,
    relay: Endpoint | None = None,
    epmsi: str | None = None,
    ca_file: str | None = None,
    proxy: ProxyConfig | None = None,
    tls: ClientTLS | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Deferred[TestReport]:
    """
    The manual's "Tester": reach the relay and have it reach e-PMSI, or reach
    e-PMSI directly.  Never fails: the report says which step went wrong.
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

    return connect_to_relay(reactor, relay, timeout=timeout, tls=tls).addCallbacks(
        connected, unreachable
    )
