"""
Processes and measurements for the benchmark suite.

Every server (sandbox, relay, squid, socat) is a child process in its own
session, so that stopping it can kill its whole process group, helpers
included.  Every wait is bounded.  Measurements come from C{/proc}: the
relay's C{VmHWM} (peak RSS), C{utime + stime} (CPU), and C{/proc/PID/fd}.

Linux only, like the measurements it takes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

from tests.programs import (
    SquidUnavailable,
    find_squid_programs,
    prepare_squid,
    squid_user,
    unsearchable_ancestors,
    write_password_file,
)
from tests.random_files import write_random_file

__all__ = [
    "GIB",
    "MIB",
    "ROOT",
    "BenchError",
    "ProcSample",
    "Server",
    "Tools",
    "TreeWatcher",
    "clear_uploads",
    "deleting",
    "descendants",
    "fd_kinds",
    "free_port",
    "listening",
    "make_random_file",
    "make_relay_certificate",
    "run_client",
    "sample",
    "start_relay",
    "uploads_in_flight_peak",
    "start_sandbox",
    "start_socat",
    "start_squid",
    "wait_until",
]

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

#: The project root (the folder holding Makefile and benchmarks/).
ROOT = Path(__file__).resolve().parent.parent
#: Where the venv's scripts are: next to the interpreter running us.
BIN = Path(sys.executable).parent

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 5.0


class BenchError(Exception):
    """Something the suite could not do: says what, and where the logs are."""


# ---------------------------------------------------------------------------
# /proc
# ---------------------------------------------------------------------------


@dataclass
class ProcSample:
    """One look at a process in C{/proc}."""

    pid: int
    rss_kib: int
    hwm_kib: int
    #: Of the RSS: private memory, and pages of mapped files (shared libraries).
    rss_anon_kib: int
    rss_file_kib: int
    #: utime + stime of the process itself, in seconds.
    cpu_s: float
    #: cutime + cstime: children it waited for.
    children_cpu_s: float
    fds: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _status_kib(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def sample(pid: int) -> ProcSample:
    """Read C{pid}'s memory, CPU time and descriptor count (raises OSError if gone)."""
    with open(f"/proc/{pid}/status") as handle:
        status = handle.read()
    with open(f"/proc/{pid}/stat") as handle:
        stat = handle.read()
    # The command name (field 2) may hold spaces: split after its ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    return ProcSample(
        pid=pid,
        rss_kib=_status_kib(status, "VmRSS"),
        hwm_kib=_status_kib(status, "VmHWM"),
        rss_anon_kib=_status_kib(status, "RssAnon"),
        rss_file_kib=_status_kib(status, "RssFile"),
        cpu_s=(utime + stime) / _CLOCK_TICKS,
        children_cpu_s=(cutime + cstime) / _CLOCK_TICKS,
        fds=fds,
    )


def uploads_in_flight_peak(journal: Path) -> int:
    """
    The most uploads a relay had in flight at once, from its journal: each
    upload is in flight from its C{object-instantiated} event to its
    C{object-released} one.  The journal lists events in the order they
    happened, so no clock is needed.
    """
    in_flight = peak = 0
    with open(journal, encoding="utf-8") as lines:
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut short by a relay stopped mid-write
            if not isinstance(event, dict) or event.get("kind") != "upload":
                continue
            if event.get("type") == "object-instantiated":
                in_flight += 1
                peak = max(peak, in_flight)
            elif event.get("type") == "object-released":
                in_flight -= 1
    return peak


