"""
The processes the benchmark suite runs: the servers (sandbox, relay,
socat; squid is in L{benchmarks.tools}), the clients, their files and
certificates.

Every server is a child process in its own session, so that stopping it
can kill its whole process group, helpers included.  Every wait is
bounded.  What is measured of them is in L{benchmarks.measure}.

Linux only, like the measurements.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.measure import processes
from tests.random_files import write_random_file

__all__ = [
    "GIB",
    "MIB",
    "ROOT",
    "BenchError",
    "Server",
    "clear_uploads",
    "deleting",
    "free_port",
    "human",
    "listening",
    "make_random_file",
    "make_relay_certificate",
    "run_client",
    "start_relay",
    "start_sandbox",
    "spawn",
    "start_socat",
    "wait_until",
]

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

#: The project root (the folder holding Makefile and benchmarks/).
ROOT = Path(__file__).resolve().parent.parent
#: Where the venv's scripts are: next to the interpreter running us.
BIN = Path(sys.executable).parent

_READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 5.0


def human(size: float) -> str:
    """A size in bytes for people: C{1 GiB}, C{1.5 MiB}, C{512 B}."""
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if size >= scale:
            value = size / scale
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size:.0f} B"


class BenchError(Exception):
    """Something the suite could not do: says what, and where the logs are."""


# ---------------------------------------------------------------------------
# Ports, waiting
# ---------------------------------------------------------------------------

_given_ports: set[int] = set()


def free_port() -> int:
    """A free TCP port on 127.0.0.1, not handed out before in this run."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in _given_ports:
            _given_ports.add(port)
            return port
    raise BenchError("no free TCP port found on 127.0.0.1")


def listening(port: int) -> bool:
    """
    Whether something listens on 127.0.0.1:C{port} (or any address), read
    from C{/proc/net/tcp}: no probe connection, so nothing shows up in the
    relay's journal or descriptor count.
    """
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    try:
        with open("/proc/net/tcp") as handle:
            lines = handle.readlines()[1:]
    except OSError:
        return False
    for line in lines:
        parts = line.split()
        if len(parts) > 3 and parts[1] in wanted and parts[3] == "0A":
            return True
    return False


def wait_until(
    predicate: Callable[[], bool],
    what: str,
    *,
    timeout: float = _READY_TIMEOUT,
    interval: float = 0.05,
    server: Server | None = None,
) -> None:
    """Poll C{predicate} until true; raise L{BenchError} after C{timeout} s or if C{server} dies."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if server is not None and server.process.poll() is not None:
            raise BenchError(
                f"{what}: {server.name} exited with status {server.process.returncode}\n"
                + server.log_tail()
            )
        if time.monotonic() >= deadline:
            tail = server.log_tail() if server is not None else ""
            raise BenchError(f"{what}: not ready after {timeout:g} s\n{tail}")
        time.sleep(interval)


# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class Server:
    """A server process in its own process group, stopped with L{stop}."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return f"--- {self.log}: (missing)"
        return f"--- {self.log} (end):\n{text[-chars:]}"

    def stop(self) -> None:
        """SIGTERM the process group, wait (bounded), then SIGKILL it.  Idempotent."""
        _stop_group(self.process, _STOP_TIMEOUT)


def _group_members(pgid: int) -> list[int]:
    """
    Live processes in process group C{pgid}.  While any is alive the kernel
    cannot hand the number out again, so signalling the group only ever
    reaches processes we started.
    """
    return [pid for pid, fields in processes() if int(fields[2]) == pgid and fields[0] != "Z"]


def _stop_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    # start_new_session: the group is numbered after our child's pid.
    group = process.pid
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    # Whatever is left in the group (squid's helpers, socat's children).
    if process.poll() is None or _group_members(group):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(_STOP_TIMEOUT)


def spawn(name: str, command: Sequence[str], log: Path, port: int, **kwargs: Any) -> Server:
    with open(log, "ab") as output:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            **kwargs,
        )
    return Server(name, process, log, port)


def _program(name: str) -> str:
    """A console script of the venv running us, else one on PATH."""
    local = BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"{name} not found next to {sys.executable} nor on PATH: run 'make venv'")
    return found


def start_sandbox(directory: Path, log: Path, stack: contextlib.ExitStack) -> Server:
    """C{epop sandbox} on a free port; its CA ends up in C{directory/tls/ca.pem}."""
    port = free_port()
    server = spawn(
        "sandbox",
        [_program("epop"), "sandbox", "--port", str(port), "--interface", "127.0.0.1",
         "--directory", str(directory)],
        log,
        port,
    )
    stack.callback(server.stop)
    ca = directory / "tls" / "ca.pem"
    wait_until(lambda: ca.exists() and ca.stat().st_size > 0, "sandbox CA", server=server)
    wait_until(lambda: listening(port), f"sandbox on port {port}", server=server)
    server.extra.update(url=f"https://127.0.0.1:{port}", ca=str(ca), uploads=str(directory / "uploads"))
    return server


