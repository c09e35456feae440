"""
Where the relay's journal goes: one JSON object per line, one line per event.

A L{FileJournalWriter} appends each line with a single system call, and
goes on without its journal (saying so once) while the file cannot be
written.  A L{RotatingJournalWriter} starts a new file each UTC day or at a
size, and deletes the oldest rotated files beyond a number to keep;
L{rotated_files} lists them in the order they were written, for
L{epop.journal.reader}.  The records come from L{epop.journal.events},
through L{epop.journal.observer}.
"""

from __future__ import annotations

import os
import re
import stat
from datetime import date, datetime, timezone
from typing import Any, Callable

from twisted.logger import Logger
from zope.interface import Interface, implementer

from epop.messages import Text, log_format, system_reason
from epop.printable import safe_json

__all__ = [
    "IJournalWriter",
    "FileJournalWriter",
    "RotatingJournalWriter",
    "DAILY",
    "encode_record",
    "open_writer",
    "check_keep",
    "parse_rotate",
    "rotated_files",
]


class IJournalWriter(Interface):
    """Where journal records go: a file in production, a list in tests."""

    def write(record: dict[str, Any]) -> None:
        """Store one record."""

    def close() -> None:
        """Release what the writer holds; no write follows."""


def encode_record(record: dict[str, Any]) -> bytes:
    """
    One journal line, newline included, as it goes to the file: control
    and bidirectional characters escaped, so that even C{cat} or C{tail -f}
    of the file shows them harmlessly.
    """
    return safe_json(record).encode("utf-8") + b"\n"


class _AppendFile:
    """
    A journal file open for appending, written one whole line per
    C{write()} system call, with no buffer a crash could lose.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        # Part of a line went out before a write failed (the disk filled
        # up): the next line must start on a line of its own.
        self._torn = False
        try:
            if stat.S_ISREG(os.fstat(self._fd).st_mode):
                # Not a device such as /dev/null, whose mode is the system's.
                os.fchmod(self._fd, 0o640)
            if self._ends_torn():
                # A crash cut the last line: end it, so that the next record
                # starts on a line of its own and stays readable.
                self._write_all(b"\n")
        except OSError:
            self.close()
            raise

    def _ends_torn(self) -> bool:
        size = self.size()
        if not size:
            return False
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            return f.read(1) != b"\n"

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        written = 0
        try:
            while view:
                count = os.write(self._fd, view)
                written += count
                view = view[count:]
        except OSError:
            self._torn = self._torn or written > 0
            raise
        self._torn = False

    def write_line(self, line: bytes) -> None:
        """
        Append C{line}, after a newline if an earlier write was cut off.

        @raise OSError: if it could not be written (whole or in part).
        """
        self._write_all(b"\n" + line if self._torn else line)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def replaced(self) -> bool:
        """
        Whether C{path} no longer names the file open here: it was deleted
        (its folder too, perhaps) or moved aside, and lines written on would
        go where no one reads them.  The check of C{logging}'s
        C{WatchedFileHandler}: one C{stat} per line, cheap at the journal's
        rate.
        """
        try:
            named = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return True
        except OSError:
            return False  # cannot tell (a folder we may not search): write on
        held = os.fstat(self._fd)
        return (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _WriteTrouble:
    """
    Says once that the journal cannot be written (disk full, read-only, gone)
    and once that it can again, however many events come in between: the
    relay goes on serving, and the twistd log does not fill up with one
    error per event.
    """

    log = Logger()

    def __init__(self, path: str, language: str = "en") -> None:
        self.path = path
        self.language = language
        self.failing: OSError | None = None
        self.missed = 0

    def failed(self, error: OSError) -> None:
        self.missed += 1
        if self.failing is None:
            self.failing = error
            self.log.critical(
                log_format(
                    Text(
                        "journal: cannot write to {path}: {why}; the relay goes on without its "
                        "journal until writing works again"
                    ),
                    self.language,
                ),
                path=self.path,
                why=system_reason(error).render(self.language),
                errno=error.errno,
            )

    def worked(self) -> None:
        if self.failing is not None:
            self.log.warn(
                log_format(
                    Text(
                        "journal: writing to {path} works again; {missed} event(s) could not be "
                        "written and are missing from it"
                    ),
                    self.language,
                ),
                path=self.path,
                missed=self.missed,
            )
            self.failing = None
            self.missed = 0


_log = Logger(namespace="epop.journal.writer")


def _still_named(file: _AppendFile | None, language: str) -> _AppendFile | None:
    """
    C{file} if its path still names it; otherwise None, once it is closed
    and the twistd log told (in C{language}), so that the caller opens the
    path again.
    """
    if file is None or not file.replaced():
        return file
    file.close()
    _log.info(
        log_format(
            Text(
                "Journal {path} moved or deleted while the relay had it open: "
                "opening it again, created if need be"
            ),
            language,
        ),
        path=file.path,
    )
    return None


@implementer(IJournalWriter)
class FileJournalWriter:
    """
    Appends JSON lines, each with a single unbuffered C{write()}, so a crash
    loses at most the line being written.  A line that cannot be written is
    dropped (see L{_WriteTrouble}): the journal must never stop the relay.
    If the file is deleted or moved (with its folder, or by C{logrotate}),
    the next line goes to a new file at the same path; while that cannot be
    created, lines are dropped the same way.

    @param language: the language of the lines it logs for the administrator.
    """

    def __init__(self, path: str, language: str = "en") -> None:
        self.path = path
        self.language = language
        self._file: _AppendFile | None = _AppendFile(path)
        self._trouble = _WriteTrouble(path, language)

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._file = _still_named(self._file, self.language)
            if self._file is None:
                self._file = _AppendFile(self.path)
            self._file.write_line(encode_record(record))
        except OSError as e:
            self._trouble.failed(e)
        else:
            self._trouble.worked()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


DAILY = "daily"

_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def check_keep(value: object) -> None:
    """
    Refuse a number of rotated files to keep that is not 0 (keep all) or
    more, in the relay's settings' words: a negative one would delete every
    rotated file.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(Text("expected a whole number of rotated files, not {value!r} (0: keep all)", value=value))


