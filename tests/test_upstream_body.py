"""
The body e-PMSI's HTTP client is handed keeps L{IBodyProducer}'s promise:
once stopped, its Deferred never fires, whatever the relay's body does.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from epop.epmsi.upstream import _StoppableBody


@implementer(IBodyProducer)
class _ScriptedBody:
    """A body whose Deferred the test fires, and that records what it is told."""

    length = 42

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred()
        self.calls: list[str] = []

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self.calls.append("start")
        return self.done

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class StoppableBodyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.inner = _ScriptedBody()
        self.body = _StoppableBody(self.inner)

    def test_provides_and_forwards(self) -> None:
        """It is a body of the same length, and passes pause, resume and stop on."""
        verifyObject(IBodyProducer, self.body)
        self.assertEqual(self.body.length, 42)
        self.body.startProducing(object())
        self.body.pauseProducing()
        self.body.resumeProducing()
        self.body.stopProducing()
        self.assertEqual(self.inner.calls, ["start", "pause", "resume", "stop"])

    def test_success_and_failure_pass_through(self) -> None:
        """Before any stop, the wrapped body's result is the result."""
        done = self.body.startProducing(object())
        self.inner.done.callback(None)
        self.assertIsNone(self.successResultOf(done))
        other = _StoppableBody(_ScriptedBody())
        failed = other.startProducing(object())
        other._wrapped.done.errback(ValueError("broken"))  # type: ignore[attr-defined]
        self.failureResultOf(failed, ValueError)

    def test_failure_after_stop_is_dropped(self) -> None:
        """After stopProducing a late failure fires nothing and is not left unhandled."""
        done = self.body.startProducing(object())
        self.body.stopProducing()
        self.inner.done.errback(Failure(ConnectionError("relay aborted the upload")))
        self.assertNoResult(done)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_cancel_reaches_the_body(self) -> None:
        """Cancelling the result cancels the wrapped body's Deferred."""
        done = self.body.startProducing(object())
        done.cancel()
        self.assertTrue(self.inner.done.called)
        self.failureResultOf(done)
