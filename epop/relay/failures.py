"""
The errors the relay raises on its own account, not because of what a
request asked: its time limits on the workstation, its stopping, its own
defects.

They are shared by the relay's protocol, its operations and the layers
around it (the session chooser), so they live apart from all of them.
"""

from __future__ import annotations

from epop.errors import EpopError, ProtocolError
from epop.messages import Text
from epop.wire import MAX_CONTROL_PAYLOAD, FrameType

__all__ = [
    "OversizedFrame",
    "frame_timeout",
    "hello_timeout",
    "idle_timeout",
    "internal_error",
    "relay_stopping",
]


class OversizedFrame(Exception):
    """
    The relay was about to send a control frame over the limit it enforces
    on others: a defect of ours, never sent.
    """

    def __init__(self, kind: FrameType, size: int) -> None:
        super().__init__(f"{kind.name} frame of {size} bytes exceeds {MAX_CONTROL_PAYLOAD}")
        self.kind = kind
        self.size = size


def internal_error() -> EpopError:
    return EpopError("internal-error", Text("The relay hit an internal error; see its log."))


def relay_stopping() -> EpopError:
    """What a workstation is told when the relay stops under it."""
    return EpopError(
        "relay-stopping", Text("The relay is stopping; send again once it is back.")
    )


def idle_timeout(seconds: float) -> ProtocolError:
    """The workstation stayed silent while the relay waited on it."""
    return ProtocolError(
        "idle-timeout",
        Text(
            "The relay waited {seconds} s for this workstation and received "
            "nothing; the connection is closed.",
            seconds=f"{seconds:g}",
        ),
    )


def hello_timeout(seconds: float) -> ProtocolError:
    """The whole HELLO did not arrive in time, from the connection's first byte."""
    return ProtocolError(
        "hello-timeout",
        Text(
            "The workstation did not send its whole HELLO, the start of every e-POP "
            "session, within {seconds} s; the connection is closed.",
            seconds=f"{seconds:g}",
        ),
    )


def frame_timeout(seconds: float) -> ProtocolError:
    """A frame did not arrive whole in time, from its first byte."""
    return ProtocolError(
        "frame-timeout",
        Text(
            "A frame from the workstation took more than {seconds} s to arrive whole; "
            "the connection is closed. Check the network between the workstation "
            "and the relay.",
            seconds=f"{seconds:g}",
        ),
    )