def parse_rotate(text: str) -> str | int:
    """
    Read C{--journal-rotate}: L{DAILY}, or a size in bytes written C{500K},
    C{100M}, C{1G} (powers of 1024) or a plain number of bytes.

    @raise ValueError: for anything else, saying what is expected.
    """
    value = text.strip()
    if value.lower() == DAILY:
        return DAILY
    match = re.fullmatch(r"(\d+)([KMG]?)", value, re.IGNORECASE)
    if match is None:
        raise ValueError(Text("expected 'daily' or a size such as 500K, 100M or 1G, not {value!r}", value=text))
    size = int(match[1]) * _SIZE_UNITS[match[2].upper()]
    if size <= 0:
        raise ValueError(Text("the size must be more than 0"))
    return size


def _rotated_pattern(base: str) -> re.Pattern[str]:
    return re.compile(
        re.escape(base) + r"\.(?:(?P<day>\d{4}-\d{2}-\d{2})(?:\.(?P<extra>\d+))?|(?P<number>\d+))"
    )


def _rotated(path: str) -> tuple[list[tuple[date, int, str]], list[tuple[int, str]]]:
    """Rotated siblings of C{path}: (day, extra, path) and (number, path)."""
    folder, base = os.path.split(os.path.abspath(path))
    pattern = _rotated_pattern(base)
    daily: list[tuple[date, int, str]] = []
    numbered: list[tuple[int, str]] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return daily, numbered
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        full = os.path.join(folder, name)
        if match["number"] is not None:
            numbered.append((int(match["number"]), full))
        else:
            try:
                day = date.fromisoformat(match["day"])
            except ValueError:
                continue
            daily.append((day, int(match["extra"] or 0), full))
    daily.sort()
    numbered.sort()
    return daily, numbered


def _newest_mtime(paths: list[str]) -> float:
    times = []
    for path in paths:
        try:
            times.append(os.stat(path).st_mtime)
        except OSError:
            pass
    return max(times, default=0.0)


def rotated_files(path: str) -> list[str]:
    """
    The rotated files of the journal C{path}, oldest first: C{PATH.DAY}
    (then C{PATH.DAY.1}, ...) by day, C{PATH.N} from the highest N down.
    If both kinds are there (the rotation was changed), the kind last
    written comes last.
    """
    daily, numbered = _rotated(path)
    by_day = [full for _, _, full in daily]
    by_size = [full for _, full in reversed(numbered)]
    groups = sorted(
        [group for group in (by_day, by_size) if group], key=_newest_mtime
    )
    return [full for group in groups for full in group]


