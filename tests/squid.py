"""
A real squid proxy with HTTP Basic authentication, for tests.

L{start_squid} writes a throw-away configuration in the test's temporary
folder, starts C{squid -N} (foreground) on a free C{127.0.0.1} port and
registers L{Squid.stop} as a cleanup.  The system C{squid.conf} is not used:
the configuration is passed with C{-f} and names every file squid writes.

Squid may only C{CONNECT} to C{127.0.0.1} on C{allow_ports}; C{forbid_ports}
are denied explicitly (403) and every request needs credentials (407
without them).  The access log is written unbuffered, one line per
transaction, when the transaction ends (for C{CONNECT}: when the tunnel
closes)::

    1764100000.123  5 127.0.0.1 TCP_TUNNEL/200 39 CONNECT 127.0.0.1:4443 epop-user HIER_DIRECT/127.0.0.1 -

Setup and stop are blocking: a start takes about 0.05 s, a graceful stop
about 2 s (squid waits C{shutdown_lifetime} + 1 second, whatever the
setting).

Environment:
  - C{EPOP_REQUIRE_SQUID=1}: a missing squid fails the test instead of
    skipping it (CI sets it).
  - C{EPOP_SQUID_BINARY=PATH}: use this squid binary instead of looking one
    up (a missing path makes squid unavailable: handy to check skipping).
"""

from __future__ import annotations

import atexit
import base64
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.programs import (
    SQUID_BINARY_VARIABLE,
    SquidUnavailable,
    find_squid_programs,
    prepare_squid,
    squid_user,
    unsearchable_ancestors,
    write_password_file,
)
from tests.support import free_port

__all__ = [
    "Squid",
    "SquidUnavailable",
    "proxy_connect",
    "start_squid",
]

REQUIRE_VARIABLE = "EPOP_REQUIRE_SQUID"
BINARY_VARIABLE = SQUID_BINARY_VARIABLE

_READY_TIMEOUT = 10.0
_READY_INTERVAL = 0.05
_STOP_TIMEOUT = 10.0
_KILL_TIMEOUT = 5.0
_HELPER_TIMEOUT = 2.0
_START_ATTEMPTS = 3
_TAIL_CHARS = 3000

# Squids still running, stopped at interpreter exit if a cleanup never ran.
_running: set[Squid] = set()


@dataclass(eq=False)
class Squid:
    """A running squid started by L{start_squid}."""

    host: str
    port: int
    user: str
    password: str
    access_log: FilePath
    url: str
    directory: FilePath = field(repr=False)
    process: subprocess.Popen[bytes] = field(repr=False)

    def access_lines(self) -> list[str]:
        """The lines of the access log so far (written unbuffered)."""
        try:
            content = self.access_log.getContent()
        except FileNotFoundError:
            return []
        return content.decode("utf-8", "replace").splitlines()

    def log_tail(self) -> str:
        """The end of squid's cache log and of its stdout/stderr."""
        return _log_tail(self.directory)

    def stop(self) -> None:
        """
        Stop squid: SIGTERM, wait (bounded), then SIGKILL if it is still
        running.  Idempotent.
        """
        _running.discard(self)
        _terminate(self.process)
        _reap_helpers(self.directory)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(_KILL_TIMEOUT)


def _pids_mentioning(directory: FilePath) -> list[int]:
    """
    Live processes whose command line names C{directory}: squid's helpers
    (their arguments name the password file in it).  Linux only.
    """
    needle = directory.path.encode()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read()
        except OSError:
            continue
        if needle in command:
            found.append(int(entry))
    return found


def _reap_helpers(directory: FilePath) -> None:
    """
    Wait (bounded) for squid's helpers to exit after squid (they stop at
    end of input), and kill any still running.
    """
    deadline = time.monotonic() + _HELPER_TIMEOUT
    while (leftovers := _pids_mentioning(directory)) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@atexit.register
def _stop_leftovers() -> None:
    for squid in list(_running):
        squid.stop()


def _unavailable(testcase: SynchronousTestCase, reason: str) -> Exception:
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        return testcase.failureException(
            f"squid is required ({REQUIRE_VARIABLE}=1) but {reason}: install squid"
        )
    return SkipTest(
        f"squid not installed ({reason}): apt-get install squid "
        "(tests that need a real proxy are skipped)"
    )


def _check_ports(name: str, ports: Sequence[int]) -> list[int]:
    checked = [int(port) for port in ports]
    for port in checked:
        if not 0 < port < 65536:
            raise ValueError(f"{name}: {port} is not a TCP port")
    return checked


def _make_reachable(directory: FilePath) -> None:
    """
    Let squid's unprivileged user reach C{directory}: every ancestor needs
    search permission for others.  Ancestors inside the test run's folder
    (trial's scratch tree) are fixed, others are reported.
    """
    scratch = FilePath(os.getcwd())
    for ancestor in map(FilePath, unsearchable_ancestors(directory.path)):
        if ancestor == scratch or ancestor.path.startswith(scratch.path + os.sep):
            os.chmod(ancestor.path, os.stat(ancestor.path).st_mode | 0o001)
        else:
            raise SquidUnavailable(
                f"{ancestor.path} is not searchable by others: squid's "
                f"unprivileged user cannot reach {directory.path}"
            )


