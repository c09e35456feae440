"""
What the benchmark suite runs, and how: the transfer rows, the parts
(transfers, memory, rush, churn), and L{Bench}, which runs them against one
sandbox and checks every receipt's SHA-256.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    GIB,
    ROOT,
    BenchError,
    Server,
    clear_uploads,
    deleting,
    human,
    make_random_file,
    make_relay_certificate,
    run_client,
    start_relay,
    start_socat,
)
from benchmarks.measure import TreeWatcher, descendants, fd_kinds, sample, uploads_in_flight_peak
from benchmarks.tools import Tools, start_squid

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
        Row("h", "curl -> relay (CONNECT) -> sandbox", "curl", ("curl",), "epop relay"),
    )
}

PARTS = ("transfers", "memory", "rush", "churn")

#: The memory part's paths through a fresh relay: e-POP (as in row b) and
#: the HTTP CONNECT tunnel (as in row h), with what each needs.
MEMORY_PATHS: dict[str, tuple[str, ...]] = {"epop": (), "tunnel": ("curl",)}

#: Ratios compared round by round: name, numerator row, denominator row, and
#: the figure of each run compared (throughput, or the relaying process's CPU).
RATIOS: tuple[tuple[str, str, str, str], ...] = (
    ("b/a", "b", "a", "mb_per_s"),
    ("c/b", "c", "b", "mb_per_s"),
    ("b/f", "b", "f", "mb_per_s"),
    ("h/f", "h", "f", "mb_per_s"),
    ("h/f relay CPU", "h", "f", "relay_cpu_s_per_gib"),
)

def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _figure(run: dict[str, Any], figure: str) -> float | None:
    """A run's throughput (C{mb_per_s}) or its relaying process's C{relay_cpu_s_per_gib}."""
    if figure == "relay_cpu_s_per_gib":
        return run["relay"]["cpu_s_per_gib"] if "relay" in run else None
    return float(run[figure])


def round_ratios(rows: dict[str, Any], top: str, bottom: str, figure: str) -> dict[str, Any]:
    """
    C{figure} of row C{top} over row C{bottom}, round by round (runs made
    next to each other), and their median: drift between rounds cancels.
    """
    first = {r["repeat"]: _figure(r, figure) for r in rows.get(top, {}).get("runs", [])}
    second = {r["repeat"]: _figure(r, figure) for r in rows.get(bottom, {}).get("runs", [])}
    pairs: list[float] = []
    for repeat in sorted(first):
        over, under = first[repeat], second.get(repeat)
        if over is not None and under:
            pairs.append(over / under)
    return {"median": _median(pairs), "per_repeat": pairs}


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
            # squid asks for Basic credentials; the relay's CONNECT mode, as
            # started here, does not (no --tunnel-users).
            command[1:1] = ["--proxy", proxy.extra["url"]]
            if "user" in proxy.extra:
                command[3:3] = ["--proxy-user", f"{proxy.extra['user']}:{proxy.extra['password']}"]
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
            if row.key in "bcdh":
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
                elif row.key in "fh":
                    # f: squid's CONNECT, with Basic; h: the relay's CONNECT mode.
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
        part["ratios"] = {
            name: round_ratios(part["rows"], top, bottom, figure) for name, top, bottom, figure in RATIOS
        }
        return part

    # -- 2. memory -------------------------------------------------------------
    def run_memory(self) -> dict[str, Any]:
        """
        A fresh relay per size and path: e-POP (row b's) and the CONNECT
        tunnel (row h's), each relaying the same small then large file.
        """
        part: dict[str, Any] = {"runs": []}
        for label, size in (("small", self.o.memory_small), ("large", self.o.memory_large)):
            path = self.workdir / f"memory-{label}.bin"
            with deleting(path):
                sha256: str | None = None
                for route, needs in MEMORY_PATHS.items():
                    reason = self.missing(needs)
                    if reason:
                        part["runs"].append({"label": label, "path": route, "bytes": size,
                                             "status": "skipped", "reason": reason})
                        continue
                    self.log(f"[memory] fresh relay, relaying {human(size)} ({route})")
                    try:
                        if sha256 is None:
                            sha256 = make_random_file(path, size)
                        run = self.memory_run(label, route, path, sha256)
                    except (BenchError, OSError) as error:
                        part["runs"].append({"label": label, "path": route, "bytes": size,
                                             "status": "failed", "reason": str(error)})
                        self.failures.append(f"memory {human(size)} ({route}): {error}")
                        self.log(f"  FAILED: {error}")
                        continue
                    part["runs"].append(run)
                    self.log(f"  peak RSS {run['peak_rss_kib'] / 1024:.1f} MiB "
                             f"(started at {run['rss_before_kib'] / 1024:.1f} MiB)")
        return part

    def memory_run(self, label: str, route: str, path: Path, sha256: str) -> dict[str, Any]:
        """One file through a fresh relay, by e-POP or by curl through its CONNECT mode."""
        size = path.stat().st_size
        name = f"memory-{label}" if route == "epop" else f"memory-{route}-{label}"
        with contextlib.ExitStack() as stack:
            stack.callback(self.clear)
            relay = self.relay(f"relay-{name}", stack)
            before = sample(relay.pid)
            if route == "epop":
                outcome = self.epop_send(f"client-{name}", path, sha256, relay=relay)
            else:
                outcome = self.curl_send(f"client-{name}", path, sha256, proxy=relay)
            after = sample(relay.pid)
        return {
            "label": label, "path": route, "bytes": size, "status": "ok", **outcome,
            "mb_per_s": size / outcome["xfer_s"] / 1e6,
            "rss_before_kib": before.rss_kib,
            "peak_rss_kib": after.hwm_kib,
            "rss_after_kib": after.rss_kib,
            "rss_anon_after_kib": after.rss_anon_kib,
            "rss_file_after_kib": after.rss_file_kib,
            "cpu_s": after.cpu_s - before.cpu_s,
        }

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
