"""
The benchmark suite: ``make bench`` / ``python -m benchmarks.run [--quick]``.

Runs on 127.0.0.1 only, every party a separate process:

1. one large transfer (``--size``, 1 GiB by default), rows a-g (see ROWS),
   repeated ``--repeats`` times with the rows interleaved;
2. the relay's peak RSS relaying a small and a large file (fresh relays);
3. the month-end rush: many concurrent ``send_file`` from one driver process;
4. churn: sequential ``test_connection`` through the relay (leak check).

Every transfer's receipt SHA-256 is compared with the file's: a mismatch is a
failure, never a result.  Prints a Markdown table and writes the raw results
as JSON in ``benchmarks/results/``.  Exit status: 0 when everything ran and
verified (targets may still be missed: the table says so), 1 when something
failed, 2 for a usage error.  See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    GIB,
    MIB,
    ROOT,
    BenchError,
    Server,
    Tools,
    TreeWatcher,
    clear_uploads,
    deleting,
    descendants,
    fd_kinds,
    make_random_file,
    make_relay_certificate,
    run_client,
    sample,
    start_relay,
    start_sandbox,
    start_socat,
    start_squid,
    uploads_in_flight_peak,
)

RESULTS = ROOT / "benchmarks" / "results"
UPLOAD_PATH = "/syriusUpload.do"
FIELD = "theFile"
REQUIRE_SQUID = "EPOP_REQUIRE_SQUID"


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    client: str  # "epop" or "curl"
    needs: tuple[str, ...] = ()
    measured: str | None = None  # which process is "the relay" for this row


ROWS: dict[str, Row] = {
    row.key: row
    for row in (
        Row("a", "epop -> sandbox (direct)", "epop"),
        Row("b", "epop -> relay -> sandbox", "epop", (), "epop relay"),
        Row("c", "epop -TLS-> relay -> sandbox", "epop", (), "epop relay"),
        Row("d", "epop -> relay -> squid (Basic) -> sandbox", "epop", ("squid",), "epop relay"),
        Row("e", "curl -> sandbox (direct)", "curl", ("curl",)),
        Row("f", "curl -> squid (CONNECT, Basic) -> sandbox", "curl", ("curl", "squid"), "squid"),
        Row("g", "curl -> socat -> sandbox", "curl", ("curl", "socat"), "socat"),
    )
}

PARTS = ("transfers", "memory", "rush", "churn")

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

#: What the relay's peak RSS may add to its idle RSS during the rush.
RUSH_MEMORY_MIB = 64


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


def human(size: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if size >= scale:
            value = size / scale
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size:.0f} B"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


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


def _client_env(workdir: Path) -> dict[str, str]:
    """The clients' environment: no proxy variables, no saved epop settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    }
    env["EPOP_CONFIG"] = str(workdir / "no-client-settings.ini")
    env["LC_ALL"] = "C.UTF-8"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _check_receipt(body: bytes, sha256: str, size: int) -> dict[str, Any]:
    """The receipt's theFile entry, or raise L{BenchError} saying what is wrong."""
    try:
        receipt = json.loads(body)
    except ValueError:
        raise BenchError(f"the answer is not a JSON receipt: {body[:300]!r}") from None
    files = [f for f in receipt.get("files", []) if f.get("field") == FIELD]
    if len(files) != 1:
        raise BenchError(f"the receipt lists {len(files)} {FIELD} parts: {body[:300]!r}")
    entry: dict[str, Any] = files[0]
    if entry.get("sha256") != sha256:
        raise BenchError(f"SHA-256 MISMATCH: sent {sha256}, e-PMSI received {entry.get('sha256')}")
    if entry.get("size") != size:
        raise BenchError(f"SIZE MISMATCH: sent {size} bytes, e-PMSI received {entry.get('size')}")
    return receipt


