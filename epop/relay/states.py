"""
The states of a workstation's connection, as the relay sees it, in one
table: what the workstation may send in each, whether the relay is waiting
on it (the idle timer runs), and which deadline a frame begun there must
meet.

The protocol (L{epop.relay.protocol.RelayProtocol}) moves from state to
state with one method that reads this table, so a timer can never be left
running in the wrong state.  C{docs/protocol.md} section 3 is this table,
in words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from epop.errors import ProtocolError
from epop.wire import FrameType

__all__ = ["FrameDeadline", "State", "StateRules", "STATES"]


class State(Enum):
    """Where a connection stands; the names are those of C{docs/protocol.md}."""

    HELLO = "HELLO"
    READY = "READY"
    BODY = "BODY"
    BODY_END = "BODY_END"
    BUSY = "BUSY"
    CLOSING = "CLOSING"


class FrameDeadline(Enum):
    """The time limit a frame from the workstation must arrive whole within."""

    #: The whole HELLO, from the connection's first byte (C{--hello-timeout}).
    HELLO = "hello-timeout"
    #: Each frame, from its own first byte (C{--frame-timeout}).
    FRAME = "frame-timeout"


@dataclass(frozen=True)
class StateRules:
    """One row of L{STATES}."""

    #: The frames the workstation may send; any other is refused.
    accepts: tuple[FrameType, ...]
    #: Whether the relay waits on the workstation, so the idle timer runs
    #: (except while the relay holds the workstation back: flow control).
    idle_timer: bool
    #: The deadline of a frame begun in this state; C{None} once nothing
    #: the workstation sends is read any more.
    deadline: FrameDeadline | None

    def admit(self, kind: FrameType) -> None:
        """
        @raise ProtocolError: C{unexpected-frame}, naming what was expected,
            if this state does not accept a C{kind} frame.
        """
        if kind not in self.accepts:
            raise ProtocolError(
                "unexpected-frame",
                f"{kind.name} frame was not expected here"
                + (f"; expected {' or '.join(k.name for k in self.accepts)}" if self.accepts else ""),
            )


_HELLO = FrameDeadline.HELLO
_FRAME = FrameDeadline.FRAME

#: The relay's side of a connection (C{docs/protocol.md} section 3).  Body
#: bytes are not frames: in C{BODY} the next C{length} bytes are the body's,
#: whatever they hold.
STATES: Mapping[State, StateRules] = MappingProxyType(
    {
        #                          frames accepted                       idle timer  deadline
        State.HELLO:    StateRules((FrameType.HELLO,),                   True,       _HELLO),
        State.READY:    StateRules((FrameType.REQUEST, FrameType.CHECK), True,       _FRAME),
        State.BODY:     StateRules((),                                   True,       _FRAME),
        State.BODY_END: StateRules((FrameType.BODY_END,),                True,       _FRAME),
        State.BUSY:     StateRules((),                                   False,      _FRAME),
        State.CLOSING:  StateRules((),                                   False,      None),
    }
)
