"""
The benchmark suite: ``make bench`` / ``python -m benchmarks.run [--quick]``.

Runs on 127.0.0.1 only, every party a separate process:

1. one large transfer (``--size``, 1 GiB by default), rows a-h (see ROWS),
   repeated ``--repeats`` times with the rows interleaved;
2. the relay's peak RSS relaying a small and a large file (fresh relays), by
   e-POP and through its HTTP CONNECT tunnel;
3. the month-end rush: many concurrent ``send_file`` from one driver process;
4. churn: sequential ``test_connection`` through the relay (leak check).

Every transfer's receipt SHA-256 is compared with the file's: a mismatch is a
failure, never a result.  Prints a Markdown table and writes the raw results
as JSON in ``benchmarks/results/``.  Exit status: 0 when everything ran and
verified (targets may still be missed: the table says so), 1 when something
failed, 2 for a usage error.  See docs/performance.md.

This module is the command line; the rows and parts are in
L{benchmarks.suite}, the targets and tables in L{benchmarks.report}.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    GIB,
    MIB,
    ROOT,
    BenchError,
    human,
    start_sandbox,
)
from benchmarks.report import evaluate, render
from benchmarks.suite import PARTS, ROWS, Bench
from benchmarks.tools import Tools

RESULTS = ROOT / "benchmarks" / "results"

#: Presets: the full run (the issue's numbers), --quick, and --smoke (the
#: unit test's: tiny, seconds).
PRESETS: dict[str, dict[str, Any]] = {
    "full": {"size": 1 * GIB, "repeats": 5, "memory_small": 100 * MIB, "memory_large": 2 * GIB,
             "clients": 200, "client_size": 10 * MIB, "churn_ops": 5000, "churn_warmup": 20,
             "deadline": 900.0},
    "quick": {"size": 128 * MIB, "repeats": 2, "memory_small": 16 * MIB, "memory_large": 256 * MIB,
              "clients": 50, "client_size": 2 * MIB, "churn_ops": 500, "churn_warmup": 20,
              "deadline": 300.0},
    "smoke": {"size": 2 * MIB, "repeats": 1, "memory_small": 1 * MIB, "memory_large": 2 * MIB,
              "clients": 1, "client_size": 1 * MIB, "churn_ops": 10, "churn_warmup": 2,
              "deadline": 120.0},
}

#: Room left on the disk beyond what the largest part needs.
DISK_MARGIN = 512 * MIB

def parse_size(text: str) -> int:
    """C{1G}, C{100M}, C{512K}, C{1.5G} or bytes: powers of 1024."""
    units = {"K": 1024, "M": MIB, "G": GIB, "T": 1024 * GIB}
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        if cleaned and cleaned[-1] in units:
            value = float(cleaned[:-1]) * units[cleaned[-1]]
        else:
            value = float(cleaned)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 1G, 100M or 4096") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a size must be at least 1 byte")
    return int(value)


def machine_info(tools: Tools) -> dict[str, Any]:
    import ssl

    import twisted

    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = human(int(line.split()[1]) * 1024)
    tls = "?"
    with contextlib.suppress(Exception):
        from OpenSSL import SSL

        tls = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "memory": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "openssl_twisted": tls,
        "openssl_python": ssl.OPENSSL_VERSION,
        "tools": tools.versions(),
    }


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="The e-POP benchmark suite (docs/performance.md). Loopback only.",
    )
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="a short run: smaller files, fewer clients and operations")
    preset.add_argument("--smoke", action="store_true", help="tiny sizes, one client, a few operations (the unit test's)")
    parser.add_argument("--size", type=parse_size, help="size of the one large transfer (default 1G; --quick 128M)")
    parser.add_argument("--repeats", type=int, help="runs of each transfer row, interleaved (default 3)")
    parser.add_argument("--rows", default="".join(ROWS), help=f"transfer rows to run, e.g. ab (default {''.join(ROWS)})")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"parts to run (default {','.join(PARTS)})")
    parser.add_argument("--memory-sizes", help="small,large files relayed for the memory part (default 100M,2G)")
    parser.add_argument("--clients", type=int, help="concurrent clients in the rush (default 200)")
    parser.add_argument("--client-size", type=parse_size, help="what each rush client sends (default 10M)")
    parser.add_argument("--churn-ops", type=int, help="sequential test operations (default 5000)")
    parser.add_argument("--deadline", type=float, help="seconds any one step may take (default 900)")
    parser.add_argument("--workdir", help="folder for the scratch folder (default: $TMPDIR or /tmp)")
    parser.add_argument("--results-dir", default=str(RESULTS), help="where the JSON goes (default benchmarks/results)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs) afterwards")
    return parser


def options_from(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _parser()
    o = parser.parse_args(argv)
    o.preset = "smoke" if o.smoke else "quick" if o.quick else "full"
    for key, value in PRESETS[o.preset].items():
        if getattr(o, key, None) is None:
            setattr(o, key, value)
    if o.memory_sizes:
        try:
            small, large = (parse_size(part) for part in o.memory_sizes.split(","))
        except (ValueError, argparse.ArgumentTypeError):
            parser.error("--memory-sizes: expected SMALL,LARGE such as 100M,2G")
        o.memory_small, o.memory_large = small, large
    o.rows = [key for key in o.rows.lower() if key in ROWS]
    unknown = set(o.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    o.parts = [part for part in PARTS if part in o.parts.split(",")]
    for name in ("repeats", "clients", "churn_ops"):
        if getattr(o, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if o.deadline <= 0:
        parser.error("--deadline must be positive")
    return o


def disk_needed(o: argparse.Namespace) -> int:
    """The most the scratch folder holds at once: a source file and the sandbox's copy."""
    needs = [0]
    if "transfers" in o.parts:
        needs.append(2 * o.size)
    if "memory" in o.parts:
        needs.append(2 * max(o.memory_small, o.memory_large))
    if "rush" in o.parts:
        needs.append(o.client_size * (o.clients + 1))
    return max(needs) + DISK_MARGIN


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    o = options_from(argv)
    signal.signal(signal.SIGTERM, _terminate)
    tools = Tools.find()
    parent = Path(o.workdir or tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    needed = disk_needed(o)
    free = shutil.disk_usage(parent).free
    if free < needed:
        print(f"benchmarks: {parent} has {human(free)} free, the suite needs {human(needed)}: "
              "use --workdir elsewhere or a smaller --size", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="epop-bench-", dir=parent))
    # squid's unprivileged user must reach its folder inside.
    workdir.chmod(0o711)
    started = time.monotonic()
    results: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "preset": o.preset,
        "options": {k: v for k, v in vars(o).items() if k not in ("quick", "smoke")},
        "machine": machine_info(tools),
        "missing_tools": tools.missing,
        "disk": {"folder": str(workdir), "free_before": free, "needed": needed},
    }
    bench = Bench(o, tools, workdir)
    try:
        with contextlib.ExitStack() as stack:
            bench.log(f"[setup] scratch folder {workdir}; starting the e-PMSI sandbox")
            bench.sandbox = start_sandbox(workdir / "sandbox", workdir / "sandbox.log", stack)
            if "transfers" in o.parts:
                results["transfers"] = bench.run_transfers()
            if "memory" in o.parts:
                results["memory"] = bench.run_memory()
            if "rush" in o.parts:
                results["rush"] = bench.run_rush()
            if "churn" in o.parts:
                results["churn"] = bench.run_churn()
    except BenchError as error:
        bench.failures.append(f"setup: {error}")
    finally:
        if o.keep:
            print(f"benchmarks: scratch folder kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["duration_s"] = time.monotonic() - started
    results["failures"] = bench.failures
    results["targets"] = evaluate(results)
    table = render(results)
    print(table)
    results_dir = Path(o.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = results["started"].replace(":", "").replace("-", "")
    out = results_dir / f"bench-{stamp}-{o.preset}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nRaw results: {out}", file=sys.stderr)
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
