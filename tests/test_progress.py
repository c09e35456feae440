"""
The progress C{epop send} shows, unit by unit: the plain lines' rules
(a 10 % step or 30 s, nothing more often) on a L{Clock}, the bar's words,
the closing line about e-PMSI's answer, and which display is chosen; and,
on loopback, that the bytes counted are those the connection took.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop.workstation.progress import (
    PlainProgress,
    QuietProgress,
    TerminalProgress,
    make_progress,
    readable_duration,
    readable_size,
)
from epop.workstation.client import RelayAddress, send_file
from tests.relaying import start_relay
from tests.support import make_trustme_sandbox, poll_until, write_random_file
from tests.test_cli_interrupt import Forwarder


class TerminalStream(io.StringIO):
    """A standard error that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class PlainLinesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.stream = io.StringIO()
        self.progress = PlainProgress(self.clock, self.stream, "en")

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def test_a_line_per_ten_percent(self) -> None:
        """1 % a second: one line at each 10 % step, ten in all, no tick between, then the wait."""
        for percent in range(1, 101):
            self.clock.advance(1)
            self.progress.sent(percent * 10_000, 1_000_000)
        lines = self.lines()
        self.assertEqual(
            [line.split("%")[0] for line in lines[:-1]],
            [f"Sent: {step}" for step in range(10, 101, 10)],
        )
        self.assertEqual(lines[-1], "The whole file has left; waiting for e-PMSI's answer.")
        self.assertIn("Sent: 50% (500 kB of 1.00 MB), 10.0 kB/s, about 50 s left.", lines)
        self.assertEqual(lines[-2], "Sent: 100% (1.00 MB of 1.00 MB), 10.0 kB/s.")

    def test_no_time_left_under_a_second(self) -> None:
        """A fast upload: the steps with less than a second to go say no "about 0 s left"; 1 s and more is said."""
        for percent in range(10, 101, 10):
            self.clock.advance(0.1)
            self.progress.sent(percent * 100_000, 10_000_000)
        lines = self.lines()[:-1]
        self.assertEqual(len(lines), 10)
        self.assertIn("Sent: 20% (2.00 MB of 10.0 MB), 10.0 MB/s.", lines)
        self.assertIn("Sent: 90% (9.00 MB of 10.0 MB), 10.0 MB/s.", lines)
        self.assertFalse([line for line in lines if "left" in line], lines)
        slow = PlainProgress(self.clock, self.stream, "en")
        slow.sent(0, 1000)
        self.clock.advance(1)
        slow.sent(500, 1000)
        self.assertEqual(self.lines()[-1], "Sent: 50% (500 bytes of 1.00 kB), 500 bytes/s, about 1 s left.")

    def test_steps_crossed_at_once_make_one_line(self) -> None:
        """One write across several steps says where it is once; the next line waits for the next step."""
        self.progress.sent(100, 1000)
        self.clock.advance(1)
        self.progress.sent(450, 1000)
        self.progress.sent(490, 1000)
        self.assertEqual(len(self.lines()), 2)
        self.assertTrue(self.lines()[1].startswith("Sent: 45% "))
        self.progress.sent(500, 1000)
        self.assertEqual(len(self.lines()), 3)
        self.assertTrue(self.lines()[2].startswith("Sent: 50% "))

    def test_ticks_and_steps(self) -> None:
        """The times of the lines: ticks 30 s after the last line, steps when crossed."""
        times = []
        self.progress.sent(1, 100)
        for second in range(1, 121):
            before = len(self.lines())
            self.clock.advance(1)
            if second % 5 == 0:
                self.progress.sent(1 + second // 5, 100)
            times.extend([second] * (len(self.lines()) - before))
        # 10 % at 45 s, 20 % at 95 s; ticks at 30 s, then 30 s after each line.
        self.assertEqual(times, [30, 45, 75, 95])

    def test_nothing_more_often_than_30_seconds_when_nothing_moves(self) -> None:
        """A stalled upload: one line per 30 s, none in between."""
        self.progress.sent(10, 1000)
        self.clock.advance(29.9)
        self.assertEqual(self.lines(), [])
        self.clock.advance(0.1)
        self.assertEqual(self.lines(), ["Sent: 1% (10 bytes of 1.00 kB)."])
        self.clock.advance(29.9)
        self.assertEqual(len(self.lines()), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.lines()), 2)

    def test_waiting_for_the_answer(self) -> None:
        """After the last byte, a line every 30 s until e-PMSI answers, then how long it took."""
        self.progress.sent(1000, 1000)
        self.clock.advance(30)
        self.clock.advance(30)
        self.clock.advance(2.34)
        self.progress.answered(self.clock.seconds())
        self.assertEqual(
            self.lines()[-3:],
            [
                "Waiting for e-PMSI's answer: 30 s since the last byte.",
                "Waiting for e-PMSI's answer: 60 s since the last byte.",
                "e-PMSI answered 62.3 s after the last byte.",
            ],
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(60)
        self.progress.sent(1000, 1000)
        self.assertEqual(len(self.lines()), 5)

    def test_answer_before_the_last_byte(self) -> None:
        """e-PMSI answering early (a refusal) is said as such, not as a negative time."""
        self.progress.sent(100, 1000)
        answered_at = self.clock.seconds()
        self.clock.advance(1)
        self.progress.sent(1000, 1000)
        self.progress.answered(answered_at)
        self.assertEqual(self.lines()[-1], "e-PMSI answered before the whole file had left.")

    def test_an_answer_at_once(self) -> None:
        """An answer within 0.05 s reads as less than 0.1 s, never as 0.0 s."""
        self.progress.sent(1000, 1000)
        self.clock.advance(0.04)
        self.progress.answered(self.clock.seconds())
        self.assertEqual(self.lines()[-1], "e-PMSI answered less than 0.1 s after the last byte.")

    def test_stop_ends_the_ticks(self) -> None:
        """A failed or interrupted upload leaves no timer behind and prints nothing more."""
        self.progress.sent(50, 1000)
        self.progress.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.progress.sent(900, 1000)
        self.clock.advance(60)
        self.assertEqual(self.lines(), [])

    def test_a_closed_standard_error_ends_only_the_display(self) -> None:
        """A log that takes no more: the upload's writes go on, no timer is left, nothing more is said."""

        class Closed(io.StringIO):
            def write(self, text: str) -> int:
                raise BrokenPipeError(32, "Broken pipe")

        for display in (PlainProgress, TerminalProgress):
            progress = display(self.clock, Closed(), "en")
            progress.sent(10, 1000)
            progress.sent(500, 1000)
            self.clock.advance(30)
            progress.sent(1000, 1000)
            progress.answered(self.clock.seconds())
            self.assertTrue(progress.broken)
            self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_french(self) -> None:
        """The lines, sizes (Mo, with a decimal comma) and closing line in French."""
        progress = PlainProgress(self.clock, self.stream, "fr")
        progress.sent(0, 2_000_000)
        self.clock.advance(1)
        progress.sent(1_000_000, 2_000_000)
        self.clock.advance(1)
        progress.sent(2_000_000, 2_000_000)
        self.clock.advance(1.5)
        progress.answered(self.clock.seconds())
        self.assertEqual(
            self.lines(),
            [
                "Envoyé : 50 % (1,00 Mo sur 2,00 Mo), 1,00 Mo/s, reste environ 1 s.",
                "Envoyé : 100 % (2,00 Mo sur 2,00 Mo), 1,00 Mo/s.",
                "Fichier entièrement envoyé ; en attente de la réponse d'e-PMSI.",
                "e-PMSI a répondu 1,5 s après le dernier octet.",
            ],
        )


class OtherDisplaysTests(SynchronousTestCase):
    def test_quiet_says_nothing(self) -> None:
        """--quiet: no progress, no closing line, no timer."""
        clock, stream = Clock(), TerminalStream()
        progress = QuietProgress(clock, stream, "en")
        progress.sent(10, 100)
        progress.sent(100, 100)
        clock.advance(100)
        progress.answered(clock.seconds())
        self.assertEqual(stream.getvalue(), "")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_bar(self) -> None:
        """
        On a terminal, a tqdm bar with percentage, bytes of the whole, rate
        and time left; one only: reports after the file's last byte (the
        form's end leaving) draw nothing.
        """
        clock, stream = Clock(), TerminalStream()
        progress = TerminalProgress(clock, stream, "en")
        progress.sent(4_000_000, 8_000_000)
        progress.sent(8_000_000, 8_000_000)
        progress.sent(8_000_000, 8_000_000)
        clock.advance(0.5)
        progress.answered(clock.seconds())
        text = stream.getvalue()
        # The figures as the plain lines give them: no "?" before a rate is known, no time left at the end.
        self.assertRegex(text, r"^\s*0% \|[^|\n]*\| 0 bytes of 8\.00 MB\r")
        self.assertRegex(text, r"100% \|[^|\n]*\| 8\.00 MB of 8\.00 MB, [\d.]+ [kMGT]?B/s\n")
        self.assertEqual((text.count(" 0%"), text.count("100%")), (1, 1), text)
        self.assertTrue(text.endswith(
            "\nThe whole file has left; waiting for e-PMSI's answer.\n"
            "e-PMSI answered 0.5 s after the last byte.\n"
        ), text)

    def test_bar_in_french(self) -> None:
        """The bar's words, units and numbers in French: Mo, sur, reste, a decimal comma."""
        stream = TerminalStream()
        progress = TerminalProgress(Clock(), stream, "fr")
        progress.sent(4_500_000, 6_000_000)
        progress.stop()
        self.assertRegex(stream.getvalue(), r" 75% \|[^|\n]*\| 4,50 Mo sur 6,00 Mo(, [\d,]+ [kMGT]?o/s)?")
        self.assertNotRegex(stream.getvalue(), r"\d\.\d")

    def test_chosen_by_the_stream(self) -> None:
        """A bar on a terminal, plain lines elsewhere, nothing with --quiet."""
        clock = Clock()
        self.assertIsInstance(make_progress(clock, TerminalStream(), "en"), TerminalProgress)
        self.assertIsInstance(make_progress(clock, io.StringIO(), "en"), PlainProgress)
        self.assertIsInstance(make_progress(clock, TerminalStream(), "en", quiet=True), QuietProgress)

    def test_sizes_and_durations(self) -> None:
        """Bytes in words, then three significant digits in SI units (Mo in French); durations in s, min, h."""
        self.assertEqual(
            [readable_size(n) for n in (0, 999, 1000, 12_345, 123_456_789, 5 * 10**9, 10**15)],
            ["0 bytes", "999 bytes", "1.00 kB", "12.3 kB", "123 MB", "5.00 GB", "1000 TB"],
        )
        self.assertEqual([readable_size(100, "fr"), readable_size(12_345_678, "fr")], ["100 octets", "12,3 Mo"])
        self.assertEqual(
            [readable_duration(s) for s in (0, 44.6, 185, 3720)],
            ["0 s", "45 s", "3 min 05 s", "1 h 02 min"],
        )


class _ValveServer(Forwarder.protocol):  # type: ignore[name-defined, misc]
    """Stops reading from the workstation once the forwarder has passed on C{factory.limit} bytes."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.factory.received >= self.factory.limit:
            self.transport.pauseProducing()


class Valve(Forwarder):
    """A forwarder that holds the upload back after C{limit} bytes, until L{open}."""

    protocol = _ValveServer
    limit: float = 4 * 1024 * 1024

    def open(self) -> None:
        self.limit = float("inf")
        for server in self.servers:
            server.transport.resumeProducing()


class CountedAsTheyLeaveTests(TestCase):
    """
    What the progress counts is what the connection took: held back by a
    slower relay or e-PMSI, the count stops too, short of the file by a
    socket buffer or two, instead of running ahead with reads from disk.
    """

    timeout = 60
    SIZE = 32 * 1024 * 1024

    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.path = self.mktemp()
        write_random_file(self.path, self.SIZE, seed=3)
        self.reports: list[tuple[float, int, int]] = []

    def valve_before(self, port: int) -> tuple[Valve, int]:
        valve = Valve("127.0.0.1", port)
        listening = reactor.listenTCP(0, valve, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.addCleanup(valve.cut)
        return valve, listening.getHost().port

    def progress(self, sent: int, total: int) -> None:
        self.reports.append((reactor.seconds(), sent, total))

    async def held_back(self, valve: Valve, sending: Any) -> None:
        """While the valve holds: the count stops well short of the file; opened, it reaches the end."""
        await poll_until(
            reactor, lambda: bool(self.reports) and reactor.seconds() - self.reports[-1][0] > 0.5, 400, 0.05
        )
        _, sent, total = self.reports[-1]
        self.assertGreaterEqual(valve.received, valve.limit)
        self.assertLess(sent, total // 2, f"counted {sent} bytes, the relay took {valve.received}")
        valve.open()
        reply = await sending
        self.assertEqual(reply.status, 200)
        # The file's own bytes, not the form's around it: the same size the closing line says.
        self.assertEqual(self.reports[-1][1:], (self.SIZE, self.SIZE))
        self.assertEqual({total for _, _, total in self.reports}, {self.SIZE})
        counts = [sent for _, sent, _ in self.reports]
        self.assertEqual(counts, sorted(counts))

    async def test_through_a_relay(self) -> None:
        """Through the relay (e-POP frames): counted as the connection to the relay takes them."""
        relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)
        valve, port = self.valve_before(relay.port)
        sending = send_file(reactor, self.path, to="/syriusUpload.do",
                            relay=RelayAddress("127.0.0.1", port), progress=self.progress)
        await self.held_back(valve, sending)

    async def test_direct(self) -> None:
        """Directly (HTTPS, treq's body producer): counted as the TLS connection takes them."""
        valve, port = self.valve_before(self.sandbox.port.getHost().port)
        sending = send_file(reactor, self.path, to="/syriusUpload.do", epmsi=f"https://127.0.0.1:{port}",
                            ca_file=self.sandbox.ca_path, progress=self.progress)
        await self.held_back(valve, sending)
