"""
How C{epop send} shows an upload's progress on standard error.

On a terminal, a tqdm bar: percentage, bytes sent, rate, time left.  On
anything else (a scheduled task's log, a pipe), a plain line at each 10 %
step and every 30 s, whichever comes first, so that a log gets a dozen
readable lines instead of a bar's carriage returns.  C{--quiet}: nothing.
Then, in every mode but quiet, how long e-PMSI took to answer after the
last byte.

The upload only reports the bytes that have left the workstation
(L{epop.workstation.upload.ProgressCallback}); this module decides how to
show them.  Time comes from the reactor given, so that the plain lines'
rules can be tested with a L{twisted.internet.task.Clock}.  tqdm is imported
only when a terminal shows the bar.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, TextIO

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from epop.messages import Text, decimal

__all__ = [
    "PlainProgress",
    "Progress",
    "QuietProgress",
    "TerminalProgress",
    "make_progress",
    "readable_duration",
    "readable_size",
]

#: A plain line each time the upload crosses another multiple of this.
STEP_PERCENT = 10
#: ...and one when this many seconds have passed without a line.
TICK_SECONDS = 30.0


def _unit(language: str, prefix: str = "") -> str:
    """The byte's symbol with its SI prefix: MB, or Mo (octets) in French."""
    return Text("{prefix}B", prefix=prefix).render(language)


def readable_size(count: float, language: str = "en") -> str:
    """C{count} bytes with three significant digits, as tqdm shows them: 950 bytes, 8.39 MB, 123 MB."""
    prefix = ""
    for prefix in ("", "k", "M", "G", "T"):
        if count < 999.5 or prefix == "T":
            break
        count /= 1000
    if not prefix:
        return Text("{size} bytes", size=f"{count:.0f}").render(language)
    places = 2 if count < 9.995 else 1 if count < 99.95 else 0
    return f"{decimal(count, places, language)} {_unit(language, prefix)}"


def _figures(count: int, total: int, rate: float | None, language: str) -> dict[str, str]:
    """
    What both displays say: the sizes, and once a rate is known the rate
    and the time left (none under a second: "about 0 s left" says nothing).
    """
    figures = {"sent": readable_size(count, language), "total": readable_size(total, language)}
    if rate:
        figures["rate"] = readable_size(rate, language)
        left = (total - count) / rate
        if left >= 1:
            figures["left"] = readable_duration(left)
    return figures


def readable_duration(seconds: float) -> str:
    """A time left: 45 s, 3 min 05 s, 1 h 02 min (the same in French)."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """
    What every display shares: when the upload started and when its last
    byte left, on the reactor's clock, and the closing line saying how long
    e-PMSI took after it.  Subclasses show the bytes as they go.
    """

    def __init__(self, clock: IReactorTime, stream: TextIO, language: str) -> None:
        self.clock = clock
        self.stream = stream
        self.language = language
        self.started_at: float | None = None
        self.first_count = 0
        self.last_byte_at: float | None = None
        self.ended = False
        self.broken = False

    def sent(self, count: int, total: int) -> None:
        """C{count} bytes of C{total} have left the workstation (an L{ProgressCallback})."""
        if self.ended or self.last_byte_at is not None:
            # After the last byte of the file, the form's end still leaves: nothing more to show.
            return
        if self.started_at is None:
            self.started_at, self.first_count = self.clock.seconds(), count
        all_sent = count >= total and self.last_byte_at is None
        if all_sent:
            self.last_byte_at = self.clock.seconds()
        with self._guarded():
            self._show(count, total)
            if all_sent:
                self._all_sent()

    @contextmanager
    def _guarded(self) -> Iterator[None]:
        """
        Standard error that takes no more (closed, full) ends the display,
        never the upload: the bytes are counted from within the upload's
        writes.
        """
        try:
            yield
        except OSError:
            self.ended = self.broken = True
            with suppress(OSError):
                self._close()

    def answered(self, answered_at: float | None) -> None:
        """e-PMSI answered at C{answered_at}: end the display, say how long it took."""
        self.stop()
        if answered_at is None or self.last_byte_at is None or self.broken:
            return
        if answered_at < self.last_byte_at:
            self.say(Text("e-PMSI answered before the whole file had left."))
        elif answered_at - self.last_byte_at < 0.05:
            self.say(Text("e-PMSI answered less than 0.1 s after the last byte."))
        else:
            self.say(
                Text(
                    "e-PMSI answered {seconds} s after the last byte.",
                    seconds=decimal(answered_at - self.last_byte_at, 1, self.language),
                )
            )

    def stop(self) -> None:
        """The upload ended (answered, failed or interrupted): show nothing more."""
        if not self.ended:
            self.ended = True
            with self._guarded():
                self._close()

    def rate(self, count: int) -> float | None:
        """Bytes a second since the first write, or C{None} before any time has passed."""
        if self.started_at is None:
            return None
        elapsed = self.clock.seconds() - self.started_at
        if elapsed <= 0 or count <= self.first_count:
            return None
        return (count - self.first_count) / elapsed

    def say(self, text: Text) -> None:
        """One line on the stream, in the reader's language."""
        self.stream.write(text.render(self.language) + "\n")
        self.stream.flush()

    def _show(self, count: int, total: int) -> None:
        """Show that C{count} bytes of C{total} have left."""

    def _all_sent(self) -> None:
        self.say(Text("The whole file has left; waiting for e-PMSI's answer."))

    def _close(self) -> None:
        """Leave the display as it is: nothing more will come."""


