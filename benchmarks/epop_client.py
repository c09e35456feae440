"""
C{epop ARGS...} exactly as the console script runs it (L{epop.cli.main}),
timed from after the imports to the end: the benchmark's "transfer time" for
the epop client, comparable with curl's C{time_total}.  The process's own
wall time (start-up included) is measured by the runner.

The last line on standard error is C{epop-bench-elapsed SECONDS}.
"""

from __future__ import annotations

import sys
import time

from epop.cli import main


def run() -> None:
    started = time.monotonic()
    try:
        main(sys.argv[1:])
    finally:
        sys.stderr.write(f"\nepop-bench-elapsed {time.monotonic() - started:.6f}\n")
        sys.stderr.flush()


if __name__ == "__main__":
    run()