class Bench:
    """One run of the suite: its settings, scratch folder, sandbox and results."""

    def __init__(self, options: argparse.Namespace, tools: Tools, workdir: Path) -> None:
        self.o = options
        self.tools = tools
        self.workdir = workdir
        self.env = _client_env(workdir)
        self.require_squid = os.environ.get(REQUIRE_SQUID) == "1"
        self.sandbox: Server | None = None
        self.relay_tls: dict[str, str] | None = None
        self.failures: list[str] = []

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    # -- tools ---------------------------------------------------------------
    def missing(self, needs: Sequence[str]) -> str | None:
        """Why a row cannot run (None if it can); raises if squid is required."""
        if "squid" in needs and "squid" in self.tools.missing and self.require_squid:
            raise BenchError(f"squid is required ({REQUIRE_SQUID}=1) but {self.tools.missing['squid']}")
        for tool in needs:
            if tool in self.tools.missing:
                return self.tools.missing[tool]
        return None

    # -- clients ---------------------------------------------------------------
    def _timeout(self, size: int) -> float:
        # Generous: 2 MB/s would be a failure anyway, not a measurement.
        return min(self.o.deadline, 60.0 + size / 2e6)

    def epop_send(
        self, name: str, path: Path, sha256: str, *, relay: Server | None = None, tls: bool = False
    ) -> dict[str, Any]:
        assert self.sandbox is not None
        command = [sys.executable, "-m", "benchmarks.epop_client", "send", str(path),
                   "--to", UPLOAD_PATH, "--field", FIELD]
        if relay is None:
            command += ["--direct", "--epmsi", self.sandbox.extra["url"],
                        "--ca-file", self.sandbox.extra["ca"]]
        else:
            command += ["--relay", f"127.0.0.1:{relay.port}"]
            if tls:
                assert self.relay_tls is not None
                command += ["--tls", "--relay-ca", self.relay_tls["ca"]]
        size = path.stat().st_size
        run = run_client(command, self.workdir, name, self._timeout(size), self.env)
        stderr = run.stderr.decode(errors="replace")
        if run.timed_out:
            raise BenchError(f"epop send did not finish within {self._timeout(size):.0f} s")
        if run.returncode != 0:
            raise BenchError(f"epop send exited with {run.returncode}: {stderr[-1500:]}")
        elapsed = [line for line in stderr.splitlines() if line.startswith("epop-bench-elapsed ")]
        xfer = float(elapsed[-1].split()[1]) if elapsed else run.wall_s
        receipt = _check_receipt(run.stdout, sha256, size)
        return {"wall_s": run.wall_s, "xfer_s": xfer, "client_maxrss_kib": run.maxrss_kib,
                "client_cpu_s": run.cpu_s, "upload": receipt.get("upload")}

    def curl_send(
        self, name: str, path: Path, sha256: str, *, port: int | None = None, proxy: Server | None = None
    ) -> dict[str, Any]:
        assert self.sandbox is not None and self.tools.curl is not None
        receipt_path = self.workdir / f"{name}.receipt"
        url = f"https://127.0.0.1:{port or self.sandbox.port}{UPLOAD_PATH}"
        # -F NAME=@FILE streams the file from disk (curl's mime reader), with
        # a Content-Length; --data-binary @FILE would read it all into memory.
        # "Expect:" skips the 100-continue round trip.
        command = [self.tools.curl, "-sS", "--cacert", self.sandbox.extra["ca"], "-H", "Expect:",
                   "-F", f"{FIELD}=@{path}", "-o", str(receipt_path),
                   "-w", "%{http_code} %{time_total} %{size_upload}", url]
        if proxy is not None:
            command[1:1] = ["--proxy", proxy.extra["url"],
                            "--proxy-user", f"{proxy.extra['user']}:{proxy.extra['password']}"]
        size = path.stat().st_size
        with deleting(receipt_path):
            run = run_client(command, self.workdir, name, self._timeout(size), self.env)
            if run.timed_out:
                raise BenchError(f"curl did not finish within {self._timeout(size):.0f} s")
            written = run.stdout.decode(errors="replace").split()
            if run.returncode != 0 or len(written) != 3 or written[0] != "200":
                raise BenchError(
                    f"curl exited with {run.returncode}, wrote {written}: "
                    f"{run.stderr.decode(errors='replace')[-1000:]}"
                )
            body = receipt_path.read_bytes() if receipt_path.exists() else b""
        receipt = _check_receipt(body, sha256, size)
        return {"wall_s": run.wall_s, "xfer_s": float(written[1]), "client_maxrss_kib": run.maxrss_kib,
                "client_cpu_s": run.cpu_s, "upload": receipt.get("upload")}

    # -- servers ---------------------------------------------------------------
    def drive(self, part: str, *args: str) -> tuple[Any, dict[str, Any]]:
        """
        Run C{python -m benchmarks.driver PART ARGS} under the run's deadline;
        return the finished run and its JSON report.  A failed or late driver
        is a L{BenchError}.
        """
        command = [sys.executable, "-m", "benchmarks.driver", part, *args,
                   "--deadline", str(self.o.deadline)]
        run = run_client(command, self.workdir, f"driver-{part}", self.o.deadline + 60, self.env)
        if run.timed_out or run.returncode != 0:
            raise BenchError(
                f"the {part} driver exited with {run.returncode} (timed out: {run.timed_out}): "
                + run.stderr.decode(errors="replace")[-1500:]
            )
        return run, json.loads(run.stdout)

    def relay(self, name: str, stack: contextlib.ExitStack, *, tls: bool = False,
              proxy: Server | None = None, extra_args: tuple[str, ...] = ()) -> Server:
        assert self.sandbox is not None
        extra: list[str] = list(extra_args)
        if tls:
            if self.relay_tls is None:
                self.relay_tls = make_relay_certificate(self.workdir / "relay-tls")
            extra += ["--tls-cert", self.relay_tls["cert"], "--tls-key", self.relay_tls["key"]]
        if proxy is not None:
            extra += ["--proxy", proxy.extra["url"], "--proxy-user", proxy.extra["user"],
                      "--proxy-password-file", proxy.extra["password_file"]]
        return start_relay(self.workdir, name, self.sandbox, stack, extra)

    def squid(self, name: str, stack: contextlib.ExitStack) -> Server:
        assert self.sandbox is not None
        return start_squid(self.workdir, name, self.sandbox.port, self.tools, stack)

    def clear(self) -> None:
        assert self.sandbox is not None
        clear_uploads(Path(self.sandbox.extra["uploads"]))

    # -- 1. one large transfer ---------------------------------------------------
    def transfer(self, row: Row, path: Path, sha256: str, repeat: int) -> dict[str, Any]:
        """One transfer of C{path} for C{row}: fresh relay/squid/socat, then measure."""
        assert self.sandbox is not None
        name = f"{row.key}{repeat}"
        size = path.stat().st_size
        with contextlib.ExitStack() as stack:
            stack.callback(self.clear)
            measured: Server | None = None
            proxy: Server | None = None
            if row.key in "bcd":
                if row.key == "d":
                    proxy = self.squid(f"squid-{name}", stack)
                measured = self.relay(f"relay-{name}", stack, tls=row.key == "c", proxy=proxy)
            elif row.key == "f":
                measured = self.squid(f"squid-{name}", stack)
            elif row.key == "g":
                assert self.tools.socat is not None
                measured = start_socat(self.workdir, self.sandbox.port, stack, self.tools.socat)
            watched = measured or self.sandbox
            before = sample(watched.pid)
            sandbox_before = sample(self.sandbox.pid)
            proxy_before = sample(proxy.pid) if proxy else None
            # Only squid (helpers) and socat (a child per connection) have
            # descendants worth watching; polling /proc costs CPU we share.
            watch = TreeWatcher(watched.pid, enabled=row.key in "fg")
            with watch:
                if row.client == "epop":
                    outcome = self.epop_send(
                        f"client-{name}", path, sha256,
                        relay=measured if row.key in "bcd" else None, tls=row.key == "c",
                    )
                elif row.key == "f":
                    outcome = self.curl_send(f"client-{name}", path, sha256, proxy=measured)
                elif row.key == "g":
                    assert measured is not None
                    outcome = self.curl_send(f"client-{name}", path, sha256, port=measured.port)
                else:
                    outcome = self.curl_send(f"client-{name}", path, sha256)
                if row.key == "g":
                    # socat's forked child ends once both sides closed; its
                    # CPU time joins the parent's cutime when it is reaped.
                    deadline = time.monotonic() + 5
                    while descendants(watched.pid) and time.monotonic() < deadline:
                        time.sleep(0.02)
            after = sample(watched.pid)
            sandbox_after = sample(self.sandbox.pid)
            gib = size / GIB
            result: dict[str, Any] = {
                "row": row.key,
                "repeat": repeat,
                "status": "ok",
                "bytes": size,
                **outcome,
                "mb_per_s": size / outcome["xfer_s"] / 1e6,
                "wall_mb_per_s": size / outcome["wall_s"] / 1e6,
            }
            result["client_cpu_s_per_gib"] = outcome["client_cpu_s"] / gib
            sandbox_cpu = sandbox_after.cpu_s - sandbox_before.cpu_s
            result["sandbox"] = {"cpu_s": sandbox_cpu, "cpu_s_per_gib": sandbox_cpu / gib}
            if measured is not None:
                cpu = (after.cpu_s + after.children_cpu_s) - (before.cpu_s + before.children_cpu_s)
                cpu += watch.live_children_cpu_s()
                result["relay"] = {
                    "process": row.measured,
                    "cpu_s": cpu,
                    "cpu_s_per_gib": cpu / gib,
                    "peak_rss_kib": max(after.hwm_kib, watch.peak_hwm_kib),
                    "before": before.as_dict(),
                    "after": after.as_dict(),
                }
            if proxy is not None and proxy_before is not None:
                proxy_after = sample(proxy.pid)
                squid_cpu = proxy_after.cpu_s - proxy_before.cpu_s
                result["squid"] = {"cpu_s": squid_cpu, "cpu_s_per_gib": squid_cpu / gib,
                                   "peak_rss_kib": proxy_after.hwm_kib}
            return result

    def run_transfers(self) -> dict[str, Any]:
        rows = [ROWS[key] for key in self.o.rows]
        runnable: list[Row] = []
        part: dict[str, Any] = {"size": self.o.size, "repeats": self.o.repeats, "rows": {}}
        for row in rows:
            entry: dict[str, Any] = {"title": row.title, "runs": []}
            part["rows"][row.key] = entry
            try:
                reason = self.missing(row.needs)
            except BenchError as error:
                entry.update(status="failed", reason=str(error))
                self.failures.append(f"row {row.key}: {error}")
                continue
            if reason:
                entry.update(status="skipped", reason=reason)
            else:
                runnable.append(row)
        if not runnable:
            return part
        path = self.workdir / "transfer.bin"
        with deleting(path):
            self.log(f"[transfers] writing {human(self.o.size)} of random data")
            sha256 = make_random_file(path, self.o.size)
            for repeat in range(self.o.repeats):
                # Interleave, alternating the order, so drift hits every row alike.
                order = runnable if repeat % 2 == 0 else list(reversed(runnable))
                for row in order:
                    entry = part["rows"][row.key]
                    if entry.get("status") == "failed":
                        continue
                    self.log(f"[transfers] run {repeat + 1}/{self.o.repeats} row {row.key}: {row.title}")
                    try:
                        result = self.transfer(row, path, sha256, repeat)
                    except (BenchError, OSError) as error:
                        entry.update(status="failed", reason=str(error))
                        self.failures.append(f"row {row.key}: {error}")
                        self.log(f"  FAILED: {error}")
                        continue
                    entry["runs"].append(result)
                    relay = result.get("relay")
                    self.log(
                        f"  {result['mb_per_s']:.1f} MB/s, {result['wall_s']:.2f} s wall"
                        + (f", relay {relay['cpu_s_per_gib']:.2f} CPU s/GiB, "
                           f"peak RSS {relay['peak_rss_kib'] / 1024:.1f} MiB" if relay else "")
                    )
        for entry in part["rows"].values():
            runs = entry["runs"]
            if entry.get("status") is None:
                entry["status"] = "ok"
            if runs:
                relays = [run["relay"] for run in runs if "relay" in run]
                entry["summary"] = {
                    "runs": len(runs),
                    "mb_per_s": _median([run["mb_per_s"] for run in runs]),
                    "wall_s": _median([run["wall_s"] for run in runs]),
                    "xfer_s": _median([run["xfer_s"] for run in runs]),
                    "client_maxrss_kib": max(run["client_maxrss_kib"] for run in runs),
                    "relay_cpu_s_per_gib": _median([r["cpu_s_per_gib"] for r in relays]) if relays else None,
                    "client_cpu_s_per_gib": _median([run["client_cpu_s_per_gib"] for run in runs]),
                    "sandbox_cpu_s_per_gib": _median([run["sandbox"]["cpu_s_per_gib"] for run in runs]),
                    "squid_cpu_s_per_gib": _median([run["squid"]["cpu_s_per_gib"] for run in runs if "squid" in run])
                    if any("squid" in run for run in runs) else None,
                    "relay_peak_rss_kib": max(r["peak_rss_kib"] for r in relays) if relays else None,
                }
        # Ratios from runs measured side by side: per repeat, then the median.
        ratios: dict[str, Any] = {}
        for name, top, bottom in (("b/a", "b", "a"), ("c/b", "c", "b"), ("b/f", "b", "f")):
            first = {r["repeat"]: r["mb_per_s"] for r in part["rows"].get(top, {}).get("runs", [])}
            second = {r["repeat"]: r["mb_per_s"] for r in part["rows"].get(bottom, {}).get("runs", [])}
            pairs = [first[k] / second[k] for k in sorted(first) if k in second]
            ratios[name] = {"median": _median(pairs), "per_repeat": pairs}
        part["ratios"] = ratios
        return part

    # -- 2. memory -------------------------------------------------------------
    def run_memory(self) -> dict[str, Any]:
        part: dict[str, Any] = {"runs": []}
        for label, size in (("small", self.o.memory_small), ("large", self.o.memory_large)):
            path = self.workdir / f"memory-{label}.bin"
            self.log(f"[memory] fresh relay, relaying {human(size)}")
            try:
                with deleting(path), contextlib.ExitStack() as stack:
                    sha256 = make_random_file(path, size)
                    stack.callback(self.clear)
                    relay = self.relay(f"relay-memory-{label}", stack)
                    before = sample(relay.pid)
                    outcome = self.epop_send(f"client-memory-{label}", path, sha256, relay=relay)
                    after = sample(relay.pid)
            except (BenchError, OSError) as error:
                part["runs"].append({"label": label, "bytes": size, "status": "failed", "reason": str(error)})
                self.failures.append(f"memory {human(size)}: {error}")
                self.log(f"  FAILED: {error}")
                continue
            run = {
                "label": label, "bytes": size, "status": "ok", **outcome,
                "mb_per_s": size / outcome["xfer_s"] / 1e6,
                "rss_before_kib": before.rss_kib,
                "peak_rss_kib": after.hwm_kib,
                "rss_after_kib": after.rss_kib,
                "rss_anon_after_kib": after.rss_anon_kib,
                "rss_file_after_kib": after.rss_file_kib,
                "cpu_s": after.cpu_s - before.cpu_s,
            }
            part["runs"].append(run)
            self.log(f"  peak RSS {after.hwm_kib / 1024:.1f} MiB (started at {before.rss_kib / 1024:.1f} MiB)")
        return part

    # -- 3. rush ---------------------------------------------------------------
    def run_rush(self) -> dict[str, Any]:
        size, clients = self.o.client_size, self.o.clients
        path = self.workdir / "rush.bin"
        self.log(f"[rush] {clients} concurrent clients x {human(size)} through a fresh relay")
        try:
            with deleting(path), contextlib.ExitStack() as stack:
                sha256 = make_random_file(path, size)
                stack.callback(self.clear)
                relay = self.relay("relay-rush", stack)
                before = {**sample(relay.pid).as_dict(), "fd_kinds": fd_kinds(relay.pid)}
                run, report = self.drive(
                    "rush", "--relay", f"127.0.0.1:{relay.port}", "--file", str(path),
                    "--sha256", sha256, "--clients", str(clients),
                )
                settle = time.monotonic() + 5
                while time.monotonic() < settle and sample(relay.pid).fds > before["fds"]:
                    time.sleep(0.1)
                after = {**sample(relay.pid).as_dict(), "fd_kinds": fd_kinds(relay.pid)}
                in_flight = uploads_in_flight_peak(Path(relay.extra["journal"]))
        except (BenchError, OSError, ValueError) as error:
            self.failures.append(f"rush: {error}")
            self.log(f"  FAILED: {error}")
            return {"status": "failed", "reason": str(error), "clients": clients, "bytes": size}
        ok = [r for r in report["results"] if r.get("ok")]
        times = [r["seconds"] for r in ok]
        errors: dict[str, int] = {}
        for r in report["results"]:
            if not r.get("ok"):
                errors[r.get("error", "?")] = errors.get(r.get("error", "?"), 0) + 1
        part = {
            "status": "ok",
            "clients": clients,
            "bytes": size,
            "verified": len(ok),
            "errors": errors,
            "aggregate_mb_per_s": len(ok) * size / max(times) / 1e6 if times else 0.0,
            "p50_s": percentile(times, 50) if times else None,
            "p99_s": percentile(times, 99) if times else None,
            "min_s": min(times) if times else None,
            "max_s": max(times) if times else None,
            "relay_peak_rss_kib": after["hwm_kib"],
            # The fresh relay's RSS before the first client connects.
            "relay_idle_rss_kib": before["rss_kib"],
            "uploads_in_flight_peak": in_flight,
            "rss_per_upload_kib": (
                (after["hwm_kib"] - before["rss_kib"]) / in_flight if in_flight else None
            ),
            "before": before,
            "after": after,
            "driver_maxrss_kib": run.maxrss_kib,
            "timed_out": report["timed_out"],
        }
        if errors:
            self.failures.append(f"rush: {len(ok)}/{clients} verified: {errors}")
        self.log(f"  {len(ok)}/{clients} verified, {part['aggregate_mb_per_s']:.1f} MB/s aggregate, "
                 f"relay RSS {before['rss_kib'] / 1024:.1f} MiB idle, {after['hwm_kib'] / 1024:.1f} MiB peak "
                 f"with {in_flight} uploads in flight")
        return part

    # -- 4. churn --------------------------------------------------------------
    def run_churn(self) -> dict[str, Any]:
        ops = self.o.churn_ops
        self.log(f"[churn] {ops} sequential test operations through a fresh relay")
        try:
            with contextlib.ExitStack() as stack:
                # Thousands of checks from one address: lift the relay's check allowance.
                relay = self.relay(
                    "relay-churn", stack,
                    extra_args=("--checks-per-connection", "0", "--checks-per-client", "0"),
                )
                _, report = self.drive(
                    "churn", "--relay", f"127.0.0.1:{relay.port}", "--relay-pid", str(relay.pid),
                    "--ops", str(ops), "--warmup", str(self.o.churn_warmup),
                )
        except (BenchError, OSError, ValueError) as error:
            self.failures.append(f"churn: {error}")
            self.log(f"  FAILED: {error}")
            return {"status": "failed", "reason": str(error), "ops": ops}
        report["status"] = "ok"
        report["fd_growth"] = report["after"]["fds"] - report["before"]["fds"]
        report["rss_growth_kib"] = report["after"]["rss_kib"] - report["before"]["rss_kib"]
        if report["failures"] or report["ops_done"] < ops:
            self.failures.append(
                f"churn: {report['ops_done']}/{ops} done, {report['failures']} failed: {report['first_error']}"
            )
        self.log(f"  {report['ops_done']} ops, {report['ops_per_s']:.0f} ops/s, "
                 f"fds {report['before']['fds']} -> {report['after']['fds']}, "
                 f"RSS {report['before']['rss_kib'] / 1024:.1f} -> {report['after']['rss_kib'] / 1024:.1f} MiB")
        return report


