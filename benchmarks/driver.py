"""
The load driver: ONE process, ONE reactor, many clients of the epop API.

  python -m benchmarks.driver rush --relay 127.0.0.1:PORT --file F --sha256 H \\
      --clients 200 --deadline 600
  python -m benchmarks.driver churn --relay 127.0.0.1:PORT --relay-pid PID \\
      --ops 5000 --warmup 20 --deadline 600

C{rush} starts every L{epop.workstation.client.send_file} at once and checks each
receipt's SHA-256; C{churn} runs L{epop.workstation.client.test_connection} one after the
other and reads the relay's RSS and descriptors (from C{/proc}) before and
after.  Both are bounded in time: at the deadline, whatever has not finished
counts as failed.  The result is one JSON object on standard output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater, react
from twisted.python.failure import Failure

from benchmarks.measure import fd_kinds, sample
from epop.workstation import RelayAddress, Reply, TestReport, send_file, test_connection


def _receipt_check(reply: Reply, sha256: str, size: int) -> str | None:
    """None if the receipt shows the file arrived intact, else what is wrong."""
    if not reply.ok:
        return f"HTTP {reply.status} {reply.reason}: {(reply.body or b'')[:200]!r}"
    try:
        receipt = json.loads(reply.body or b"")
    except ValueError:
        return f"the receipt is not JSON: {(reply.body or b'')[:200]!r}"
    files = [f for f in receipt.get("files", []) if f.get("field") == "theFile"]
    if len(files) != 1:
        return f"the receipt lists {len(files)} theFile parts"
    if files[0].get("sha256") != sha256:
        return f"sha256 mismatch: sent {sha256}, received {files[0].get('sha256')}"
    if files[0].get("size") != size:
        return f"size mismatch: sent {size}, received {files[0].get('size')}"
    return None


def rush(reactor: Any, options: argparse.Namespace) -> Deferred[dict[str, Any]]:
    relay = RelayAddress.parse(options.relay)
    size = os.path.getsize(options.file)
    results: list[dict[str, Any] | None] = [None] * options.clients
    started = time.monotonic()
    everything: Deferred[dict[str, Any]] = Deferred()
    pending = {"count": options.clients}

    def report(timed_out: bool) -> dict[str, Any]:
        ended = time.monotonic()
        outcomes = []
        for index, result in enumerate(results):
            if result is None:
                outcomes.append({"client": index, "ok": False, "error": "not finished by the deadline"})
            else:
                outcomes.append(result)
        return {
            "clients": options.clients,
            "size": size,
            "started": started,
            "elapsed_s": ended - started,
            "timed_out": timed_out,
            "results": outcomes,
        }

    def finish_one() -> None:
        pending["count"] -= 1
        if pending["count"] == 0 and not everything.called:
            deadline.cancel()
            everything.callback(report(False))

    def give_up() -> None:
        if not everything.called:
            everything.callback(report(True))

    deadline = reactor.callLater(options.deadline, give_up)

    for index in range(options.clients):

        def done(reply: Reply, index: int = index) -> None:
            problem = _receipt_check(reply, options.sha256, size)
            results[index] = {
                "client": index,
                "ok": problem is None,
                "seconds": time.monotonic() - started,
                **({"error": problem} if problem else {}),
            }
            finish_one()

        def failed(failure: Failure, index: int = index) -> None:
            results[index] = {
                "client": index,
                "ok": False,
                "seconds": time.monotonic() - started,
                "error": f"{type(failure.value).__name__}: {failure.getErrorMessage()}",
            }
            finish_one()

        d = send_file(
            reactor, options.file, to="/syriusUpload.do", field="theFile",
            relay=relay, timeout=options.connect_timeout,
        )
        d.addCallbacks(done, failed)
    return everything


async def _churn(reactor: Any, options: argparse.Namespace) -> dict[str, Any]:
    relay = RelayAddress.parse(options.relay)
    pid = options.relay_pid
    deadline = time.monotonic() + options.deadline
    start_sample = sample(pid).as_dict()
    failures = 0
    first_error: str | None = None
    done = 0
    before: dict[str, Any] | None = None
    timed_out = False
    measured_from = time.monotonic()
    for index in range(options.warmup + options.ops):
        if index == options.warmup:
            before = {**sample(pid).as_dict(), "fd_kinds": fd_kinds(pid)}
            measured_from = time.monotonic()
        if time.monotonic() >= deadline:
            timed_out = True
            break
        report: TestReport = await test_connection(reactor, relay=relay, timeout=options.connect_timeout)
        if index >= options.warmup:
            done += 1
            if not report.ok:
                failures += 1
                if first_error is None:
                    first_error = report.describe()
    elapsed = time.monotonic() - measured_from
    if before is None:
        before = {**sample(pid).as_dict(), "fd_kinds": fd_kinds(pid)}
    # Connections the relay is still closing: give them a moment (bounded).
    settle_deadline = time.monotonic() + options.settle
    while time.monotonic() < settle_deadline and sample(pid).fds > before["fds"]:
        await deferLater(reactor, 0.1, lambda: None)
    after = {**sample(pid).as_dict(), "fd_kinds": fd_kinds(pid)}
    return {
        "ops_requested": options.ops,
        "warmup": options.warmup,
        "ops_done": done,
        "failures": failures,
        "first_error": first_error,
        "elapsed_s": elapsed,
        "ops_per_s": done / elapsed if elapsed > 0 else 0.0,
        "timed_out": timed_out,
        "at_start": start_sample,
        "before": before,
        "after": after,
    }


def churn(reactor: Any, options: argparse.Namespace) -> Deferred[dict[str, Any]]:
    return ensureDeferred(_churn(reactor, options))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.driver")
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("rush", help="many concurrent send_file through the relay")
    one.add_argument("--relay", required=True)
    one.add_argument("--file", required=True)
    one.add_argument("--sha256", required=True)
    one.add_argument("--clients", type=int, default=200)
    one.add_argument("--deadline", type=float, default=600.0)
    one.add_argument("--connect-timeout", type=float, default=60.0)
    two = commands.add_parser("churn", help="sequential test_connection through the relay")
    two.add_argument("--relay", required=True)
    two.add_argument("--relay-pid", type=int, required=True)
    two.add_argument("--ops", type=int, default=5000)
    two.add_argument("--warmup", type=int, default=20)
    two.add_argument("--deadline", type=float, default=600.0)
    two.add_argument("--settle", type=float, default=5.0)
    two.add_argument("--connect-timeout", type=float, default=10.0)
    options = parser.parse_args(argv)
    command = rush if options.command == "rush" else churn

    def start(reactor: Any) -> Deferred[None]:
        def write(result: dict[str, Any]) -> None:
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()

        return command(reactor, options).addCallback(write)

    react(start)


if __name__ == "__main__":
    main()
