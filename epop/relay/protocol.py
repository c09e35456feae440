"""
The workstation-to-relay leg: the relay's protocol and factory.

A connection says HELLO, then runs operations (L{epop.relay.operations})
one at a time.  This module decides what a workstation may send when, and
for how long the relay waits for it; what the relay accepts in a request is
in L{epop.relay.request_rules}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from zope.interface import implementer

from epop._version import __version__
from epop.epmsi.upstream import Upstream
from epop.errors import EpopError, ProtocolError, excerpt
from epop.messages import Text
from epop.relay.failures import (
    OversizedFrame,
    frame_timeout,
    hello_timeout,
    idle_timeout,
    internal_error,
    relay_stopping,
)
from epop.relay.interfaces import IRelaySession
from epop.relay.journaled import JournaledConnection
from epop.relay.operations import CheckAllowance, ConnectivityTest, RelayedRequest
from epop.relay.pacing import (
    DEFAULT_CHECKS_PER_CLIENT,
    DEFAULT_CHECKS_PER_CONNECTION,
    DEFAULT_FRAME_TIMEOUT,
    DEFAULT_HELLO_TIMEOUT,
    DEFAULT_UPLOAD_GRACE,
    DEFAULT_UPLOAD_MIN_RATE,
    Deadline,
    RatesByClient,
)
from epop.relay.request_rules import parse_request
from epop.relay.states import STATES, FrameDeadline, State
from epop.tuning import ReadBudget
from epop.wire import (
    HEADER,
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

__all__ = ["RelayFactory", "RelayProtocol"]

#: Time a closing connection gets to flush its last frame.
CLOSE_GRACE = 5.0


@implementer(IRelaySession)
class RelayProtocol(JournaledConnection, Protocol, TimeoutMixin):
    """
    One workstation's connection, a state machine: L{_enter} moves it from
    one state to the next, and the table of states (L{STATES}) says what
    each accepts and which timers run in it.  The idle timeout runs only
    while the relay waits for the workstation, never while e-PMSI is the
    slow side.

    The idle timeout restarts at every byte, so deadlines that a trickle
    cannot extend back it up (L{epop.relay.pacing}): the whole HELLO, each whole
    control frame, and an upload's average rate.  None of them counts the
    time the relay itself holds the workstation back.
    """

    log = Logger()

    def __init__(self, factory: "RelayFactory", connection_id: int) -> None:
        super().__init__(factory.relay_id, connection_id, factory.reactor, factory.language)
        self.factory = factory
        self.operation: RelayedRequest | ConnectivityTest | None = None
        self._reader = FrameReader()
        #: Where the connection stands; only L{_enter} changes it, and
        #: connectionMade enters the first state with its timers.
        self._state = State.HELLO
        self._paused = False
        #: Seconds the relay has held the workstation back (not counting
        #: the current hold), and since when it holds it, if it does.
        self._held_total = 0.0
        self._held_since: float | None = None
        self._grace: Any = None
        self._hello_deadline = Deadline(self.clock, factory.hello_timeout, self._hello_too_slow)
        self._frame_deadline = Deadline(self.clock, factory.frame_timeout, self._frame_too_slow)
        self._checks = CheckAllowance(factory.checks_per_connection, factory.check_rates)

    @property
    def state(self) -> State:
        """Where the connection stands (a row of L{STATES})."""
        return self._state

    def callLater(self, period: float, func: Any) -> Any:
        return self.clock.callLater(period, func)

    # connection lifetime
    def connectionMade(self) -> None:
        self._opened = self.clock.seconds()
        self.factory.connections[self.connection_id] = self
        self._enter(State.HELLO)
        if self.factory.draining:
            # Accepted before listening stopped, but it has no operation yet.
            self.fail(relay_stopping())

    def connectionLost(self, reason: Failure = ResponseDone) -> None:
        self.opened()
        self._enter(State.CLOSING)
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
        self.journal_closed()

    def timeoutConnection(self) -> None:
        self.fail(idle_timeout(self.factory.idle_timeout))

    def _hello_too_slow(self) -> None:
        self.fail(hello_timeout(self.factory.hello_timeout))

    def _frame_too_slow(self) -> None:
        self.fail(frame_timeout(self.factory.frame_timeout))

    # sending
    def send_message(self, kind: FrameType, message: dict[str, Any]) -> None:
        """
        Send a control frame.  The relay never sends what it would refuse
        to read: a frame over the limit raises L{OversizedFrame} instead.
        """
        frame = encode_message(kind, message)
        size = len(frame) - HEADER.size
        if size > MAX_CONTROL_PAYLOAD:
            raise OversizedFrame(kind, size)
        self.bytes_out += len(frame)
        self.transport.write(frame)

    def send_data(self, data: bytes) -> None:
        for start in range(0, len(data), MAX_DATA_PAYLOAD):
            chunk = data[start : start + MAX_DATA_PAYLOAD] if len(data) > MAX_DATA_PAYLOAD else data
            self.bytes_out += HEADER.size + len(chunk)
            self.transport.writeSequence([frame_header(FrameType.DATA, len(chunk)), chunk])

    def fail(self, error: EpopError) -> None:
        """Send an error frame and close: the connection cannot go on."""
        if self._state is State.CLOSING:
            return
        self.opened()
        self._enter(State.CLOSING)
        self._close_reason = error.code
        operation, self.operation = self.operation, None
        if operation is not None:
            operation.abort(error)
        try:
            self.send_message(FrameType.ERROR, error.to_wire())
        except OversizedFrame as oversized:
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
    @property
    def holding_client(self) -> bool:
        """Whether the relay has stopped reading the workstation until e-PMSI takes more."""
        return self._paused

    def pause_client(self) -> None:
        if not self._paused:
            self._held_since = self.clock.seconds()
        self._paused = True
        self._run_idle_timer()
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
        self._run_idle_timer()
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
        if self._state is State.CLOSING:
            return
        if not self._paused:
            self.resetTimeout()
        try:
            for item in self._reader.feed(data):
                if self._state is State.CLOSING:
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
            if STATES[self._state].deadline is FrameDeadline.FRAME:
                self._frame_deadline.start()

    def _body_received(self, data: bytes) -> None:
        operation = self.operation
        assert isinstance(operation, RelayedRequest)
        operation.body_received(data)
        if not self._reader.raw_outstanding:
            self._enter(State.BODY_END)
            operation.body_complete()

    def _frame_received(self, frame: Frame) -> None:
        self._frame_deadline.stop()
        STATES[self._state].admit(frame.kind)
        message = frame.message()
        if frame.kind is FrameType.HELLO:
            self._hello(message)
        elif frame.kind is FrameType.REQUEST:
            self._request(message)
        elif frame.kind is FrameType.CHECK:
            self._check()
        else:
            self._body_end(message)

    # the states
    def _enter(self, state: State) -> None:
        """
        Move to C{state}, with the timers its row of L{STATES} asks for: the
        idle timer, and the HELLO's deadline, which starts with the
        connection and ends with its state.  A frame's own deadline starts
        with its first byte (L{dataReceived}); every deadline ends in
        C{CLOSING}.
        """
        self._state = state
        self._run_idle_timer()
        deadline = STATES[state].deadline
        if deadline is FrameDeadline.HELLO:
            self._hello_deadline.start()
        else:
            self._hello_deadline.stop()
        if deadline is None:
            self._frame_deadline.stop()

    def _run_idle_timer(self) -> None:
        """
        The idle timer runs while the state waits on the workstation and the
        relay does not hold it back; a running timer keeps counting.
        """
        if self._paused or not STATES[self._state].idle_timer:
            self.setTimeout(None)
        elif self.timeOut is None:
            self.setTimeout(self.factory.idle_timeout)

    # the frames
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
        self.send_message(
            FrameType.WELCOME,
            {"version": max(common), "relay": f"epop {__version__}", "epmsi": self.factory.upstream.url},
        )
        self._enter(State.READY)

    def _request(self, message: dict[str, Any]) -> None:
        method, path, headers, length = parse_request(message)
        if length:
            # The body's first bytes start e-PMSI's request (RelayedRequest).
            self._enter(State.BODY)
            self._reader.expect_raw(length)
        else:
            self._enter(State.BUSY)
        self.operation = RelayedRequest(self, method, path, headers, length)

    def _check(self) -> None:
        host = getattr(self.transport.getPeer(), "host", "") or "?"
        self._checks.take(host, self.clock.seconds())
        self._enter(State.BUSY)
        self.operation = ConnectivityTest(self)

    def _body_end(self, message: dict[str, Any]) -> None:
        operation = self.operation
        assert isinstance(operation, RelayedRequest)
        self._enter(State.BUSY)
        operation.body_ended(message.get("sha256"))

    def operation_finished(self, operation: object) -> None:
        if self.operation is operation:
            self.operation = None
            self._enter(State.READY)
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
    @param first_connection_id: the first connection's number (a relay that
        listens again goes on from where it stopped).
    @param language: the language of the connections' lines in the twistd
        log; their journal records are the same in every language.
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
        first_connection_id: int = 1,
        language: str = "en",
    ) -> None:
        self.reactor = reactor
        self.upstream = upstream
        self.relay_id = relay_id
        #: The language of the connections' lines in the twistd log (C{--lang}).
        self.language = language
        self.idle_timeout = idle_timeout
        self.epmsi_timeout = epmsi_timeout
        self.hello_timeout = hello_timeout
        self.frame_timeout = frame_timeout
        self.upload_min_rate = upload_min_rate
        self.upload_grace = upload_grace
        self.checks_per_connection = checks_per_connection
        #: Each client address's allowance of checks (None: no limit).
        self.check_rates = RatesByClient(checks_per_client) if checks_per_client else None
        #: Every open connection: e-POP sessions, and the HTTP side's
        #: (L{epop.relay.http_proxy}), drained alike.
        self.connections: dict[int, Any] = {}
        #: How much each upload in flight reads per call.
        self.read_budget = ReadBudget()
        #: Set once the relay is stopping: no new operation starts.
        self.draining = False
        self._next_id = first_connection_id

    def buildProtocol(self, addr: IAddress) -> RelayProtocol:
        return RelayProtocol(self, self.next_connection_id())

    @property
    def upcoming_connection_id(self) -> int:
        """The number the next connection will get."""
        return self._next_id

    def next_connection_id(self) -> int:
        """The next connection's number, shared with the relay's HTTP side."""
        connection_id = self._next_id
        self._next_id += 1
        return connection_id

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
