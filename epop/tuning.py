"""
Socket buffer size for bulk transfers.

Twisted reads at most 64 KiB per call by default.  A relayed upload then
costs Python work, and a pause and resume of the workstation's connection,
for every 64 KiB.  Reading 256 KiB at a time cut the relay's CPU per GiB by
about a quarter in the benchmark (``docs/performance.md``), for 192 KiB more
memory per connection at most.  Raising the threshold at which e-PMSI's
connection pushes back (1 MiB instead of 64 KiB) was measured too, and made
things worse: more copying in Twisted's write buffer.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor

__all__ = ["READ_SIZE", "tune"]

#: Bytes read from a workstation's socket per call.
READ_SIZE = 256 * 1024


def tune(transport: Any, size: int) -> None:
    """
    Set the buffer size of the socket under C{transport}, looking through
    wrappers (TLS, PROXY protocol) to the file descriptor.
    """
    for _ in range(8):
        if transport is None:
            return
        if isinstance(transport, FileDescriptor):
            transport.bufferSize = size
            return
        transport = getattr(transport, "transport", None)
