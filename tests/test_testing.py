"""
Tests for L{epop.testing}: each double provides the interface of what it
stands for, as the real one does, and does what C{docs/compose.md} says.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import BrowserLikePolicyForHTTPS, readBody
from zope.interface.verify import verifyObject

from epop.epmsi.proxy import ProxyConfig
from epop.epmsi.upstream import CheckResult, IUpstream, Upstream
from epop.errors import UpstreamError
from epop.journal.writer import IJournalWriter
from epop.messages import Text
from epop.testing import FakeUpstream, MemoryJournalWriter
from tests.support import InMemoryBody

COMPOSE = Path(__file__).resolve().parent.parent / "docs" / "compose.md"


class InterfaceTests(SynchronousTestCase):
    def test_real_upstream(self) -> None:
        """L{Upstream} provides L{IUpstream}, with or without a proxy."""
        reactor = MemoryReactorClock()
        policy = BrowserLikePolicyForHTTPS()
        self.assertTrue(verifyObject(IUpstream, Upstream(reactor, "https://epmsi.example", policy)))
        proxy = ProxyConfig("proxy.example", 3128)
        tunnelled = Upstream(reactor, "https://epmsi.example", policy, proxy=proxy)
        self.assertTrue(verifyObject(IUpstream, tunnelled))

    def test_fake_upstream(self) -> None:
        """L{FakeUpstream} provides the same interface."""
        self.assertTrue(verifyObject(IUpstream, FakeUpstream()))

    def test_memory_journal_writer(self) -> None:
        """L{MemoryJournalWriter} provides L{IJournalWriter}."""
        self.assertTrue(verifyObject(IJournalWriter, MemoryJournalWriter()))


class FakeUpstreamTests(SynchronousTestCase):
    def test_requests_wait_for_the_test(self) -> None:
        """A request is recorded as asked and answered when the test responds."""
        upstream = FakeUpstream()
        answered = upstream.request("POST", "/up.do", [("X-A", "1")], None)
        [request] = upstream.requests
        self.assertEqual(
            (request.method, request.path, request.headers, request.body),
            ("POST", "/up.do", [("X-A", "1")], None),
        )
        self.assertNoResult(answered)
        request.respond(201, [("X-B", "2"), ("X-B", "3")], b"receipt")
        response = self.successResultOf(answered)
        self.assertEqual((response.code, response.phrase), (201, b"Created"))
        self.assertEqual(response.headers.getRawHeaders(b"x-b"), [b"2", b"3"])
        self.assertEqual(self.successResultOf(readBody(response)), b"receipt")

    def test_request_failure(self) -> None:
        """The test can fail a request as the real upstream does."""
        upstream = FakeUpstream()
        answered = upstream.request("GET", "/", [], None)
        error = UpstreamError("epmsi-unreachable", Text("no"), "refused")
        upstream.requests[0].answer.errback(error)
        self.assertIs(self.failureResultOf(answered, UpstreamError).value, error)

    def test_read_body(self) -> None:
        """C{read_body} takes the request's body whole; no body reads as empty."""
        upstream = FakeUpstream()
        upstream.request("POST", "/", [], InMemoryBody([b"ab", b"cd"]))
        upstream.request("GET", "/", [], None)
        self.assertEqual(self.successResultOf(upstream.requests[0].read_body()), b"abcd")
        self.assertEqual(self.successResultOf(upstream.requests[1].read_body()), b"")

    def test_read_bodies(self) -> None:
        """With C{read_bodies}, each body is taken at once and its failure dropped."""
        produced: Deferred[None] = Deferred()
        consumers: list[object] = []

        class Body(InMemoryBody):
            def startProducing(self, consumer: object) -> Deferred[None]:
                consumers.append(consumer)
                return produced

        FakeUpstream(read_bodies=True).request("POST", "/", [], Body([b"x"]))
        self.assertEqual(len(consumers), 1)
        produced.errback(UpstreamError("aborted", Text("stopped"), None))
        self.assertIsNone(self.successResultOf(produced))

    def test_checks(self) -> None:
        """Checks wait for the test, or are answered at once with C{check_result}."""
        waiting = FakeUpstream()
        checked = waiting.check()
        self.assertNoResult(checked)
        self.assertEqual(waiting.checks, [checked])
        reached = CheckResult(True, "https://epmsi.example", 0.1, "192.0.2.1:443", 200)
        answering = FakeUpstream(check_result=reached)
        self.assertIs(self.successResultOf(answering.check()), reached)
        self.assertIs(self.successResultOf(answering.check()), reached)
        self.assertEqual(len(answering.checks), 2)

    def test_close(self) -> None:
        upstream = FakeUpstream("https://other.example", proxy=ProxyConfig("p", 3128))
        self.assertEqual((upstream.url, upstream.proxy.address), ("https://other.example", "p:3128"))
        self.assertFalse(upstream.closed)
        self.assertIsNone(self.successResultOf(upstream.close()))
        self.assertTrue(upstream.closed)


class ComposeDocTests(SynchronousTestCase):
    def test_example_runs(self) -> None:
        """The example of docs/compose.md's testing section runs and its assertions hold."""
        text = COMPOSE.read_text(encoding="utf-8")
        section = text.split("## Testing code that uses the relay", 1)[1]
        match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
        assert match is not None
        exec(compile(match.group(1), str(COMPOSE), "exec"), {})