@implementer(IJournalWriter)
class RotatingJournalWriter:
    """
    A L{FileJournalWriter} that moves the file aside each UTC day
    (C{PATH.2026-11-25}) or before it would exceed a size (C{PATH.1},
    older ones shifted to C{PATH.2}...), and deletes the oldest rotated
    files beyond C{keep}: twistd's C{DailyLogFile} keeps them all.

    @param rotate: L{DAILY} or a size in bytes (see L{parse_rotate}).
    @param keep: rotated files to keep; 0 keeps them all.
    @param clock: tells the day (C{seconds()}); the reactor by default.
    @param language: the language of the lines it logs for the administrator.
    """

    log = Logger()

    def __init__(
        self, path: str, rotate: str | int, keep: int = 30, clock: Any = None, language: str = "en"
    ) -> None:
        if isinstance(rotate, str):
            rotate = parse_rotate(rotate)
        check_keep(keep)
        if clock is None:
            from twisted.internet import reactor as clock
        self.path = path
        self.rotate = rotate
        self.keep = keep
        self.language = language
        self._clock = clock
        self._day = self._file_day()
        self._file: _AppendFile | None = _AppendFile(path)
        self._trouble = _WriteTrouble(path, language)
        self._rotation_failing = False

    def _today(self) -> date:
        return datetime.fromtimestamp(self._clock.seconds(), tz=timezone.utc).date()

    def _file_day(self) -> date:
        """The day of what the file holds: its last write, or today if empty."""
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return self._today()
        if not found.st_size:
            return self._today()
        return datetime.fromtimestamp(found.st_mtime, tz=timezone.utc).date()

    def write(self, record: dict[str, Any]) -> None:
        """Write one line, rotating first if it is time; never raise L{OSError}."""
        line = encode_record(record)
        try:
            self._write(line)
        except OSError as e:
            self._trouble.failed(e)
        else:
            self._trouble.worked()

    def _write(self, line: bytes) -> None:
        # Deleted or moved by someone else since the last line: start anew.
        self._file = _still_named(self._file, self.language)
        if self._file is None:
            # Could not be opened again after a rotation (or after the file
            # was deleted): try once more.
            self._file = _AppendFile(self.path)
        size = self._file.size()
        if self.rotate == DAILY:
            today = self._today()
            if today != self._day:
                # The new day is set first: if the rotation fails, it is
                # not tried again at every line.
                day, self._day = self._day, today
                if size:
                    self._rotate(day)
        elif isinstance(self.rotate, int) and size and size + len(line) > self.rotate:
            self._rotate()
        assert self._file is not None
        self._file.write_line(line)

    def _rotate(self, day: date | None = None) -> None:
        """Move the file aside (as of C{day}, when daily) and open a new one."""
        assert self._file is not None
        self._file.close()
        self._file = None
        try:
            if self.rotate == DAILY:
                assert day is not None
                target = self._dated_name(day)
            else:
                self._shift()
                target = self.path + ".1"
            os.rename(self.path, target)
        except OSError as e:
            if not self._rotation_failing:
                # Once, not at every line while it keeps failing.
                self.log.warn(
                    log_format(Text("Could not rotate the journal {path}: {why}; writing on in it"), self.language),
                    path=self.path,
                    why=system_reason(e).render(self.language),
                )
            self._rotation_failing = True
        else:
            self.log.info(
                log_format(Text("Journal rotated: {path} is now {target}"), self.language),
                path=self.path,
                target=target,
            )
            self._rotation_failing = False
        self._file = _AppendFile(self.path)
        if self.rotate == DAILY:
            self._prune_daily()

    def _dated_name(self, day: date) -> str:
        name = f"{self.path}.{day.isoformat()}"
        extra = 0
        candidate = name
        while os.path.lexists(candidate):
            extra += 1
            candidate = f"{name}.{extra}"
        return candidate

    def _shift(self) -> None:
        """PATH.N becomes PATH.N+1, from the highest down; beyond keep, deleted."""
        _, numbered = _rotated(self.path)
        for number, full in reversed(numbered):
            if self.keep and number >= self.keep:
                self._delete(full)
            else:
                os.rename(full, f"{self.path}.{number + 1}")

    def _prune_daily(self) -> None:
        daily, _ = _rotated(self.path)
        if self.keep:
            for _, _, full in daily[: max(0, len(daily) - self.keep)]:
                self._delete(full)

    def _delete(self, path: str) -> None:
        try:
            os.remove(path)
        except OSError as e:
            self.log.warn(
                log_format(Text("Could not delete the old journal {path}: {why}"), self.language),
                path=path,
                why=system_reason(e).render(self.language),
            )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@implementer(IJournalWriter)
class _OpenLater:
    """
    The writer of a journal that could not be opened when the relay
    started: the relay starts all the same, and opening is tried again at
    each event, as a failed write would be.
    """

    def __init__(self, open_writer: Callable[[], IJournalWriter], error: OSError, language: str = "en") -> None:
        self._open_writer = open_writer
        self._writer: IJournalWriter | None = None
        path = error.filename if isinstance(error.filename, str) else Text("the journal").render(language)
        self._trouble = _WriteTrouble(path, language)
        self._trouble.failed(error)
        self._trouble.missed = 0  # the first event is yet to come

    def write(self, record: dict[str, Any]) -> None:
        if self._writer is None:
            try:
                self._writer = self._open_writer()
            except OSError as e:
                self._trouble.failed(e)
                return
            self._trouble.worked()
        self._writer.write(record)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def open_writer(opener: Callable[[], IJournalWriter], language: str = "en") -> IJournalWriter:
    """
    The writer C{opener} returns; if it cannot open the journal, a writer
    that tries again at each record (saying so in C{language}), so that the
    relay starts all the same.
    """
    try:
        return opener()
    except OSError as e:
        return _OpenLater(opener, e, language)
