"""
The benchmark's results for people: each target met or missed
(L{evaluate}), and the Markdown tables the suite prints (L{render}).
"""

from __future__ import annotations

from typing import Any

from benchmarks.harness import human
from benchmarks.suite import ROWS

#: What the relay's peak RSS may add to its idle RSS during the rush.
RUSH_MEMORY_MIB = 64

#: How the memory table names the paths through the relay.
MEMORY_PATH_TITLES = {"epop": "e-POP (as b)", "tunnel": "CONNECT (as h)"}

#: What relaying the large file may add to the peak RSS of relaying the small one.
MEMORY_GROWTH_MIB = 8

#: Row h (curl through the relay's CONNECT mode) against row f (through squid).
TUNNEL_VS_SQUID = 0.95


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def _ratio(value: float | None, rounds: list[float]) -> str:
    """A median ratio, with the spread of its rounds when there are several."""
    measured = "-" if value is None else f"{value:.3f}"
    if value is not None and len(rounds) > 1:
        # The spread says how far one round's noise can move the verdict.
        measured += f" (rounds {min(rounds):.2f} to {max(rounds):.2f})"
    return measured


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: what was measured, and PASS, MISS or n/a (not measured)."""
    targets: list[dict[str, Any]] = []

    def add(name: str, measured: str, ok: bool | None) -> None:
        targets.append({"target": name, "measured": measured, "result": _mark(ok)})

    transfers = results.get("transfers")
    if transfers:
        ratios = transfers["ratios"]
        for name, limit, label in (("b/a", 0.85, "b/a >= 0.85"), ("c/b", 0.75, "c/b >= 0.75"),
                                   ("b/f", 1.0, "b >= f (b/f >= 1)"),
                                   ("h/f", TUNNEL_VS_SQUID, f"h >= {TUNNEL_VS_SQUID} x f (h/f >= {TUNNEL_VS_SQUID})")):
            value = ratios.get(name, {}).get("median")
            add(label, _ratio(value, ratios.get(name, {}).get("per_repeat", [])),
                None if value is None else value >= limit)
        # The relay's CPU per GiB in h against squid's in f, round by round.
        cpu = ratios.get("h/f relay CPU", {})
        value = cpu.get("median")
        measured = _ratio(value, cpu.get("per_repeat", []))
        if value is not None:
            rows = transfers["rows"]
            h, f = (rows[key]["summary"]["relay_cpu_s_per_gib"] for key in "hf")
            measured = f"h {h:.2f}, f {f:.2f} s/GiB: h/f {measured}"
        add("relay CPU per GiB: h (relay) <= f (squid)", measured, None if value is None else value <= 1)
    memory = results.get("memory")
    if memory:
        for route, label in (("epop", ""), ("tunnel", "tunnel (h): ")):
            runs = {
                run["label"]: run
                for run in memory["runs"]
                if run.get("status") == "ok" and run.get("path", "epop") == route
            }
            large, small = runs.get("large"), runs.get("small")
            if route == "epop":
                if large:
                    peak = large["peak_rss_kib"] / 1024
                    add(f"relay peak RSS relaying {human(large['bytes'])} <= 64 MiB", f"{peak:.1f} MiB", peak <= 64)
                else:
                    add("relay peak RSS relaying the large file <= 64 MiB", "-", None)
            if large and small:
                growth = (large["peak_rss_kib"] - small["peak_rss_kib"]) / 1024
                measured = f"{growth:+.1f} MiB"
                if route == "tunnel":
                    measured += f" (peak {large['peak_rss_kib'] / 1024:.1f} MiB)"
                add(f"{label}peak RSS {human(large['bytes'])} - {human(small['bytes'])} <= {MEMORY_GROWTH_MIB} MiB",
                    measured, growth <= MEMORY_GROWTH_MIB)
            else:
                add(f"{label}peak RSS large - small <= {MEMORY_GROWTH_MIB} MiB", "-", None)
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
        out.append("| path | relayed | MB/s | RSS at start MiB | peak RSS MiB | RSS after: private + files MiB |")
        out.append("|---|---:|---:|---:|---:|---|")
        for run in memory["runs"]:
            route = MEMORY_PATH_TITLES.get(run.get("path", "epop"), run.get("path", "?"))
            if run.get("status") != "ok":
                status = "skipped" if run.get("status") == "skipped" else "FAILED"
                out.append(f"| {route} | {human(run['bytes'])} | {status}: {_cell(run.get('reason', ''))} | | | |")
                continue
            out.append(
                f"| {route} | {human(run['bytes'])} | {_num(run['mb_per_s'])} | {run['rss_before_kib'] / 1024:.1f} | "
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
