"""
The progress of C{epop send} as a person and a scheduled task see it: the
real command in a process, sending to the sandbox through a real relay (or
directly) on loopback, its standard error a terminal (a pseudo-terminal) or
a pipe, its standard output a pipe that must carry e-PMSI's receipt only.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import termios

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.relaying import start_relay
from tests.support import make_trustme_sandbox, write_random_file
from tests.test_cli_interrupt import Command, epop_command

SIZE = 8 * 1024 * 1024
ANSWERED = re.compile(r"^e-PMSI answered (\d+\.\d|less than 0\.1) s after the last byte\.$", re.M)


@implementer(IReadDescriptor)
class TerminalReader:
    """What a process writes to its terminal: the master side of a pty, read until every writer closed it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = b""
        self.closed: Deferred[bytes] = Deferred()

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "terminal"

    def doRead(self) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:
            chunk = b""  # EIO: the process's end of the terminal is closed
        if chunk:
            self.data += chunk
        else:
            self.close()

    def close(self) -> None:
        if not self.closed.called:
            reactor.removeReader(self)
            os.close(self.fd)
            self.closed.callback(self.data)

    def connectionLost(self, reason: Failure) -> None:
        self.close()


class ProgressTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)
        self.path = os.path.abspath(self.mktemp())
        self.sha = write_random_file(self.path, SIZE, seed=14)
        self.config = os.path.abspath(self.mktemp())

    def start(self, argv: list[str], stderr: int | str = "r") -> Command:
        """C{epop ARGV}, its standard output a pipe, its standard error C{stderr} (a pipe, or this fd)."""
        command = Command()
        env = dict(os.environ, EPOP_CONFIG=self.config, LANG="C.UTF-8")
        env.pop("LC_ALL", None)
        env.pop("LC_MESSAGES", None)
        command.process = reactor.spawnProcess(
            command, epop_command()[0], [*epop_command(), *argv], env=env,
            childFDs={0: "w", 1: "r", 2: stderr},
        )
        self.addCleanup(command.kill)
        return command

    def through_relay(self, *options: str) -> list[str]:
        return ["send", self.path, "--relay", str(self.relay.endpoint), *options]

    async def on_terminal(self, argv: list[str], columns: int = 120) -> tuple[int | None, bytes, str]:
        """Run C{argv} with a terminal as standard error: status, output, what the terminal got."""
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24 if columns else 0, columns, 0, 0))
        terminal = TerminalReader(master)
        self.addCleanup(terminal.close)
        reactor.addReader(terminal)
        try:
            command = self.start(argv, stderr=slave)
        finally:
            os.close(slave)
        code, _ = await command.ended
        shown = await terminal.closed
        return code, command.out, shown.decode("utf-8")

    async def in_a_log(self, argv: list[str]) -> tuple[int | None, bytes, str]:
        """Run C{argv} with a pipe as standard error, as a scheduled task's log."""
        command = self.start(argv)
        code, _ = await command.ended
        return code, command.out, command.err.decode("utf-8")

    def receipt_of_the_file(self, out: bytes) -> None:
        """Standard output holds e-PMSI's receipt, and nothing else."""
        self.assertEqual(json.loads(out)["files"][0]["sha256"], self.sha)

    async def test_bar_on_a_terminal(self) -> None:
        """On a terminal: a bar redrawn in place with percentage and bytes; the receipt on standard output."""
        code, out, shown = await self.on_terminal(self.through_relay())
        self.assertEqual(code, 0, shown)
        self.receipt_of_the_file(out)
        self.assertRegex(shown, r"100% \|[^|\r\n]*\| 8\.39 MB of 8\.39 MB, [\d.]+ [kMGT]?B/s[\r\n]")
        self.assertIn("\r", shown)
        self.assertIn("The whole file has left; waiting for e-PMSI's answer.", shown)
        # One bar: nothing drawn after the file's last byte.
        after = shown.split("The whole file has left", 1)[1]
        self.assertNotIn("%", after)
        self.assertRegex(shown.replace("\r\n", "\n"), ANSWERED)
        self.assertIn("e-PMSI answered 200 OK.", shown)
        self.assertNotIn("sha256", shown)

    async def test_bar_on_a_terminal_of_unknown_width(self) -> None:
        """A terminal that says it has 0 columns (some remote shells) still gets an 80-column bar."""
        code, out, shown = await self.on_terminal(self.through_relay(), columns=0)
        self.assertEqual(code, 0, shown)
        self.receipt_of_the_file(out)
        bars = re.findall(r"100% \|[^|\r\n]*\| 8\.39 MB of 8\.39 MB, [^\r\n]*", shown)
        self.assertTrue(bars, shown)
        self.assertEqual(len(bars[-1]), 80)

    async def test_plain_lines_in_a_log(self) -> None:
        """In a log: at most eleven plain lines with percentages, no carriage return, then e-PMSI's delay."""
        code, out, err = await self.in_a_log(self.through_relay())
        self.assertEqual(code, 0, err)
        self.receipt_of_the_file(out)
        self.assertNotIn("\r", err)
        lines = [line for line in err.splitlines() if "%" in line]
        self.assertTrue(1 <= len(lines) <= 11, err)
        for line in lines:
            self.assertRegex(line, r"^Sent: \d+% \([\d.]+ [kM]?B of 8\.39 MB\)")
        self.assertTrue(lines[-1].startswith("Sent: 100% (8.39 MB of 8.39 MB), "), err)
        self.assertRegex(err, ANSWERED)

    async def test_no_blank_line_in_a_log(self) -> None:
        """e-PMSI's receipt ends its own line: the log gets no blank line after it, even with --quiet."""
        for options in [(), ("--quiet",)]:
            code, out, err = await self.in_a_log(self.through_relay(*options))
            self.assertEqual(code, 0, err)
            self.assertTrue(out.endswith(b"\n"), out)
            self.assertNotIn("\n\n", err)
            self.assertFalse(err.startswith("\n"), err)

    async def test_plain_lines_in_french_direct(self) -> None:
        """Sent directly, in French: the lines, their units and e-PMSI's delay."""
        code, out, err = await self.in_a_log([
            "--lang", "fr", "send", self.path, "--direct", "--epmsi", self.sandbox.url,
            "--ca-file", self.sandbox.ca_path,
        ])
        self.assertEqual(code, 0, err)
        self.receipt_of_the_file(out)
        self.assertIn("Envoyé : 100 % (8,39 Mo sur 8,39 Mo), ", err)
        self.assertIn("Fichier entièrement envoyé ; en attente de la réponse d'e-PMSI.", err)
        self.assertRegex(err, r"(?m)^e-PMSI a répondu (\d+,\d|moins de 0,1) s après le dernier octet\.$")

    async def test_quiet(self) -> None:
        """--quiet on a terminal: no bar, no line about progress; the receipt and the closing line remain."""
        code, out, shown = await self.on_terminal(self.through_relay("--quiet"))
        self.assertEqual(code, 0, shown)
        self.receipt_of_the_file(out)
        self.assertNotIn("%", shown)
        self.assertNotIn("\r\r", shown)
        self.assertNotIn("last byte", shown)
        self.assertIn("e-PMSI answered 200 OK.", shown)
        # Under a second: hundredths, never "in 0.0 s".
        self.assertRegex(shown, r" in (\d+\.\d|0\.\d\d) s: e-PMSI answered 200 OK\.")
