"""
The relay's table of states (L{epop.relay.states}): complete, the same as
the one C{docs/protocol.md} shows, and the one the protocol follows.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from epop.epmsi.upstream import CheckResult
from epop.errors import ProtocolError
from epop.relay.protocol import RelayFactory, RelayProtocol
from epop.relay.states import STATES, FrameDeadline, State
from epop.wire import FrameType, encode_message
from tests.relaying import HELLO
from epop.testing import FakeUpstream

PROTOCOL_MD = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

_DEADLINES = {
    "`--hello-timeout`": FrameDeadline.HELLO,
    "`--frame-timeout`": FrameDeadline.FRAME,
    "none": None,
}


def _documented_states() -> dict[str, tuple[str, str, str]]:
    """Section 3's table: each state's accepted frames, idle timer and deadline, as written."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    section = text[text.index("## 3. Connection states") : text.index("## 4. Handshake")]
    rows: dict[str, tuple[str, str, str]] = {}
    for line in section.splitlines():
        found = re.fullmatch(r"\| `([A-Z_]+)` \|[^|]*\|([^|]*)\|([^|]*)\|([^|]*)\|", line)
        if found:
            name, accepts, idle, deadline = (part.strip() for part in found.groups())
            rows[name] = (accepts, idle, deadline)
    return rows


class StateTableTests(SynchronousTestCase):
    def test_every_state_has_a_row(self) -> None:
        self.assertEqual(set(STATES), set(State))

    def test_documented_as_coded(self) -> None:
        """docs/protocol.md section 3 shows the same states, frames, timer and deadlines."""
        documented = _documented_states()
        self.assertEqual(list(documented), [state.name for state in State])
        for state, rules in STATES.items():
            accepts, idle, deadline = documented[state.name]
            frames = () if accepts.startswith("none") else tuple(re.findall(r"`([A-Z_]+)`", accepts))
            self.assertEqual(frames, tuple(kind.name for kind in rules.accepts), state)
            self.assertEqual(idle.startswith("running"), rules.idle_timer, state)
            self.assertIn(idle.split(",")[0], ("running", "stopped"), state)
            self.assertEqual(
                [found for prefix, found in _DEADLINES.items() if deadline.startswith(prefix)],
                [rules.deadline],
                state,
            )

    def test_refusal_names_what_the_state_accepts(self) -> None:
        with self.assertRaises(ProtocolError) as caught:
            STATES[State.READY].admit(FrameType.BODY_END)
        self.assertEqual(caught.exception.code, "unexpected-frame")
        self.assertEqual(
            caught.exception.message, "BODY_END frame was not expected here; expected REQUEST or CHECK"
        )
        with self.assertRaises(ProtocolError) as caught:
            STATES[State.BUSY].admit(FrameType.CHECK)
        self.assertEqual(caught.exception.message, "CHECK frame was not expected here")
        STATES[State.BODY_END].admit(FrameType.BODY_END)


class StatesFollowedTests(SynchronousTestCase):
    """The protocol's timers are the ones its current state's row asks for."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.upstream = FakeUpstream()
        self.factory = RelayFactory(self.clock, self.upstream, "states", idle_timeout=120)
        peer = IPv4Address("TCP", "10.1.2.3", 5555)
        self.protocol: RelayProtocol = self.factory.buildProtocol(peer)
        self.transport = StringTransport(peerAddress=peer)
        self.protocol.makeConnection(self.transport)

    def assertFollowsTable(self, state: State) -> None:
        self.assertIs(self.protocol.state, state)
        rules = STATES[state]
        self.assertEqual(self.protocol.timeOut is not None, rules.idle_timer, state)
        self.assertEqual(
            self.protocol._hello_deadline.running, rules.deadline is FrameDeadline.HELLO, state
        )

    def test_a_check_then_an_upload(self) -> None:
        self.assertFollowsTable(State.HELLO)
        self.protocol.dataReceived(HELLO)
        self.assertFollowsTable(State.READY)
        self.protocol.dataReceived(encode_message(FrameType.CHECK, {}))
        self.assertFollowsTable(State.BUSY)
        self.upstream.checks[0].callback(CheckResult(True, "https://e", 0.1, "192.0.2.1:443", 200))
        self.assertFollowsTable(State.READY)
        request = {"method": "POST", "path": "/up", "headers": [], "length": 3}
        self.protocol.dataReceived(encode_message(FrameType.REQUEST, request))
        self.assertFollowsTable(State.BODY)
        self.protocol.dataReceived(b"abc")
        # e-PMSI's connection is not ready: the relay holds the workstation back.
        self.assertIs(self.protocol.state, State.BODY_END)
        self.assertIsNone(self.protocol.timeOut)
        self.protocol.resume_client()
        self.assertFollowsTable(State.BODY_END)
        self.protocol.dataReceived(encode_message(FrameType.BODY_END, {"sha256": "0" * 64}))
        self.assertFollowsTable(State.CLOSING)
        self.assertIn(b"integrity-mismatch", self.transport.value())