def start_relay(
    workdir: Path,
    name: str,
    sandbox: Server,
    stack: contextlib.ExitStack,
    extra_args: Sequence[str] = (),
) -> Server:
    """A fresh C{twistd -n epop} relay on a free port, forwarding to C{sandbox}."""
    port = free_port()
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    journal = folder / "journal.jsonl"
    log = folder / "relay.log"
    server = spawn(
        name,
        [_program("twistd"), "--nodaemon", "--pidfile=", f"--logfile={log}", "epop",
         "--listen", f"tcp:{port}:interface=127.0.0.1",
         "--epmsi", sandbox.extra["url"], "--ca-file", sandbox.extra["ca"],
         "--journal", str(journal), "--no-check", "--console", "none", *extra_args],
        folder / "relay.out",
        port,
    )
    server.log = log
    stack.callback(server.stop)
    wait_until(lambda: listening(port), f"relay on port {port}", server=server)
    # The same port is an HTTPS proxy too (HTTP CONNECT to e-PMSI only).
    server.extra.update(journal=str(journal), url=f"http://127.0.0.1:{port}")
    return server


def start_socat(
    workdir: Path, target_port: int, stack: contextlib.ExitStack, socat: str
) -> Server:
    """C{socat TCP-LISTEN:P,fork,reuseaddr TCP:127.0.0.1:TARGET}, bound to loopback."""
    port = free_port()
    server = spawn(
        "socat",
        [socat, f"TCP-LISTEN:{port},fork,reuseaddr,bind=127.0.0.1", f"TCP:127.0.0.1:{target_port}"],
        workdir / f"socat-{port}.log",
        port,
    )
    stack.callback(server.stop)
    wait_until(lambda: listening(port), f"socat on port {port}", server=server)
    return server


# ---------------------------------------------------------------------------
# Files, certificates, clients
# ---------------------------------------------------------------------------


def make_random_file(path: Path, size: int) -> str:
    """Write C{size} random bytes to C{path}, new ones at each call; return the SHA-256."""
    return write_random_file(path, size, seed=None, chunk=4 * MIB)


def make_relay_certificate(directory: Path) -> dict[str, str]:
    """
    A CA and a certificate for 127.0.0.1 for the relay's TLS (row c): with
    trustme if installed (the test extra), else with the openssl command.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    try:
        import trustme
    except ImportError:
        has_trustme = False
    else:
        has_trustme = True
    if has_trustme:
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        ca.cert_pem.write_to_path(str(ca_path))
        cert_path.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key_path))
    else:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise BenchError("neither trustme nor openssl is available to make the relay's certificate")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-keyout", str(key_path), "-out", str(cert_path)],
            check=True, capture_output=True, timeout=60,
        )
        shutil.copyfile(cert_path, ca_path)
    key_path.chmod(0o600)
    return {"ca": str(ca_path), "cert": str(cert_path), "key": str(key_path)}


@dataclass
class ClientRun:
    """A client process that ran to its end (or was killed at its deadline)."""

    returncode: int | None
    wall_s: float
    maxrss_kib: int
    #: user + system CPU seconds of the client (from wait4's rusage).
    cpu_s: float
    stdout: bytes
    stderr: bytes
    timed_out: bool


def run_client(
    command: Sequence[str], workdir: Path, name: str, timeout: float, env: dict[str, str] | None = None
) -> ClientRun:
    """
    Run a client to its end in its own process group, bounded by C{timeout}
    (then the group is killed).  Wall time is from spawn to reaping; the
    client's peak RSS comes from C{wait4}'s rusage.
    """
    out_path, err_path = workdir / f"{name}.out", workdir / f"{name}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.monotonic()
        process = subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            start_new_session=True, close_fds=True, env=env, cwd=str(ROOT),
        )
        reaped: list[tuple[int, Any, float]] = []

        def reap() -> None:
            _pid, status, usage = os.wait4(process.pid, 0)
            reaped.append((status, usage, time.monotonic()))

        waiter = threading.Thread(target=reap, daemon=True)
        waiter.start()
        try:
            waiter.join(timeout)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM): the client goes too.
            if not reaped:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                waiter.join(_STOP_TIMEOUT)
            raise
        timed_out = waiter.is_alive()
        if timed_out:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            waiter.join(_STOP_TIMEOUT)
    # Reaped by wait4 above: tell Popen, so it does not try again.
    if reaped:
        status, usage, ended = reaped[0]
        process.returncode = os.waitstatus_to_exitcode(status)
        wall, maxrss = ended - started, int(usage.ru_maxrss)
        cpu = usage.ru_utime + usage.ru_stime
    else:
        process.returncode = None
        wall, maxrss, cpu = time.monotonic() - started, 0, 0.0
    if _group_members(process.pid):  # anything it left behind
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    return ClientRun(
        returncode=None if timed_out else process.returncode,
        wall_s=wall,
        maxrss_kib=maxrss,
        cpu_s=cpu,
        stdout=out_path.read_bytes(),
        stderr=err_path.read_bytes(),
        timed_out=timed_out,
    )


def clear_uploads(uploads: Path) -> None:
    """Delete everything the sandbox stored (complete and partial uploads)."""
    if not uploads.is_dir():
        return
    for child in uploads.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                child.unlink()


@contextlib.contextmanager
def deleting(*paths: Path) -> Iterator[None]:
    """Delete C{paths} on the way out, whatever happens."""
    try:
        yield
    finally:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
