"""
Buffer sizes and allocator settings for bulk transfers.

Twisted reads at most 64 KiB per call by default.  A relayed upload then
costs Python work, and a pause and resume of the workstation's connection,
for every 64 KiB.  Reading 256 KiB at a time cut the relay's CPU per GiB by
about a quarter in the benchmark (``docs/performance.md``), for 192 KiB more
memory per connection at most.  Raising the threshold at which e-PMSI's
connection pushes back (1 MiB instead of 64 KiB) was measured too, and made
things worse: more copying in Twisted's write buffer.

Sending to e-PMSI had the mirror problem: Twisted hands the kernel at most
128 KiB per send, so a 256 KiB read, once encrypted, took two or three
trips through the reactor before the workstation's connection could resume.
Sending up to 512 KiB at a time cut the relay's CPU per GiB by about 5 %.

Reading that much at a time also means allocating that much at a time, which
glibc handles well only with fixed thresholds (L{keep_buffers_on_heap}).

It also sets what an upload in flight holds in the relay while e-PMSI is
the slow side: each read, once encrypted, waits in e-PMSI's connection's
write buffer.  In the month-end rush (200 concurrent uploads) that was about
0.6 MiB per upload.  L{ReadBudget} shares a fixed amount among the uploads
in flight instead: one upload still reads L{READ_SIZE} at a time, many read
less each, down to L{MIN_READ_SIZE}.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

from twisted.internet.abstract import FileDescriptor

__all__ = [
    "HEAP_THRESHOLD",
    "HELD_TAIL",
    "MIN_READ_SIZE",
    "READ_BUDGET",
    "READ_SIZE",
    "SEND_LIMIT",
    "ReadBudget",
    "keep_buffers_on_heap",
    "tune",
    "unsent",
]

#: Bytes read from a workstation's socket per call, with few uploads in flight.
READ_SIZE = 256 * 1024

#: The least a workstation's socket reads per call, and what it reads until
#: its upload streams.  With a 64 KiB floor (Twisted's own default), the
#: month-end rush's peak varied between 34 and 78 MiB over the idle relay;
#: with 32 KiB, between 29 and 34 MiB, for the same CPU.
MIN_READ_SIZE = 32 * 1024

#: Bytes per call that the uploads in flight read together, at most, while
#: each reads more than L{MIN_READ_SIZE}: 32 uploads read L{READ_SIZE} each.
READ_BUDGET = 8 * 1024 * 1024

#: Bytes at the end of an upload that e-PMSI gets only once the workstation's
#: SHA-256 matched.  Any tail keeps the request short of its Content-Length;
#: 64 bytes also covers the closing boundary of epop's multipart body
#: (45 bytes), so the file part never ends either.
HELD_TAIL = 64

#: Bytes handed to the kernel per send on e-PMSI's connection.
SEND_LIMIT = 512 * 1024

#: Allocations up to this size come from glibc's heap, see L{keep_buffers_on_heap}.
HEAP_THRESHOLD = 4 * READ_SIZE

# mallopt() parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _descriptor(transport: Any) -> FileDescriptor | None:
    """The file descriptor under C{transport}, looking through wrappers (TLS, PROXY protocol)."""
    for _ in range(8):
        if transport is None or isinstance(transport, FileDescriptor):
            return transport
        transport = getattr(transport, "transport", None)
    return None


def tune(transport: Any, *, read_size: int | None = None, send_limit: int | None = None) -> None:
    """
    Set how much the socket under C{transport} reads per call and sends per
    call, looking through wrappers (TLS, PROXY protocol) to the file
    descriptor.
    """
    descriptor = _descriptor(transport)
    if descriptor is None:
        return
    if read_size is not None:
        descriptor.bufferSize = read_size
    if send_limit is not None:
        descriptor.SEND_LIMIT = send_limit


def unsent(transport: Any) -> int | None:
    """
    Bytes written to C{transport} that its socket has not taken yet; C{None}
    when the transport keeps no such buffer the relay can see.  (Twisted's
    own bookkeeping, as L{FileDescriptor.doWrite} keeps it.)
    """
    descriptor = _descriptor(transport)
    if descriptor is None:
        return None
    try:
        return len(descriptor.dataBuffer) - descriptor.offset + descriptor._tempDataLen
    except AttributeError:
        return None


class ReadBudget:
    """
    Shares L{READ_BUDGET} among the uploads in flight on one relay.

    An upload whose e-PMSI side is slower than its workstation keeps about
    one read, encrypted, in e-PMSI's connection's write buffer: that is
    where a relay's memory goes when many uploads run at once.  Dividing one
    budget among them bounds the total, while a lone upload keeps the large
    reads that save CPU.  The relay asks for the size each time an upload
    resumes reading, so it follows the count as uploads start and end.
    """

    def __init__(
        self,
        total: int = READ_BUDGET,
        largest: int = READ_SIZE,
        smallest: int = MIN_READ_SIZE,
    ) -> None:
        self.total = total
        self.largest = largest
        self.smallest = smallest
        self.uploads = 0

    def started(self) -> None:
        """One more upload in flight."""
        self.uploads += 1

    def ended(self) -> None:
        """One upload fewer in flight."""
        self.uploads = max(0, self.uploads - 1)

    def read_size(self) -> int:
        """Bytes each upload in flight may read per call now (a multiple of 4 KiB)."""
        share = self.total // max(1, self.uploads)
        share -= share % 4096
        return max(self.smallest, min(self.largest, share))


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


def keep_buffers_on_heap() -> bool:
    """
    Have glibc serve large buffers from its heap, and keep freed memory for
    reuse, for the rest of the process.

    Every socket read allocates a L{READ_SIZE} buffer.  glibc's thresholds
    for mapping a block on its own and for handing the top of the heap back
    to the system move with the process's history.  When they end up low,
    the pages of every buffer fault in afresh: the benchmark caught relays
    taking about 300,000 page faults and a third more CPU per GiB relayed,
    in some runs and not others (C{docs/performance.md}).  Fixed thresholds
    keep blocks up to L{HEAP_THRESHOLD} on the heap, and up to twice that of
    freed memory for reuse.

    This changes the whole process: C{twistd epop} calls it, while
    L{epop.relay.service.make_relay_service} leaves it to whoever owns the process.

    @return: whether the settings applied (only glibc has them).
    """
    if not _glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2 * HEAP_THRESHOLD)
    )
