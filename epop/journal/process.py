"""
Which process wrote a run of the journal, and whether it still runs.

A relay killed with SIGKILL, or by a power cut, never journals the end of
its connections: without more, C{epop connections} would show them open
until the relay starts again.  So the relay's C{listening-opened} records
say which process it is (L{process_fields}), and the reader, on the same
machine, asks whether that process is still there (L{process_state}).

A process id alone is not enough: after a reboot, or once enough processes
have come and gone, another process can have the same number.  On Linux
the record also carries the process's I{start}: a digest of the machine's
id, the boot, the PID namespace and the start time of the process since
boot, all read from C{/proc}.  Another boot means the relay is gone; the
same number with another start time is another process.  Elsewhere only the number is
checked, so a reused number makes the run look alive: the reader may then
say "open" for a relay that is gone, never "gone" for one that runs.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Any

__all__ = ["ALIVE", "GONE", "UNKNOWN", "process_fields", "process_start", "process_state"]

ALIVE = "alive"
GONE = "gone"
UNKNOWN = "unknown"

_PROC = "/proc"
_LINUX_PREFIX = "linux"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _context(proc: str) -> tuple[str, str, str] | None:
    """This machine's id, this boot's id and our PID namespace; None without C{/proc}."""
    boot = _read(os.path.join(proc, "sys", "kernel", "random", "boot_id"))
    if not boot:
        return None
    try:
        namespace = os.readlink(os.path.join(proc, "self", "ns", "pid"))
    except OSError:
        namespace = ""
    machine = _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id") or ""
    # The machine id is meant to stay private: keep only a digest of it.
    digest = hashlib.sha256(machine.encode()).hexdigest()[:16] if machine else ""
    return digest, boot, namespace


def _stat_fields(pid: int, proc: str) -> list[str] | None:
    """The fields of C{/proc/PID/stat} after the command; None if not found."""
    stat = _read(os.path.join(proc, str(pid), "stat"))
    if stat is None:
        return None
    # "pid (command) state ppid ...": the command may hold spaces and
    # parentheses, so count the fields from the last ")".
    return stat.rpartition(")")[2].split()


def _start_ticks(pid: int, proc: str) -> str | None:
    """When process C{pid} started, in clock ticks since boot; None if not found."""
    fields = _stat_fields(pid, proc)
    # starttime is field 22 of the whole line, the 20th after the command.
    return fields[19] if fields is not None and len(fields) > 19 else None


#: States of a process that has ended: a zombie (killed or exited, not yet
#: reaped by its parent) and a dead one being torn down.
_ENDED_STATES = ("Z", "X", "x")


def _has_ended(pid: int, proc: str) -> bool:
    """
    Whether C{/proc} shows process C{pid} as ended but not yet reaped: it
    keeps its number, and answers signal 0, until its parent waits for it
    (a relay under a supervisor that is slow to reap, or under none).
    """
    fields = _stat_fields(pid, proc)
    return bool(fields) and fields[0] in _ENDED_STATES


def process_start(pid: int, proc: str = _PROC) -> str | None:
    """
    What tells process C{pid} apart from every other process that ever ran
    on this machine (C{linux/MACHINE/BOOT/NAMESPACE/TICKS}), or None where
    C{/proc} cannot tell.
    """
    context = _context(proc)
    ticks = _start_ticks(pid, proc)
    if context is None or ticks is None:
        return None
    return "/".join([_LINUX_PREFIX, *context, ticks])


def process_fields(proc: str = _PROC) -> dict[str, Any]:
    """The C{host}, C{pid} and C{process_start} of the running relay, for its journal."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "process_start": process_start(pid, proc)}


def _number_state(pid: int) -> str:
    """Whether a process numbered C{pid} exists, by signal 0 (POSIX only)."""
    if os.name != "posix":
        # On Windows os.kill() would terminate the process, not probe it.
        return UNKNOWN
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return GONE
    except PermissionError:
        return ALIVE  # it exists, and belongs to someone else
    except OSError:
        return UNKNOWN
    return ALIVE


def process_state(record: dict[str, Any], proc: str = _PROC, host: str | None = None) -> str:
    """
    L{ALIVE}, L{GONE} or L{UNKNOWN}: whether the relay process that wrote the
    C{listening-opened} C{record} still runs.  L{UNKNOWN} when the record
    does not say, or was written on another machine.

    @param host: this machine's name; L{socket.gethostname} by default.
    """
    pid = record.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return UNKNOWN
    if record.get("host") != (socket.gethostname() if host is None else host):
        return UNKNOWN
    recorded = record.get("process_start")
    context = _context(proc)
    if isinstance(recorded, str) and context is not None:
        parts = recorded.split("/")
        if len(parts) != 5 or parts[0] != _LINUX_PREFIX:
            return UNKNOWN
        machine, boot, namespace, ticks = parts[1:]
        if machine != context[0]:
            return UNKNOWN  # another machine with the same name
        if boot != context[1]:
            return GONE  # the machine restarted since
        if namespace != context[2]:
            return UNKNOWN  # another container: its numbers are not ours
        now = _start_ticks(pid, proc)
        if now is not None:
            return ALIVE if now == ticks and not _has_ended(pid, proc) else GONE
        # Not in /proc (or hidden from us, with hidepid): ask the kernel.
    if _has_ended(pid, proc):
        return GONE
    return _number_state(pid)
