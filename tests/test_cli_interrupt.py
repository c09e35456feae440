"""
The C{epop} command as a real process, on loopback, interrupted or cut off
in the middle of an upload: it must stop promptly, say what became of the
file, exit with the documented status, print no traceback, and never let
e-PMSI (the sandbox) store a whole file.

Between the command and the relay sits a throttled TCP forwarder, so the
upload is still running when the test acts, whatever loopback's speed.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.protocols import portforward
from twisted.protocols.policies import ThrottlingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.relaying import start_relay
from tests.support import SilentServer, free_port, make_trustme_sandbox, poll_until, write_random_file

SIZE = 48 * 1024 * 1024
#: Bytes a second the forwarder passes on: the upload takes about 12 s.
RATE = 4 * 1024 * 1024


def epop_command() -> list[str]:
    """The installed console script, or the same entry point through Python."""
    script = os.path.join(os.path.dirname(sys.executable), "epop")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from epop.cli import main; main()"]


class _CountingServer(portforward.ProxyServer):
    """The forwarder's side facing the workstation: counts what it forwards."""

    def dataReceived(self, data: bytes) -> None:
        self.factory.received += len(data)
        super().dataReceived(data)

    def connectionMade(self) -> None:
        self.factory.servers.append(self)
        super().connectionMade()


class Forwarder(portforward.ProxyFactory):
    protocol = _CountingServer

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.received = 0
        self.servers: list[_CountingServer] = []

    def cut(self) -> None:
        """Drop both sides at once, as a relay killed with SIGKILL does."""
        for server in self.servers:
            server.transport.abortConnection()
            if server.peer is not None:
                server.peer.transport.abortConnection()