def _read_tail(path: FilePath) -> str:
    try:
        content = path.getContent().decode("utf-8", "replace")
    except OSError:
        return "(missing)"
    return content[-_TAIL_CHARS:] or "(empty)"


def _log_tail(directory: FilePath) -> str:
    return (
        f"--- {directory.child('cache.log').path}:\n"
        f"{_read_tail(directory.child('cache.log'))}\n"
        f"--- {directory.child('squid.out').path}:\n"
        f"{_read_tail(directory.child('squid.out'))}"
    )


def _accepting(directory: FilePath, port: int) -> bool:
    """Whether squid's cache log says it listens on C{port}."""
    try:
        content = directory.child("cache.log").getContent()
    except OSError:
        return False
    return b"Accepting HTTP Socket connections at" in content and (
        f"local=127.0.0.1:{port} ".encode() in content
    )


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _wait_ready(
    process: subprocess.Popen[bytes], directory: FilePath, port: int
) -> str | None:
    """
    Wait (bounded) until squid accepts connections.  Returns None when it
    does, else why not.
    """
    deadline = time.monotonic() + _READY_TIMEOUT
    while True:
        if process.poll() is not None:
            return f"squid exited early with status {process.returncode}"
        if _accepting(directory, port) and _listening(port):
            return None
        if time.monotonic() >= deadline:
            return (
                f"squid did not listen on 127.0.0.1:{port} within {_READY_TIMEOUT:g} s"
            )
        time.sleep(_READY_INTERVAL)


def start_squid(
    testcase: SynchronousTestCase,
    *,
    allow_ports: Sequence[int],
    forbid_ports: Sequence[int] = (),
) -> Squid:
    """
    Start a squid for C{testcase} and stop it in a cleanup.

    Only C{CONNECT 127.0.0.1:PORT} with PORT in C{allow_ports} and valid
    credentials (L{Squid.user}, L{Squid.password}) is tunnelled; PORT in
    C{forbid_ports} gets 403, as does anything else authenticated; without
    (valid) credentials, 407 with C{Proxy-Authenticate: Basic
    realm="epop-test"}.

    Skips the test (L{SkipTest}) if squid is not installed, or fails it if
    C{EPOP_REQUIRE_SQUID=1}.  Blocking: call it from C{setUp} or a test.
    """
    allowed = _check_ports("allow_ports", allow_ports)
    forbidden = _check_ports("forbid_ports", forbid_ports)
    try:
        squid_binary, helper, hasher = find_squid_programs()
        unprivileged = squid_user()
    except SquidUnavailable as error:
        raise _unavailable(testcase, str(error)) from None

    directory = FilePath(testcase.mktemp())
    directory.makedirs()
    directory.chmod(0o755)
    user = "epop-user"
    password = secrets.token_hex(12)
    password_file = directory.child("passwd")
    write_password_file(password_file.path, hasher, user, password)
    if unprivileged is not None:
        _make_reachable(directory)

    failures: list[str] = []
    for attempt in range(1, _START_ATTEMPTS + 1):
        port = free_port()
        config = prepare_squid(
            directory.path,
            name="epop-test",
            port=port,
            helper=helper,
            password_file=password_file.path,
            user=unprivileged,
            allow_ports=allowed,
            forbid_ports=forbidden,
        )
        with open(directory.child("squid.out").path, "wb") as output:
            process = subprocess.Popen(
                [squid_binary, "-N", "-d", "1", "-f", config],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=directory.path,
                close_fds=True,
            )
        squid = Squid(
            host="127.0.0.1",
            port=port,
            user=user,
            password=password,
            access_log=directory.child("access.log"),
            url=f"http://127.0.0.1:{port}",
            directory=directory,
            process=process,
        )
        _running.add(squid)
        problem = _wait_ready(process, directory, port)
        if problem is None:
            testcase.addCleanup(squid.stop)
            return squid
        squid.stop()
        tail = _log_tail(directory)
        failures.append(f"attempt {attempt} (port {port}): {problem}\n{tail}")
        if "Address already in use" not in tail:
            break
    raise testcase.failureException(
        f"could not start {squid_binary} -f {directory.child('squid.conf').path}:\n"
        + "\n".join(failures)
    )


def proxy_connect(
    squid: Squid,
    host: str,
    port: int,
    user: str | None = None,
    password: str | None = None,
    timeout: float = 5,
) -> tuple[int, bytes]:
    """
    Send C{CONNECT host:port} to C{squid} (blocking), with Basic
    credentials if C{user} is given, and return the status code and the
    raw response head (status line and headers).  Closes the connection.
    """
    authority = f"{host}:{port}"
    request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if user is not None:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
        request += f"Proxy-Authorization: Basic {token}\r\n"
    request += "\r\n"
    with socket.create_connection(
        (squid.host, squid.port), timeout=timeout
    ) as connection:
        connection.sendall(request.encode("ascii"))
        received = b""
        while b"\r\n\r\n" not in received:
            if len(received) > 65536:
                raise ValueError(f"response head too long: {received[:200]!r}")
            data = connection.recv(4096)
            if not data:
                break
            received += data
    head = received.split(b"\r\n\r\n", 1)[0]
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {received[:200]!r}")
    return int(parts[1]), head
