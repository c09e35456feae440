"""
Reading the relay's journal back, for C{epop journal} and C{epop connections}.

The original e-POP server showed its "Journal d'écoute" and "Connexions" in
a window, live.  Here the journal is a file of JSON lines (see
L{epop.journal.writer}); this module reads it (rotated files included) and
follows it as it grows (across rotations).  L{epop.journal.filters} picks
the records to show, L{epop.journal.table} lays them out, and
L{epop.journal.connections} computes the connections they describe.  A torn
last line (the relay crashed, or is writing it right now) is skipped; any
other line that is not a record is reported and skipped, and reading goes on.

Only regular files are read (L{open_journal}): a device such as
C{/dev/zero} or C{/dev/full} never ends and has no newline, and a FIFO
would block the reader.  And a line is read up to L{MAX_LINE} bytes only:
a longer one (a wrong file, a corrupted one) is reported and skipped in
bounded chunks, so memory stays small whatever the file holds.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any

from twisted.internet.task import LoopingCall

from epop.journal.writer import rotated_files
from epop.messages import Text

__all__ = [
    "DEFAULT_JOURNAL",
    "JournalFollower",
    "MAX_LINE",
    "NotAJournalFile",
    "Problem",
    "ProblemHandler",
    "check_journal_path",
    "journal_files",
    "open_journal",
    "parse_line",
    "read_file",
    "read_journal",
    "record_time",
]

DEFAULT_JOURNAL = "epop-journal.jsonl"

_READ_SIZE = 1 << 20

#: The longest line read as a record, newline excluded.  The relay's lines
#: are a few hundred bytes: its longest fields (a path, an error) are cut
#: well below this.
MAX_LINE = 1 << 20
_MAX_LINE_TEXT = Text("1 MiB")


@dataclass(frozen=True)
class Problem:
    """A line that is not a journal record: reported, then skipped."""

    path: str
    line: int
    #: Longer than L{MAX_LINE}: not even read whole.
    too_long: bool = False

    def describe(self) -> Text:
        if self.too_long:
            return Text(
                "{path}, line {line}: longer than {limit}, not a journal record, skipped",
                path=self.path,
                line=self.line,
                limit=_MAX_LINE_TEXT,
            )
        return Text(
            "{path}, line {line}: not a journal record, skipped", path=self.path, line=self.line
        )


ProblemHandler = Callable[[Problem], None]


def _ignore(problem: Problem) -> None:
    pass


class NotAJournalFile(OSError):
    """The path names a device, a FIFO, a directory...: not a file the relay wrote."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path}: not a regular file")
        self.filename = path

    def describe(self) -> Text:
        return Text(
            "Cannot read {path}: not a regular file (a relay's journal is the file "
            "named by its --journal).",
            path=self.filename,
        )