class Command(ProcessProtocol):
    """One C{epop} process: its output and how it ended."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()
        self.process: Any = None

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback((reason.value.exitCode, reason.value.signal))

    def kill(self) -> None:
        if not self.ended.called:
            self.process.signalProcess("KILL")


class InterruptedSendTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)
        self.forwarder = Forwarder("127.0.0.1", self.relay.port)
        throttled = ThrottlingFactory(self.forwarder, readLimit=RATE)
        port = reactor.listenTCP(0, throttled, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(self.forwarder.cut)
        self.relay_address = f"127.0.0.1:{port.getHost().port}"
        self.path = os.path.abspath(self.mktemp())
        write_random_file(self.path, SIZE, seed=11)
        self.config = os.path.abspath(self.mktemp())

    def start(self, *argv: str) -> Command:
        command = Command()
        env = dict(os.environ, EPOP_CONFIG=self.config, LANG="C.UTF-8")
        env.pop("LC_ALL", None)
        env.pop("LC_MESSAGES", None)
        command.process = reactor.spawnProcess(
            command, epop_command()[0], [*epop_command(), *argv], env=env
        )
        self.addCleanup(command.kill)
        return command

    async def sending(self, command: Command) -> None:
        """Wait until a few MB of the file went through, the upload still running."""
        going = await poll_until(
            reactor, lambda: command.ended.called or self.forwarder.received > 4 * 1024 * 1024, 400, 0.05
        )
        self.assertTrue(going and not command.ended.called, command.err.decode(errors="replace"))
        self.assertLess(self.forwarder.received, SIZE)

    async def ended(self, command: Command, within: float) -> tuple[int | None, int | None]:
        """How the command ended; it must end within C{within} seconds."""
        started = reactor.seconds()
        done = await poll_until(reactor, lambda: command.ended.called, int(within * 20), 0.05)
        self.assertTrue(done, f"still running after {within} s: {command.err!r}")
        self.assertLess(reactor.seconds() - started, within)
        return await command.ended

    async def nothing_stored(self) -> None:
        """The relay saw the workstation leave, and the sandbox kept no file."""
        closed = await poll_until(
            reactor, lambda: "connection-closed" in self.relay.types(), 200, 0.05
        )
        self.assertTrue(closed, self.relay.types())
        await poll_until(reactor, lambda: False, 10, 0.05)  # let the relay's abort land
        self.assertEqual(self.sandbox.complete_files(), [])

    async def interrupt(self, number: int, name: str) -> None:
        command = self.start("send", self.path, "--relay", self.relay_address)
        await self.sending(command)
        command.process.signalProcess(number)
        code, killed_by = await self.ended(command, 10)
        err = command.err.decode()
        self.assertEqual((code, killed_by), (128 + number, None), err)
        self.assertIn(f"Interrupted ({name}): the upload was stopped.", err)
        self.assertIn(f"{self.path} was not delivered: e-PMSI did not receive it", err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(command.out, b"")
        await self.nothing_stored()

    async def test_sigint(self) -> None:
        """Ctrl-C during an upload: exit 130, 'not delivered', nothing stored by e-PMSI."""
        await self.interrupt(signal.SIGINT, "SIGINT")

    async def test_sigterm(self) -> None:
        """A scheduler's SIGTERM during an upload: exit 143, the same guarantees."""
        await self.interrupt(signal.SIGTERM, "SIGTERM")

    async def test_relay_dies(self) -> None:
        """The relay's connection reset mid-upload: exit 1 at once with the cause, no traceback."""
        command = self.start("send", self.path, "--relay", self.relay_address)
        await self.sending(command)
        self.forwarder.cut()
        code, killed_by = await self.ended(command, 10)
        err = command.err.decode()
        self.assertEqual((code, killed_by), (1, None), err)
        self.assertIn("The relay closed the connection during the upload", err)
        self.assertIn("e-PMSI did not receive the file", err)
        self.assertIn("(failed step: sending the file through the relay)", err)
        self.assertNotIn("Traceback", err)
        self.assertNotIn("Unhandled", err)
        await self.nothing_stored()

    async def test_sigint_direct(self) -> None:
        """Ctrl-C during a direct upload cancels the HTTP request: exit 130, nothing stored."""
        forwarder = Forwarder("127.0.0.1", self.sandbox.port.getHost().port)
        port = reactor.listenTCP(0, ThrottlingFactory(forwarder, readLimit=RATE), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(forwarder.cut)
        self.forwarder = forwarder
        command = self.start(
            "send", self.path, "--direct", "--epmsi", f"https://127.0.0.1:{port.getHost().port}",
            "--ca-file", self.sandbox.ca_path,
        )
        await self.sending(command)
        command.process.signalProcess(signal.SIGINT)
        code, _ = await self.ended(command, 10)
        err = command.err.decode()
        self.assertEqual(code, 130, err)
        self.assertIn("(failed step: sending the file to e-PMSI)", err)
        self.assertNotIn("Traceback", err)
        await poll_until(reactor, lambda: False, 20, 0.05)
        self.assertEqual(self.sandbox.complete_files(), [])


class InterruptedTestTests(TestCase):
    timeout = 60

    async def test_sigint_during_test(self) -> None:
        """Ctrl-C while `epop test` waits on a silent relay: exit 130, no traceback."""
        silent = SilentServer(self, reactor)
        command = Command()
        env = dict(os.environ, EPOP_CONFIG=os.path.abspath(self.mktemp()), LANG="C.UTF-8")
        command.process = reactor.spawnProcess(
            command, epop_command()[0],
            [*epop_command(), "test", "--relay", f"127.0.0.1:{silent.port}", "--timeout", "60"],
            env=env,
        )
        self.addCleanup(command.kill)
        connected = await poll_until(reactor, lambda: bool(silent.accepted), 400, 0.05)
        self.assertTrue(connected, command.err)
        await poll_until(reactor, lambda: False, 4, 0.05)  # the HELLO is out, WELCOME awaited
        command.process.signalProcess(signal.SIGINT)
        done = await poll_until(reactor, lambda: command.ended.called, 200, 0.05)
        self.assertTrue(done)
        code, _ = await command.ended
        self.assertEqual(code, 130, command.err)
        self.assertIn(b"Interrupted (SIGINT): the test was stopped.", command.err)
        self.assertNotIn(b"Traceback", command.err)


class RelayKilledTests(TestCase):
    """A real `twistd epop` relay killed with SIGKILL while `epop send` streams through it."""

    timeout = 120

    async def test_sigkill_relay(self) -> None:
        """The command fails within seconds with the cause and exit 1; e-PMSI stores nothing."""
        from tests.test_drain import start_relay_process

        sandbox = make_trustme_sandbox(self, reactor)
        port = free_port()
        relay = await start_relay_process(
            self, port, "--epmsi", sandbox.url, "--ca-file", sandbox.ca_path
        )
        forwarder = Forwarder("127.0.0.1", port)
        listening = reactor.listenTCP(0, ThrottlingFactory(forwarder, readLimit=RATE), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.addCleanup(forwarder.cut)
        path = os.path.abspath(self.mktemp())
        write_random_file(path, SIZE, seed=12)
        command = Command()
        env = dict(os.environ, EPOP_CONFIG=os.path.abspath(self.mktemp()), LANG="C.UTF-8")
        env.pop("LC_ALL", None)
        command.process = reactor.spawnProcess(
            command, epop_command()[0],
            [*epop_command(), "send", path, "--relay", f"127.0.0.1:{listening.getHost().port}"],
            env=env,
        )
        self.addCleanup(command.kill)
        going = await poll_until(
            reactor, lambda: command.ended.called or forwarder.received > 4 * 1024 * 1024, 400, 0.05
        )
        self.assertTrue(going and not command.ended.called, command.err)
        relay.signal(signal.SIGKILL)
        self.assertEqual((await relay.ended)[1], signal.SIGKILL)
        done = await poll_until(reactor, lambda: command.ended.called, 200, 0.05)
        self.assertTrue(done, f"epop send still running 10 s after the relay died: {command.err!r}")
        code, _ = await command.ended
        err = command.err.decode()
        self.assertEqual(code, 1, err)
        self.assertIn("The relay closed the connection during the upload", err)
        self.assertIn("was not delivered: e-PMSI did not receive it", err)
        self.assertNotIn("Traceback", err)
        self.assertNotIn("TaskStopped", err)
        await poll_until(reactor, lambda: False, 20, 0.05)
        self.assertEqual(sandbox.complete_files(), [])