def fd_kinds(pid: int) -> dict[str, int]:
    """C{pid}'s open descriptors by kind: socket, pipe, file, anon..."""
    kinds: dict[str, int] = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return kinds
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:"):
            kind = "socket"
        elif target.startswith("pipe:"):
            kind = "pipe"
        elif target.startswith("anon_inode:"):
            kind = target[len("anon_inode:") :].strip("[]")
        elif target.startswith("/dev/"):
            kind = "device"
        else:
            kind = "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def _processes() -> Iterator[tuple[int, list[str]]]:
    """
    Every process's pid and the fields of C{/proc/PID/stat} after its
    command name: state, parent, process group...
    """
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        yield int(entry), stat[stat.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """Every live descendant of C{pid} (children, grandchildren...)."""
    parents = {child: int(fields[1]) for child, fields in _processes()}
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found.extend(children)
        frontier.extend(children)
    return found


class TreeWatcher:
    """
    Watch a process and its descendants while a transfer runs: the peak of
    their C{VmHWM} and the CPU time of descendants that are still alive at
    the end (those that ended were reaped by their parent and show in its
    C{cutime}).  For socat, whose forked child does the relaying.
    """

    def __init__(self, pid: int, interval: float = 0.1, enabled: bool = True) -> None:
        self.pid = pid
        self.interval = interval
        self.enabled = enabled
        self.peak_hwm_kib = 0
        self.child_peak_hwm_kib = 0
        self._start_cpu: dict[int, float] = {}
        self._last_cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        if not self.enabled:
            return self
        for pid in descendants(self.pid):
            with contextlib.suppress(OSError):
                self._start_cpu[pid] = sample(pid).cpu_s
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.enabled:
            return
        self._stop.set()
        self._thread.join(5)
        self._look()

    def _look(self) -> None:
        for pid in [self.pid, *descendants(self.pid)]:
            try:
                seen = sample(pid)
            except (OSError, ValueError, IndexError):
                continue
            self.peak_hwm_kib = max(self.peak_hwm_kib, seen.hwm_kib)
            if pid != self.pid:
                self.child_peak_hwm_kib = max(self.child_peak_hwm_kib, seen.hwm_kib)
                self._last_cpu[pid] = seen.cpu_s

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._look()

    def live_children_cpu_s(self) -> float:
        """CPU seconds spent during the watch by descendants still alive."""
        if not self.enabled:
            return 0.0
        alive = set(descendants(self.pid))
        return sum(
            cpu - self._start_cpu.get(pid, 0.0)
            for pid, cpu in self._last_cpu.items()
            if pid in alive
        )


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
    return [pid for pid, fields in _processes() if int(fields[2]) == pgid and fields[0] != "Z"]


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


def _spawn(name: str, command: Sequence[str], log: Path, port: int, **kwargs: Any) -> Server:
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
    server = _spawn(
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
    server = _spawn(
        name,
        [_program("twistd"), "--nodaemon", "--pidfile=", f"--logfile={log}", "epop",
         "--listen", f"tcp:{port}:interface=127.0.0.1",
         "--epmsi", sandbox.extra["url"], "--ca-file", sandbox.extra["ca"],
         "--journal", str(journal), "--no-check", *extra_args],
        folder / "relay.out",
        port,
    )
    server.log = log
    stack.callback(server.stop)
    wait_until(lambda: listening(port), f"relay on port {port}", server=server)
    server.extra["journal"] = str(journal)
    return server


def start_socat(
    workdir: Path, target_port: int, stack: contextlib.ExitStack, socat: str
) -> Server:
    """C{socat TCP-LISTEN:P,fork,reuseaddr TCP:127.0.0.1:TARGET}, bound to loopback."""
    port = free_port()
    server = _spawn(
        "socat",
        [socat, f"TCP-LISTEN:{port},fork,reuseaddr,bind=127.0.0.1", f"TCP:127.0.0.1:{target_port}"],
        workdir / f"socat-{port}.log",
        port,
    )
    stack.callback(server.stop)
    wait_until(lambda: listening(port), f"socat on port {port}", server=server)
    return server


# ---------------------------------------------------------------------------
# Squid
# ---------------------------------------------------------------------------

@dataclass
class Tools:
    """External programs the rows need; C{None} with a reason when missing."""

    curl: str | None
    socat: str | None
    squid: str | None
    squid_helper: str | None
    hasher: list[str] | None
    missing: dict[str, str]

    @classmethod
    def find(cls) -> Tools:
        missing: dict[str, str] = {}
        curl = shutil.which("curl")
        if curl is None:
            missing["curl"] = "curl not installed (apt-get install curl)"
        socat = shutil.which("socat")
        if socat is None:
            missing["socat"] = "socat not installed (apt-get install socat)"
        squid: str | None = None
        helper: str | None = None
        hasher: list[str] | None = None
        try:
            squid, helper, hasher = find_squid_programs()
        except SquidUnavailable as reason:
            missing["squid"] = f"{reason} (apt-get install squid apache2-utils)"
        return cls(curl, socat, squid, helper, hasher, missing)

    def versions(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for name, command in (
            ("curl", [self.curl, "--version"]),
            ("squid", [self.squid, "-v"]),
            ("socat", [self.socat, "-V"]),
        ):
            if command[0] is None:
                continue
            try:
                out = subprocess.run(
                    [str(part) for part in command], capture_output=True, timeout=10, check=False
                ).stdout.decode(errors="replace")
            except (OSError, subprocess.TimeoutExpired):
                continue
            lines = [line for line in out.splitlines() if "version" in line.lower()]
            found[name] = (lines[0] if lines else out.splitlines()[0] if out else "?").strip()
        return found


def start_squid(
    workdir: Path, name: str, target_port: int, tools: Tools, stack: contextlib.ExitStack
) -> Server:
    """
    A real squid with Basic authentication on a free loopback port, that
    tunnels (CONNECT) to 127.0.0.1:C{target_port} only.  Its user and
    password are in C{extra}; the password also in C{extra["password_file"]}.
    """
    if tools.squid is None or tools.squid_helper is None or tools.hasher is None:
        raise BenchError(tools.missing.get("squid", "squid unavailable"))
    directory = workdir / name
    directory.mkdir(parents=True, exist_ok=True)
    user, password = "epop-bench", secrets.token_hex(12)
    password_file = directory / "passwd"
    write_password_file(str(password_file), tools.hasher, user, password)
    # The relay reads the plain password from a file of its own.
    plain = workdir / f"{name}.password"
    plain.write_text(password + "\n")
    plain.chmod(0o600)
    try:
        unprivileged = squid_user()
    except SquidUnavailable as reason:
        raise BenchError(f"running as root and {reason}") from None
    closed = unsearchable_ancestors(str(directory)) if unprivileged is not None else []
    if unprivileged is not None and closed:
        raise BenchError(
            f"{closed[0]} is not searchable by others: squid's user {unprivileged.pw_name} "
            f"cannot reach {directory} (chmod o+x it, or use --workdir elsewhere)"
        )
    last = ""
    for _attempt in range(3):
        port = free_port()
        config = prepare_squid(
            str(directory),
            name="epop-bench",
            port=port,
            helper=tools.squid_helper,
            password_file=str(password_file),
            user=unprivileged,
            allow_ports=[target_port],
        )
        server = _spawn(
            name, [tools.squid, "-N", "-d", "1", "-f", config], directory / "squid.out", port,
            cwd=str(directory),
        )
        stack.callback(server.stop)
        try:
            wait_until(
                functools.partial(listening, port), f"squid on port {port}", server=server, timeout=15
            )
        except BenchError as error:
            server.stop()
            last = str(error)
            if "Address already in use" not in last:
                break
            continue
        server.extra.update(
            user=user, password=password, password_file=str(plain),
            url=f"http://127.0.0.1:{port}", directory=str(directory),
        )
        return server
    raise BenchError(f"could not start squid:\n{last}")


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