# ---------------------------------------------------------------------------
# Targets and the table
# ---------------------------------------------------------------------------


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: what was measured, and PASS, MISS or n/a (not measured)."""
    targets: list[dict[str, Any]] = []

    def add(name: str, measured: str, ok: bool | None) -> None:
        targets.append({"target": name, "measured": measured, "result": _mark(ok)})

    transfers = results.get("transfers")
    if transfers:
        for name, limit, label in (("b/a", 0.85, "b/a >= 0.85"), ("c/b", 0.75, "c/b >= 0.75"),
                                   ("b/f", 1.0, "b >= f (b/f >= 1)")):
            value = transfers["ratios"][name]["median"]
            rounds = transfers["ratios"][name]["per_repeat"]
            measured = "-" if value is None else f"{value:.3f}"
            if len(rounds) > 1:
                # The spread says how far one round's noise can move the verdict.
                measured += f" (rounds {min(rounds):.2f} to {max(rounds):.2f})"
            add(label, measured, None if value is None else value >= limit)
    memory = results.get("memory")
    if memory:
        runs = {run["label"]: run for run in memory["runs"] if run.get("status") == "ok"}
        large, small = runs.get("large"), runs.get("small")
        if large:
            peak = large["peak_rss_kib"] / 1024
            add(f"relay peak RSS relaying {human(large['bytes'])} <= 64 MiB", f"{peak:.1f} MiB", peak <= 64)
        else:
            add("relay peak RSS relaying the large file <= 64 MiB", "-", None)
        if large and small:
            growth = (large["peak_rss_kib"] - small["peak_rss_kib"]) / 1024
            add(f"peak RSS {human(large['bytes'])} - {human(small['bytes'])} <= 8 MiB",
                f"{growth:+.1f} MiB", growth <= 8)
        else:
            add("peak RSS large - small <= 8 MiB", "-", None)
    rush = results.get("rush")
    if rush:
        if rush.get("status") == "ok":
            add(f"rush: {rush['clients']}/{rush['clients']} verified",
                f"{rush['verified']}/{rush['clients']}", rush["verified"] == rush["clients"])
            if rush["p50_s"]:
                ratio = rush["p99_s"] / rush["p50_s"]
                add("rush: p99 <= 3 x p50", f"{ratio:.2f} x", ratio <= 3)
            else:
                add("rush: p99 <= 3 x p50", "-", None)
            idle, peak = rush.get("relay_idle_rss_kib"), rush.get("relay_peak_rss_kib")
            if idle and peak:
                growth = (peak - idle) / 1024
                measured = f"{peak / 1024:.1f} MiB = idle {idle / 1024:.1f} {growth:+.1f} MiB"
                if rush.get("rss_per_upload_kib") is not None:
                    measured += (f" ({rush['rss_per_upload_kib']:.0f} KiB per upload,"
                                 f" {rush['uploads_in_flight_peak']} in flight)")
                add(f"rush: relay peak RSS <= idle + {RUSH_MEMORY_MIB} MiB", measured,
                    growth <= RUSH_MEMORY_MIB)
            else:
                add(f"rush: relay peak RSS <= idle + {RUSH_MEMORY_MIB} MiB", "-", None)
        else:
            add("rush: all verified", "failed", False)
    churn = results.get("churn")
    if churn:
        if churn.get("status") == "ok":
            add("churn: no descriptor leaked", f"{churn['fd_growth']:+d} fds", churn["fd_growth"] <= 0)
            growth = churn["rss_growth_kib"] / 1024
            add("churn: RSS grows <= 5 MiB", f"{growth:+.1f} MiB", growth <= 5)
            add("churn: every operation succeeded",
                f"{churn['ops_done'] - churn['failures']}/{churn['ops_requested']}",
                churn["failures"] == 0 and churn["ops_done"] == churn["ops_requested"])
        else:
            add("churn", "failed", False)
    return targets


def _cell(text: str, limit: int = 160) -> str:
    """Text for one Markdown table cell: one line, no pipes, not too long."""
    flat = " ".join(str(text).split()).replace("|", "/")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(results: dict[str, Any]) -> str:
    """The results as Markdown tables (readable in a terminal too)."""
    out: list[str] = []
    m = results["machine"]
    out.append(
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, Linux {m['kernel']}; "
        f"Python {m['python']}, Twisted {m['twisted']}, {m['openssl_twisted']} (Twisted/pyOpenSSL), "
        f"{m['openssl_python']} (Python ssl, curl)."
    )
    out.append(f"Run: {results['started']} ({results['preset']} preset, {results['duration_s']:.0f} s).")
    transfers = results.get("transfers")
    if transfers:
        out.append("")
        out.append(
            f"1. One transfer of {human(transfers['size'])}, median of {transfers['repeats']} "
            "interleaved runs (MB/s = 10^6 bytes/s of file over the transfer time):"
        )
        out.append("")
        out.append("| row | path | MB/s | wall s | relay CPU s/GiB | relay peak RSS MiB | verified |")
        out.append("|---|---|---:|---:|---:|---:|---|")
        for key, entry in transfers["rows"].items():
            summary = entry.get("summary")
            if entry.get("status") == "skipped":
                out.append(f"| {key} | {entry['title']} | skipped: {_cell(entry['reason'])} | | | | |")
                continue
            if not summary:
                out.append(f"| {key} | {entry['title']} | FAILED | | | | {_cell(entry.get('reason', ''))} |")
                continue
            verified = f"{summary['runs']}/{transfers['repeats']}"
            if entry.get("status") == "failed":
                verified += " FAILED"
            rss = summary["relay_peak_rss_kib"]
            out.append(
                f"| {key} | {entry['title']} | {_num(summary['mb_per_s'])} | {_num(summary['wall_s'], 2)} | "
                f"{_num(summary['relay_cpu_s_per_gib'], 2)} | {_num(rss / 1024 if rss else None)} | {verified} |"
            )
        measured = {key: ROWS[key].measured for key in transfers["rows"] if ROWS[key].measured}
        out.append("")
        out.append(
            "The relay columns are the relaying process: "
            + ", ".join(f"{k}: {v}" for k, v in measured.items())
            + ". MB/s is over the transfer time (epop: after its imports; curl: time_total); "
            "wall time is the client process's, start-up included."
        )
        out.append("")
        out.append("CPU seconds per GiB, by process (medians; the client's includes its start-up):")
        out.append("")
        out.append("| row | client | relay | squid | sandbox | total |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for key, entry in transfers["rows"].items():
            summary = entry.get("summary")
            if not summary:
                continue
            parts = [summary["client_cpu_s_per_gib"], summary["relay_cpu_s_per_gib"],
                     summary["squid_cpu_s_per_gib"], summary["sandbox_cpu_s_per_gib"]]
            out.append(
                f"| {key} | " + " | ".join(_num(part, 2) for part in parts)
                + f" | {_num(sum(part for part in parts if part is not None), 2)} |"
            )
    memory = results.get("memory")
    if memory:
        out.append("")
        out.append("2. Relay memory (fresh relay each):")
        out.append("")
        out.append("| relayed | MB/s | RSS at start MiB | peak RSS MiB | RSS after: private + files MiB |")
        out.append("|---:|---:|---:|---:|---|")
        for run in memory["runs"]:
            if run.get("status") != "ok":
                out.append(f"| {human(run['bytes'])} | FAILED: {_cell(run.get('reason', ''))} | | | |")
                continue
            out.append(
                f"| {human(run['bytes'])} | {_num(run['mb_per_s'])} | {run['rss_before_kib'] / 1024:.1f} | "
                f"{run['peak_rss_kib'] / 1024:.1f} | {run['rss_anon_after_kib'] / 1024:.1f} + "
                f"{run['rss_file_after_kib'] / 1024:.1f} |"
            )
    rush = results.get("rush")
    if rush:
        out.append("")
        out.append(f"3. Month-end rush: {rush['clients']} concurrent clients x {human(rush['bytes'])}, one driver process:")
        out.append("")
        if rush.get("status") == "ok":
            out.append("| verified | aggregate MB/s | p50 s | p99 s | max s | relay fds before -> after |")
            out.append("|---|---:|---:|---:|---:|---|")
            out.append(
                f"| {rush['verified']}/{rush['clients']} | {rush['aggregate_mb_per_s']:.1f} | "
                f"{_num(rush['p50_s'], 2)} | {_num(rush['p99_s'], 2)} | {_num(rush['max_s'], 2)} | "
                f"{rush['before']['fds']} -> {rush['after']['fds']} |"
            )
            out.append("")
            out.append("| relay idle RSS MiB | relay peak RSS MiB | peak uploads in flight | (peak - idle) / uploads in flight, KiB |")
            out.append("|---:|---:|---:|---:|")
            per_upload = rush.get("rss_per_upload_kib")
            out.append(
                f"| {rush['relay_idle_rss_kib'] / 1024:.1f} | {rush['relay_peak_rss_kib'] / 1024:.1f} | "
                f"{rush['uploads_in_flight_peak']} | {_num(per_upload, 0)} |"
            )
            if rush["errors"]:
                out.append("")
                out.append("Errors: " + "; ".join(f"{n} x {e}" for e, n in rush["errors"].items()))
        else:
            out.append(f"FAILED: {_cell(rush.get('reason', ''), 1000)}")
    churn = results.get("churn")
    if churn:
        out.append("")
        out.append(f"4. Churn: {churn.get('ops_requested', churn.get('ops'))} sequential test operations through one relay:")
        out.append("")
        if churn.get("status") == "ok":
            out.append("| done | failed | ops/s | relay RSS MiB before -> after | relay fds before -> after |")
            out.append("|---:|---:|---:|---|---|")
            out.append(
                f"| {churn['ops_done']} | {churn['failures']} | {churn['ops_per_s']:.0f} | "
                f"{churn['before']['rss_kib'] / 1024:.1f} -> {churn['after']['rss_kib'] / 1024:.1f} | "
                f"{churn['before']['fds']} -> {churn['after']['fds']} |"
            )
            out.append("")
            out.append(
                f"Before = after {churn['warmup']} warm-up operations (a fresh relay started at "
                f"{churn['at_start']['rss_kib'] / 1024:.1f} MiB RSS, {churn['at_start']['fds']} fds)."
            )
        else:
            out.append(f"FAILED: {_cell(churn.get('reason', ''), 1000)}")
    out.append("")
    out.append("Targets:")
    out.append("")
    out.append("| target | measured | result |")
    out.append("|---|---|---|")
    for target in results["targets"]:
        out.append(f"| {target['target']} | {target['measured']} | {target['result']} |")
    if results["failures"]:
        out.append("")
        out.append("FAILURES:")
        out.extend(f"- {_cell(failure, 2000)}" for failure in results["failures"])
    return "\n".join(out)


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
    parser.add_argument("--rows", default="abcdefg", help="transfer rows to run, e.g. ab (default abcdefg)")
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
