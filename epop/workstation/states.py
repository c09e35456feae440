"""
The client's states, as one table: what the workstation waits for from the
relay, the frames each state accepts, and the timer that runs in it.  Kept
apart from the protocol so that it reads like C{docs/protocol.md}, section
3.1, which describes the same states with the same names.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from epop.errors import ProtocolError
from epop.wire import FrameType


class State(Enum):
    """What the client waits for from the relay: each is named after it."""

    CONNECTING = "CONNECTING"
    WELCOME = "WELCOME"
    READY = "READY"
    CHECK_RESULT = "CHECK_RESULT"
    RESPONSE = "RESPONSE"
    RESPONSE_END = "RESPONSE_END"
    SENDING = "SENDING"
    CLOSED = "CLOSED"


class Timer(Enum):
    """The clock that runs in a state, if any."""

    WELCOME = "welcome"  # the relay must say WELCOME within `timeout`
    STALL = "stall"  # an operation: something must move within `stall_timeout`


@dataclass(frozen=True)
class StateRule:
    """The frames a state accepts from the relay, and the timer that runs in it."""

    accepts: frozenset[FrameType]
    timer: Timer | None


def _rule(*accepts: FrameType, timer: Timer | None = None) -> StateRule:
    return StateRule(frozenset(accepts), timer)


_ERROR = FrameType.ERROR

#: The client's states (C{docs/protocol.md}, section 3.1).  ERROR is accepted
#: wherever the relay may still speak; the upload's body goes out alongside
#: the states of a REQUEST, which it does not change until it is all sent.
STATES: dict[State, StateRule] = {
    # Until the connection (and its TLS handshake) is made: nothing sent yet.
    State.CONNECTING: _rule(),
    # HELLO sent on connect; until WELCOME, or an ERROR in its place.
    State.WELCOME: _rule(FrameType.WELCOME, _ERROR, timer=Timer.WELCOME),
    # Between operations: the relay has nothing to say but an ERROR.
    State.READY: _rule(_ERROR),
    # CHECK sent.
    State.CHECK_RESULT: _rule(FrameType.CHECK_RESULT, _ERROR, timer=Timer.STALL),
    # REQUEST sent (its body may still be going out): e-PMSI's status line.
    State.RESPONSE: _rule(FrameType.RESPONSE, _ERROR, timer=Timer.STALL),
    # RESPONSE received: the answer's body, then its end.
    State.RESPONSE_END: _rule(FrameType.DATA, FrameType.RESPONSE_END, _ERROR, timer=Timer.STALL),
    # RESPONSE_END received before the body was all sent: the body's end.
    State.SENDING: _rule(_ERROR, timer=Timer.STALL),
    # After an ERROR, a failure, a close or the connection's loss: input ignored.
    State.CLOSED: _rule(),
}

#: The frames that only make sense inside an operation.
_ANSWER_FRAMES = frozenset(
    {FrameType.DATA, FrameType.RESPONSE, FrameType.RESPONSE_END, FrameType.CHECK_RESULT}
)


def unexpected_frame(state: State, kind: FrameType) -> ProtocolError:
    """A frame the current state does not accept, said as the relay's mistake."""
    if kind in _ANSWER_FRAMES and state in (State.CONNECTING, State.WELCOME, State.READY):
        return ProtocolError("unexpected-frame", f"{kind.name} frame with no operation")
    if kind in (FrameType.DATA, FrameType.RESPONSE_END) and state in (
        State.CHECK_RESULT,
        State.RESPONSE,
    ):
        return ProtocolError("unexpected-frame", f"{kind.name} frame before RESPONSE")
    return ProtocolError("unexpected-frame", f"{kind.name} frame was not expected")
