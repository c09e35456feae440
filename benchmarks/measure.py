"""
What the benchmark measures, read from C{/proc}: a process's memory
(C{VmHWM}, its peak RSS), CPU time (C{utime + stime}) and descriptors, its
descendants, and the uploads the relay's journal shows in flight.

Linux only, like the measurements it takes.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

__all__ = [
    "ProcSample",
    "TreeWatcher",
    "descendants",
    "fd_kinds",
    "processes",
    "sample",
    "uploads_in_flight_peak",
]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class ProcSample:
    """One look at a process in C{/proc}."""

    pid: int
    rss_kib: int
    hwm_kib: int
    #: Of the RSS: private memory, and pages of mapped files (shared libraries).
    rss_anon_kib: int
    rss_file_kib: int
    #: utime + stime of the process itself, in seconds.
    cpu_s: float
    #: cutime + cstime: children it waited for.
    children_cpu_s: float
    fds: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _status_kib(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def sample(pid: int) -> ProcSample:
    """Read C{pid}'s memory, CPU time and descriptor count (raises OSError if gone)."""
    with open(f"/proc/{pid}/status") as handle:
        status = handle.read()
    with open(f"/proc/{pid}/stat") as handle:
        stat = handle.read()
    # The command name (field 2) may hold spaces: split after its ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    return ProcSample(
        pid=pid,
        rss_kib=_status_kib(status, "VmRSS"),
        hwm_kib=_status_kib(status, "VmHWM"),
        rss_anon_kib=_status_kib(status, "RssAnon"),
        rss_file_kib=_status_kib(status, "RssFile"),
        cpu_s=(utime + stime) / _CLOCK_TICKS,
        children_cpu_s=(cutime + cstime) / _CLOCK_TICKS,
        fds=fds,
    )


def uploads_in_flight_peak(journal: Path) -> int:
    """
    The most uploads a relay had in flight at once, from its journal: each
    upload is in flight from its C{object-instantiated} event to its
    C{object-released} one.  The journal lists events in the order they
    happened, so no clock is needed.
    """
    in_flight = peak = 0
    with open(journal, encoding="utf-8") as lines:
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut short by a relay stopped mid-write
            if not isinstance(event, dict) or event.get("kind") != "upload":
                continue
            if event.get("type") == "object-instantiated":
                in_flight += 1
                peak = max(peak, in_flight)
            elif event.get("type") == "object-released":
                in_flight -= 1
    return peak


def fd_kinds(pid: int) -> dict[str, int]:
    """C{pid}'s open descriptors by kind: socket, pipe, file, anon..."""
    kinds: dict[str, int] = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return kinds
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:"):
            kind = "socket"
        elif target.startswith("pipe:"):
            kind = "pipe"
        elif target.startswith("anon_inode:"):
            kind = target[len("anon_inode:") :].strip("[]")
        elif target.startswith("/dev/"):
            kind = "device"
        else:
            kind = "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def processes() -> Iterator[tuple[int, list[str]]]:
    """
    Every process's pid and the fields of C{/proc/PID/stat} after its
    command name: state, parent, process group...
    """
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        yield int(entry), stat[stat.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """Every live descendant of C{pid} (children, grandchildren...)."""
    parents = {child: int(fields[1]) for child, fields in processes()}
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found.extend(children)
        frontier.extend(children)
    return found


class TreeWatcher:
    """
    Watch a process and its descendants while a transfer runs: the peak of
    their C{VmHWM} and the CPU time of descendants that are still alive at
    the end (those that ended were reaped by their parent and show in its
    C{cutime}).  For socat, whose forked child does the relaying.
    """

    def __init__(self, pid: int, interval: float = 0.1, enabled: bool = True) -> None:
        self.pid = pid
        self.interval = interval
        self.enabled = enabled
        self.peak_hwm_kib = 0
        self.child_peak_hwm_kib = 0
        self._start_cpu: dict[int, float] = {}
        self._last_cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        if not self.enabled:
            return self
        for pid in descendants(self.pid):
            with contextlib.suppress(OSError):
                self._start_cpu[pid] = sample(pid).cpu_s
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.enabled:
            return
        self._stop.set()
        self._thread.join(5)
        self._look()

    def _look(self) -> None:
        for pid in [self.pid, *descendants(self.pid)]:
            try:
                seen = sample(pid)
            except (OSError, ValueError, IndexError):
                continue
            self.peak_hwm_kib = max(self.peak_hwm_kib, seen.hwm_kib)
            if pid != self.pid:
                self.child_peak_hwm_kib = max(self.child_peak_hwm_kib, seen.hwm_kib)
                self._last_cpu[pid] = seen.cpu_s

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._look()

    def live_children_cpu_s(self) -> float:
        """CPU seconds spent during the watch by descendants still alive."""
        if not self.enabled:
            return 0.0
        alive = set(descendants(self.pid))
        return sum(
            cpu - self._start_cpu.get(pid, 0.0)
            for pid, cpu in self._last_cpu.items()
            if pid in alive
        )
