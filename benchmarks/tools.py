"""
The outside programs the benchmark's rows need (curl, socat, squid), found
or said missing, and the squid the proxy rows go through.  Squid's folder
is prepared the way the tests prepare theirs (L{tests.programs}).
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import BenchError, Server, free_port, listening, spawn, wait_until
from tests.programs import (
    SquidUnavailable,
    find_squid_programs,
    prepare_squid,
    squid_user,
    unsearchable_ancestors,
    write_password_file,
)

__all__ = ["Tools", "start_squid"]


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
        server = spawn(
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
