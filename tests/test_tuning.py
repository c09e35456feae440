"""
The allocator setting for bulk transfers (L{epop.tuning.keep_buffers_on_heap}).

It changes the whole process, so each check runs in a Python of its own.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from epop.relay import tap
from epop.tuning import _glibc

# Prints where a buffer of 3/4 of HEAP_THRESHOLD lives: "[heap]" or "mapped".
_WHERE = textwrap.dedent(
    """
    import ctypes, sys
    from epop.tuning import HEAP_THRESHOLD, keep_buffers_on_heap
    if sys.argv[1] == "tuned":
        assert keep_buffers_on_heap()
    buf = bytearray(HEAP_THRESHOLD * 3 // 4)
    address = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if low <= address < high:
                print("[heap]" if fields[-1] == "[heap]" else "mapped")
    """
)


def _where(mode: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _WHERE, mode], capture_output=True, text=True, timeout=60
    )
    if done.returncode:
        raise AssertionError(done.stderr)
    return done.stdout.strip()


class KeepBuffersOnHeapTests(SynchronousTestCase):
    def test_large_buffers_come_from_the_heap(self) -> None:
        """
        Once applied, a buffer of several read sizes comes from the heap,
        which keeps its pages, rather than from a mapping of its own, whose
        pages fault in afresh every time.
        """
        if not _glibc():
            raise self.skipTest("only glibc has these allocator settings")
        self.assertEqual(_where("plain"), "mapped")
        self.assertEqual(_where("tuned"), "[heap]")

    def test_twistd_epop_applies_it(self) -> None:
        """C{twistd epop} owns its process, so it applies the setting."""
        calls = []
        self.patch(tap, "keep_buffers_on_heap", lambda: calls.append(True) or True)
        options = tap.Options()
        options.parseOptions(["--no-check", "--journal", self.mktemp()])
        tap.makeService(options)
        self.assertEqual(calls, [True])

    def test_other_c_libraries_are_left_alone(self) -> None:
        """Elsewhere (musl, macOS, Windows) it changes nothing and says so."""
        from epop import tuning

        self.patch(tuning, "_glibc", lambda: False)
        self.assertFalse(tuning.keep_buffers_on_heap())