def _refuse_unless_regular(path: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise NotAJournalFile(path)


def check_journal_path(path: str) -> None:
    """
    Refuse now what L{open_journal} would refuse, for a follower that may
    wait for the file: a missing path is fine, it may appear.

    @raise NotAJournalFile: if C{path} exists and is not a regular file.
    """
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return
    _refuse_unless_regular(path, found.st_mode)


def open_journal(path: str) -> IO[bytes]:
    """
    C{path} open for reading, if it is a regular file.  It is opened
    without blocking, so that a FIFO is refused rather than waited on.

    @raise NotAJournalFile: for a device, a FIFO, a directory, a socket.
    @raise OSError: if it cannot be opened.
    """
    # Windows has no FIFO to block on, nor O_NONBLOCK; it needs O_BINARY.
    nonblock = getattr(os, "O_NONBLOCK", 0)
    flags = os.O_RDONLY | nonblock | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        _refuse_unless_regular(path, os.fstat(fd).st_mode)
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _Lines:
    """
    Cuts bytes read in chunks into lines, numbered from 1, holding at most
    L{MAX_LINE} bytes of a line: the rest of a longer one is dropped as it
    comes, and the line is handed on as None.
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self.number = 0
        self._pending = b""
        self._too_long = False

    @property
    def pending(self) -> bool:
        """Part of a line, with no newline yet, has been read."""
        return bool(self._pending) or self._too_long

    def feed(self, chunk: bytes) -> Iterator[tuple[int, bytes | None]]:
        """The lines that C{chunk} ends (newline excluded), or None for a too long one."""
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            piece = chunk[start:end]
            start = end + 1
            self.number += 1
            if self._too_long or len(self._pending) + len(piece) > self.limit:
                line = None
            else:
                line = self._pending + piece
            self._pending, self._too_long = b"", False
            yield self.number, line
        rest = chunk[start:]
        if self._too_long or len(self._pending) + len(rest) > self.limit:
            self._pending, self._too_long = b"", True
        else:
            self._pending += rest

    def end(self) -> tuple[int, bool] | None:
        """
        The number of a last line with no newline, and whether it is too
        long; None if there is none.  Forgets it.
        """
        if not self.pending:
            return None
        found = (self.number + 1, self._too_long)
        self._pending, self._too_long = b"", False
        return found


def parse_line(raw: bytes) -> dict[str, Any] | None:
    """The record a line holds, or None if it is not one (not JSON, no type or time)."""
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("type"), str):
        return None
    if record_time(record) is None:
        return None
    return record


def record_time(record: dict[str, Any]) -> datetime | None:
    """When the event happened (aware, UTC), or None if C{time} is unusable."""
    text = record.get("time")
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def read_file(path: str, on_problem: ProblemHandler = _ignore) -> Iterator[dict[str, Any]]:
    """
    The records of one journal file, in order.  The last line is skipped if
    it is torn (no newline, or not JSON): that is a crash's, or a line being
    written.  Other bad lines go to C{on_problem}, as does a last line too
    long to be one being written.

    @raise NotAJournalFile: if C{path} is not a regular file.
    """
    with open_journal(path) as f:
        lines = _Lines()
        previous: tuple[int, bytes | None] | None = None
        while chunk := f.read(_READ_SIZE):
            for number, raw in lines.feed(chunk):
                if previous is not None:
                    yield from _checked(path, *previous, on_problem)
                previous = (number, raw)
        torn = lines.end()
        if previous is not None:
            number, raw = previous
            if torn is not None or raw is None:
                yield from _checked(path, number, raw, on_problem)
            else:
                # The last line, whole: a record, or skipped as torn.
                record = parse_line(raw)
                if record is not None:
                    yield record
        if torn is not None and torn[1]:
            on_problem(Problem(path, torn[0], too_long=True))


def _checked(
    path: str, number: int, raw: bytes | None, on_problem: ProblemHandler
) -> Iterator[dict[str, Any]]:
    """The record of a line that is not the last one, or a problem."""
    if raw is None:
        on_problem(Problem(path, number, too_long=True))
        return
    record = parse_line(raw)
    if record is not None:
        yield record
    elif raw.strip():
        on_problem(Problem(path, number))


def journal_files(path: str, since: datetime | None = None) -> list[str]:
    """
    The files to read, oldest first: the rotated ones that may hold events
    at or after C{since} (none without C{since}), then C{path} itself.
    """
    files: list[str] = []
    if since is not None:
        limit = since.timestamp()
        for rotated in rotated_files(path):
            try:
                # A rotated file is never written again: its last event is
                # no later than its modification time.
                if os.stat(rotated).st_mtime >= limit:
                    files.append(rotated)
            except OSError:
                continue
    files.append(path)
    return files


def read_journal(
    path: str,
    since: datetime | None = None,
    on_problem: ProblemHandler = _ignore,
    *,
    current: bool = True,
) -> Iterator[dict[str, Any]]:
    """
    The records of the journal C{path}, with its rotated files when C{since}
    reaches back into them; C{current=False} leaves C{path} itself out (for
    a follower that reads it).

    @raise FileNotFoundError: if C{path} does not exist (and C{current}).
    """
    files = journal_files(path, since)
    if not current:
        files.pop()
    for name in files:
        try:
            yield from read_file(name, on_problem)
        except FileNotFoundError:
            if name == path:
                raise
            # deleted by the relay's retention while we were reading


# Following.


class JournalFollower:
    """
    Reads the records appended to a journal file, polling with the reactor
    (no thread), and goes on in the new file when the relay rotates it (the
    file at C{path} is another one) or when it is truncated
    (C{copytruncate}).  It starts at the beginning of the file: a caller
    that wants only new events filters on time.

    A line is handled once its newline has arrived; a line without one
    left behind in a rotated or truncated file is dropped as torn.  If the
    file was rotated several times between two polls, the rotated files in
    between are read too.
    """

    def __init__(
        self,
        path: str,
        on_record: Callable[[dict[str, Any]], None],
        clock: Any,
        *,
        interval: float = 0.5,
        on_problem: ProblemHandler = _ignore,
    ) -> None:
        self.path = path
        self.interval = interval
        self._on_record = on_record
        self._on_problem = on_problem
        self._file: IO[bytes] | None = None
        self._identity: tuple[int, int] | None = None
        self._position = 0
        self._lines = _Lines()
        self._call = LoopingCall(self.poll)
        self._call.clock = clock

    @property
    def waiting(self) -> bool:
        """No file to read yet (the relay has not created it)."""
        return self._file is None

    def start(self) -> None:
        """Read what is there now, then poll every C{interval} seconds."""
        self._call.start(self.interval, now=True)

    def stop(self) -> None:
        if self._call.running:
            self._call.stop()
        self._close()

    def poll(self) -> None:
        """Read new lines, then switch files if the journal was rotated."""
        if self._file is None and not self._open():
            return
        self._read()
        try:
            now = os.stat(self.path)
        except OSError:
            return  # being rotated: the new file is not there yet
        if (now.st_dev, now.st_ino) != self._identity:
            self._read()  # the last lines written before the rotation
            previous = self._identity
            self._close()
            # Rotated more than once since the last poll: read the files in
            # between, oldest first.
            for name in self._rotated_after(previous):
                try:
                    for record in read_file(name, self._on_problem):
                        self._on_record(record)
                except OSError:
                    continue
            if self._open():
                self._read()
        elif now.st_size < self._position:
            assert self._file is not None
            self._file.seek(0)
            self._position = 0
            self._lines = _Lines()
            self._read()

    def _rotated_after(self, identity: tuple[int, int] | None) -> list[str]:
        """The rotated files written after the one with C{identity}, oldest first."""
        files = rotated_files(self.path)
        for index, name in enumerate(files):
            try:
                found = os.stat(name)
            except OSError:
                continue
            if (found.st_dev, found.st_ino) == identity:
                return files[index + 1 :]
        return []

    def _open(self) -> bool:
        try:
            # Not a device or a FIFO, which would never end or block.
            self._file = open_journal(self.path)
        except OSError:
            return False
        found = os.fstat(self._file.fileno())
        self._identity = (found.st_dev, found.st_ino)
        self._position = 0
        self._lines = _Lines()
        return True

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        torn = self._lines.end()
        if torn is not None and torn[1]:
            # Too long to be a line being written when the file was left.
            self._on_problem(Problem(self.path, torn[0], too_long=True))

    def _read(self) -> None:
        assert self._file is not None
        while chunk := self._file.read(_READ_SIZE):
            self._position += len(chunk)
            for number, raw in self._lines.feed(chunk):
                record = parse_line(raw) if raw is not None else None
                if record is not None:
                    self._on_record(record)
                elif raw is None:
                    self._on_problem(Problem(self.path, number, too_long=True))
                elif raw.strip():
                    self._on_problem(Problem(self.path, number))
