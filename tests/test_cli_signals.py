"""
C{epop send}'s exit status against signals that race e-PMSI's answer: in
process through L{epop.cli.main} on a reactor that plays a script (each
step one turn of the reactor, so that each order of "the answer arrives"
and "SIGINT's handler runs" is tested every time), and as a real process
signalled the moment it prints its success line.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.task import LoopingCall
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop import cli
from epop.workstation import commands as workstation_commands
from epop.workstation import Reply, UploadFailed
from epop.errors import EpopError
from epop.messages import Text
from tests.relaying import start_relay
from tests.support import make_trustme_sandbox, write_random_file
from tests.test_cli_interrupt import Command, epop_command

RECEIPT = b'{"status": "ok"}\n'


class ScriptedReactor(MemoryReactorClock):
    """
    C{run()} runs the startup hooks, then each step of C{script}, then
    returns: the steps after C{stop()} are what a real reactor still runs
    on its way out (calls queued by a signal handler among them).
    """

    def __init__(self, script: list[Callable[[], object]]) -> None:
        super().__init__()
        self.script = script

    def run(self) -> None:
        self.running = True
        self.hasRun = True
        for hook, args, kwargs in self.whenRunningHooks:
            hook(*args, **kwargs)
        for step in self.script:
            step()
        self.stop()


class FakeUpload:
    """What L{epop.workstation.commands.send_file} returns: an upload the script finishes or cancels."""

    def __init__(self) -> None:
        self.output: Any = None
        self.result: Deferred[Reply] = Deferred(self._cancelled)
        #: Set when cancelling comes too late to stop the answer.
        self.answer_complete = False

    def send_file(self, reactor: Any, path: str, *, output: Any = None, **kwargs: Any) -> Deferred[Reply]:
        self.output = output
        return self.result

    def answer(self) -> None:
        """e-PMSI's whole answer arrives, unless the upload was stopped."""
        if not self.result.called:
            self.output.write(RECEIPT)
            self.result.callback(Reply(200, "OK", [], length=len(RECEIPT)))

    def _cancelled(self, result: Deferred[Reply]) -> None:
        if self.answer_complete:
            # The answer had all arrived, its Deferred not yet fired.
            self.answer()
            return
        reason = EpopError("cancelled", Text("The upload was cancelled."))
        result.errback(UploadFailed(reason, "upload", via_relay=True, maybe_delivered=False))


class RecordedSignals(cli.ProcessSignals):
    """The process's signals left alone: the test delivers them itself."""

    def __init__(self, interruptions: list[cli.Interruption]) -> None:
        self.interruptions = interruptions
        self.left = False

    def install(self, reactor: Any, interruption: cli.Interruption) -> None:
        self.interruptions.append(interruption)

    def leaving(self) -> None:
        self.left = True


class SignalRaceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        with open(self.path, "wb") as f:
            f.write(b"x" * 1000)
        self.upload = FakeUpload()
        self.patch(workstation_commands, "send_file", self.upload.send_file)
        self.stdout = io.BytesIO()
        self.stderr = io.StringIO()
        self.interruptions: list[cli.Interruption] = []
        self.patch(sys, "stderr", self.stderr)
        self.patch(os, "environ", {"EPOP_CONFIG": os.path.abspath(self.mktemp()), "LANG": "C"})
        # The real standard output is trial's: leave it alone.
        self.patch(cli, "_quiet_if_stdout_closed", lambda status, language="en": status)

    def signal_handler(self, number: int) -> Callable[[], None]:
        """A step: SIGINT's handler's call, as the reactor runs it."""
        return lambda: self.interruptions[0].interrupt(number)

    def run_main(self, *script: Callable[[], object]) -> int:
        reactor = ScriptedReactor(list(script))
        real_run = cli.run

        def run(reactor: Any, argv: list[str], **kwargs: Any) -> Deferred[int]:
            return real_run(reactor, argv, stdout=self.stdout, stderr=self.stderr, **kwargs)

        self.patch(cli, "run", run)
        signals = RecordedSignals(self.interruptions)
        with self.assertRaises(SystemExit) as leaving:
            cli.main(["send", self.path, "--relay", "relay.example"], reactor=reactor, signals=signals)
        self.assertFalse(reactor.running)
        self.assertTrue(signals.left, "signals still handled on the way out")
        return leaving.exception.code

    def test_signal_after_the_answer(self) -> None:
        """The answer, then SIGINT before the process is out: exit 0, no 'Interrupted'."""
        code = self.run_main(self.upload.answer, self.signal_handler(signal.SIGINT))
        err = self.stderr.getvalue()
        self.assertEqual(code, 0, err)
        self.assertEqual(self.stdout.getvalue(), RECEIPT)
        self.assertIn("e-PMSI answered 200 OK.", err)
        self.assertNotIn("Interrupted", err)

    def test_signal_too_late_to_stop_the_answer(self) -> None:
        """
        SIGINT while the whole answer is already in: cancelling cannot stop
        it, the answer is the outcome, printed as sent, and the exit status
        is that outcome's, 0, never 130.
        """
        self.upload.answer_complete = True
        code = self.run_main(self.signal_handler(signal.SIGINT), self.signal_handler(signal.SIGINT))
        err = self.stderr.getvalue()
        self.assertEqual(code, 0, err)
        self.assertEqual(self.stdout.getvalue(), RECEIPT)
        self.assertIn("e-PMSI answered 200 OK.", err)
        self.assertNotIn("Interrupted", err)

    def test_signal_before_the_answer(self) -> None:
        """SIGINT, then the answer: the signal won, exit 130, nothing says 'Sent'."""
        code = self.run_main(self.signal_handler(signal.SIGINT), self.upload.answer)
        err = self.stderr.getvalue()
        self.assertEqual(code, 130, err)
        self.assertIn("Interrupted (SIGINT): the upload was stopped.", err)
        self.assertNotIn("Sent ", err)
        self.assertNotIn("answered 200", err)
        self.assertEqual(self.stdout.getvalue(), b"")

    def test_sigterm_before_the_answer(self) -> None:
        """SIGTERM, then the answer: exit 143, nothing says 'Sent'."""
        code = self.run_main(self.signal_handler(signal.SIGTERM), self.upload.answer)
        err = self.stderr.getvalue()
        self.assertEqual(code, 143, err)
        self.assertNotIn("Sent ", err)

    def test_second_signal_with_no_outcome(self) -> None:
        """A cancel that leaves the send busy, then a second signal: 130, as before."""
        self.upload.result = Deferred(lambda d: None)
        never: Deferred[None] = Deferred()
        self.upload.result.addErrback(lambda _: never)  # still cleaning up
        code = self.run_main(self.signal_handler(signal.SIGINT), self.signal_handler(signal.SIGINT))
        self.assertEqual(code, 130, self.stderr.getvalue())
        self.assertNotIn("Sent ", self.stderr.getvalue())


class _SignalAfterSent(Command):
    """
    An C{epop send} process that gets SIGINT as soon as it says 'Sent', and
    again every few milliseconds until it is gone: one of them lands in
    each moment of its way out.
    """

    signalled = 0
    _repeat: LoopingCall | None = None

    def errReceived(self, data: bytes) -> None:
        super().errReceived(data)
        if b"Sent " in self.err and self._repeat is None:
            self._repeat = LoopingCall(self._signal)
            self._repeat.clock = reactor
            self._repeat.start(0.003)

    def _signal(self) -> None:
        try:
            self.process.signalProcess("INT")
            self.signalled += 1
        except ProcessExitedAlready:
            pass

    def processEnded(self, reason: Failure) -> None:
        if self._repeat is not None and self._repeat.running:
            self._repeat.stop()
        super().processEnded(reason)


class SignalAfterSentProcessTests(TestCase):
    """The real process: Ctrl-C just after the success line, while it exits."""

    timeout = 120

    async def test_sigint_after_sent_exits_0(self) -> None:
        """A delivered file exits 0 (never killed by SIGINT, 130) whenever the signal lands."""
        sandbox = make_trustme_sandbox(self, reactor)
        relay = start_relay(self, reactor, sandbox.url, sandbox.ca_path)
        path = os.path.abspath(self.mktemp())
        write_random_file(path, 64 * 1024, seed=4)
        env = dict(os.environ, EPOP_CONFIG=os.path.abspath(self.mktemp()), LANG="C.UTF-8")
        env.pop("LC_ALL", None)
        for _ in range(8):
            command = _SignalAfterSent()
            command.process = reactor.spawnProcess(
                command, epop_command()[0],
                [*epop_command(), "send", path, "--relay", str(relay.endpoint)], env=env,
            )
            self.addCleanup(command.kill)
            code, killed_by = await command.ended
            err = command.err.decode()
            self.assertTrue(command.signalled, err)
            self.assertEqual((code, killed_by), (0, None), err)
            self.assertIn("e-PMSI answered 200 OK.", err)
            self.assertNotIn("Interrupted", err)
            self.assertNotIn("Traceback", err)