class QuietProgress(Progress):
    """C{--quiet}: shows nothing, says nothing."""

    def say(self, text: Text) -> None:
        pass


class PlainProgress(Progress):
    """
    Plain lines, for a log: one when the upload crosses another 10 % step
    (one only, however many steps a write crosses), and one when 30 s have
    passed without a line; after the last byte, one every 30 s until e-PMSI
    answers.  So at most eleven lines for a fast upload, and never more
    than one every 30 s besides the steps.
    """

    def __init__(self, clock: IReactorTime, stream: TextIO, language: str) -> None:
        super().__init__(clock, stream, language)
        self._next_step = STEP_PERCENT
        self._tick: IDelayedCall | None = None
        self._count = 0
        self._total = 0

    def _show(self, count: int, total: int) -> None:
        self._count, self._total = count, total
        if self._tick is None:
            self._tick = self.clock.callLater(TICK_SECONDS, self._ticked)
        percent = count * 100 // total if total else 100
        if percent >= self._next_step:
            self._next_step = (percent // STEP_PERCENT + 1) * STEP_PERCENT
            self._line()

    def _line(self) -> None:
        """The line for where the upload is now; the next tick 30 s from now."""
        count, total = self._count, self._total
        percent = count * 100 // total if total else 100
        figures = _figures(count, total, self.rate(count), self.language)
        if "left" in figures:
            line = Text("Sent: {percent}% ({sent} of {total}), {rate}/s, about {left} left.", percent=percent, **figures)
        elif "rate" in figures:
            line = Text("Sent: {percent}% ({sent} of {total}), {rate}/s.", percent=percent, **figures)
        else:
            line = Text("Sent: {percent}% ({sent} of {total}).", percent=percent, **figures)
        self.say(line)
        if self._tick is not None and self._tick.active():
            self._tick.reset(TICK_SECONDS)

    def _ticked(self) -> None:
        self._tick = self.clock.callLater(TICK_SECONDS, self._ticked)
        with self._guarded():
            self._tick_line()

    def _tick_line(self) -> None:
        if self.last_byte_at is None:
            self._line()
        else:
            self.say(
                Text(
                    "Waiting for e-PMSI's answer: {seconds} s since the last byte.",
                    seconds=f"{self.clock.seconds() - self.last_byte_at:.0f}",
                )
            )

    def _close(self) -> None:
        if self._tick is not None and self._tick.active():
            self._tick.cancel()
        self._tick = None


class TerminalProgress(Progress):
    """A tqdm bar, redrawn in place: percentage, bytes, rate, time left."""

    def __init__(self, clock: IReactorTime, stream: TextIO, language: str) -> None:
        super().__init__(clock, stream, language)
        self._bar: Any = None

    def _show(self, count: int, total: int) -> None:
        if total <= 0:
            return  # an empty file (--allow-empty): nothing to draw
        if self._bar is None:
            self._bar = self._make_bar(total)
        self._bar.update(count - self._bar.n)

    def _make_bar(self, total: int) -> Any:
        from tqdm import tqdm

        language = self.language

        class Bar(tqdm):  # type: ignore[misc, type-arg]
            # No monitor thread in a Twisted program: the reactor's writes drive the bar.
            monitor_interval = 0

            @staticmethod
            def format_meter(n: int, total: int, elapsed: float, **kwargs: Any) -> str:
                # The same figures as the plain lines, in the reader's language;
                # tqdm draws the bar and its percentage around them.
                rate = kwargs.get("rate") or (n / elapsed if elapsed and n else None)
                kwargs["bar_format"] = _bar_layout(_figures(n, total, rate, language)).render(language)
                return str(tqdm.format_meter(n, total, elapsed, **kwargs))

        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
        # A terminal that does not say its width (0 columns: some serial
        # consoles, some remote shells) gets 80, rather than tqdm's nothing.
        width: dict[str, Any] = {"dynamic_ncols": True} if columns > 0 else {"ncols": 80, "nrows": 24}
        return Bar(
            total=total,
            file=self.stream,
            leave=True,
            **width,
        )

    def _all_sent(self) -> None:
        self._close()
        super()._all_sent()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _bar_layout(figures: dict[str, str]) -> Text:
    """The bar's line: tqdm's percentage and bar, then the figures it has."""
    drawn = {"percent": "{percentage:3.0f}%", "bar": "{bar}", **figures}
    if "left" in figures:
        return Text("{percent} |{bar}| {sent} of {total}, {rate}/s, about {left} left", **drawn)
    if "rate" in figures:
        return Text("{percent} |{bar}| {sent} of {total}, {rate}/s", **drawn)
    return Text("{percent} |{bar}| {sent} of {total}", **drawn)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def make_progress(clock: IReactorTime, stream: TextIO, language: str, *, quiet: bool = False) -> Progress:
    """The display C{epop send} uses: quiet, a bar on a terminal, plain lines elsewhere."""
    if quiet:
        return QuietProgress(clock, stream, language)
    if _is_terminal(stream):
        return TerminalProgress(clock, stream, language)
    return PlainProgress(clock, stream, language)
