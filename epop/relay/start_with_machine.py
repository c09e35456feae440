"""
"Start with the machine" for a relay that systemd runs (C{contrib/epop.service}):
the original product's "Exécuter e-POPServer avec windows" box, here whether
the relay's unit is enabled.

The relay asks C{systemctl is-enabled}, and tries C{systemctl enable} or
C{disable} when the console's box is ticked or unticked.  That works only
as root or where polkit allows it; the relay usually runs as its own
unprivileged user, so when it cannot, the answer says why (systemctl's own
line) and gives the command for an administrator to type.

What counts as enabled, from the word C{systemctl is-enabled} prints:
C{enabled}, C{enabled-runtime} and C{alias} start with the machine
(C{enabled} true); C{disabled}, C{masked}, C{masked-runtime}, C{linked} and
C{linked-runtime} do not, and C{systemctl enable} (after C{unmask} for a
masked unit) would change that (C{enabled} false); C{static}, C{indirect},
C{generated}, C{transient}, C{bad} and C{not-found} are units the box
cannot change, started (or not) by something else: C{enabled} is null.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from epop.messages import Text, log_format

__all__ = ["DEFAULT_UNIT", "TIMEOUT", "set_enabled", "unit_name", "unit_state"]

DEFAULT_UNIT = "epop.service"
#: How long systemctl may take to answer, in seconds.
TIMEOUT = 5.0
#: Where systemd, when it is the init system, says so (sd_booted(3)).
SYSTEMD_ROOT = "/run/systemd/system"

_ENABLED = frozenset({"enabled", "enabled-runtime", "alias"})
_DISABLED = frozenset({"disabled", "masked", "masked-runtime", "linked", "linked-runtime"})
#: What systemctl may print, and no more, so its output stays small.
_MAX_OUTPUT = 1 << 16

log = Logger()


def unit_name(cgroup: str = "/proc/self/cgroup") -> str:
    """
    The systemd unit this process runs in (C{epop.service}, or the name an
    administrator gave it), from its control group; L{DEFAULT_UNIT} when
    it is not a system service (a terminal, a container, no systemd).
    """
    try:
        with open(cgroup, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return DEFAULT_UNIT
    for line in lines:
        # "0::/system.slice/epop.service" (v2), "1:name=systemd:/system.slice/..." (v1)
        hierarchy, _, path = line.partition(":")[2].partition(":")
        if hierarchy not in ("", "name=systemd") or not path.startswith("/system.slice/"):
            continue
        services = [part for part in path.split("/") if part.endswith(".service")]
        if services:
            return services[-1]
    return DEFAULT_UNIT


def _command(unit: str, enable: bool) -> str:
    return f"sudo systemctl {'enable' if enable else 'disable'} {unit}"


def _first_line(data: bytes) -> str:
    for line in data.decode("utf-8", "replace").splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


class _Output(ProcessProtocol):
    """A process's output, its exit code, and a kill when it takes too long."""

    def __init__(self, reactor: IReactorTime, timeout: float) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.timed_out = False
        self.ended: Deferred[int | None] = Deferred()
        self._timer = reactor.callLater(timeout, self._kill)

    def _kill(self) -> None:
        self.timed_out = True
        try:
            self.transport.signalProcess("KILL")  # type: ignore[union-attr]
        except ProcessExitedAlready:
            pass
        self.transport.loseConnection()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.out += data[: _MAX_OUTPUT - len(self.out)]

    def errReceived(self, data: bytes) -> None:
        self.err += data[: _MAX_OUTPUT - len(self.err)]

    def processEnded(self, reason: Failure) -> None:
        if self._timer.active():
            self._timer.cancel()
        self.ended.callback(getattr(reason.value, "exitCode", None))


@inlineCallbacks
def _systemctl(
    reactor: Any, executable: str, arguments: list[str], timeout: float
) -> Any:
    """Run systemctl; -> (_Output, exit code)."""
    protocol = _Output(reactor, timeout)
    environment = {**os.environ, "LC_ALL": "C", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
    reactor.spawnProcess(
        protocol, executable, [executable, "--no-ask-password", *arguments], env=environment
    )
    code = yield protocol.ended
    return protocol, code


def _unavailable(unit: str, enable: bool, reason: Text) -> dict[str, Any]:
    return {
        "available": False,
        "unit": unit,
        "enabled": None,
        "state": "unavailable",
        "command": _command(unit, enable),
        "reason": reason,
    }


def _not_here(reactor: Any, systemctl: str, systemd_root: str) -> tuple[str | None, Text | None]:
    """The systemctl to run, or why there is none to ask."""
    if not IReactorProcess.providedBy(reactor):
        return None, Text("this reactor cannot run systemctl")
    if not os.path.isdir(systemd_root):
        return None, Text("this machine was not started by systemd")
    found = shutil.which(systemctl)
    if found is None:
        return None, Text("systemctl was not found")
    return found, None


def _timed_out(timeout: float) -> Text:
    return Text("systemctl did not answer within {seconds} seconds", seconds=f"{timeout:g}")


@inlineCallbacks
def unit_state(
    reactor: Any,
    unit: str,
    systemctl: str = "systemctl",
    *,
    timeout: float = TIMEOUT,
    systemd_root: str = SYSTEMD_ROOT,
) -> Any:
    """
    Whether C{unit} starts with the machine: the START_WITH_MACHINE answer
    of the console (C{available}, C{unit}, C{enabled}, C{state},
    C{command}, and C{reason} when systemctl could not say).  Never fails.
    """
    executable, why = _not_here(reactor, systemctl, systemd_root)
    if executable is None:
        assert why is not None
        return _unavailable(unit, True, why)
    output, code = yield _systemctl(reactor, executable, ["is-enabled", unit], timeout)
    if output.timed_out:
        return {**_unavailable(unit, True, _timed_out(timeout)), "available": True,
                "state": "unknown"}
    word = _first_line(bytes(output.out))
    complaint = _first_line(bytes(output.err))
    if "not been booted with systemd" in complaint or "Failed to connect to bus" in complaint:
        return _unavailable(unit, True, Text("systemd does not run this machine: {why}",
                                             why=complaint))
    if not word or " " in word:
        # Older systemctl: nothing on standard output for a unit it does not know.
        missing = "No such file" in complaint or "not found" in complaint
        word = "not-found" if missing else "unknown"
    enabled = True if word in _ENABLED else False if word in _DISABLED else None
    found = {
        "available": True,
        "unit": unit,
        "enabled": enabled,
        "state": word,
        "command": _command(unit, not enabled),
        "reason": None,
    }
    if word == "unknown":
        found["reason"] = complaint or Text("systemctl exited with code {code}", code=str(code))
    return found


@inlineCallbacks
def set_enabled(
    reactor: Any,
    unit: str,
    enabled: bool,
    systemctl: str = "systemctl",
    *,
    language: str = "en",
    **options: Any,
) -> Any:
    """
    Enable or disable C{unit}, when this process may (root, or polkit
    allows it).  -> the new state with C{changed} true; or, when it could
    not, C{changed} false, the state as it is, the C{command} an
    administrator can type, and the C{reason} systemctl gave.  Never fails.

    @param language: the language of the line logged for the administrator.
    @param options: C{timeout} and C{systemd_root}, as for L{unit_state}.
    """
    timeout = options.get("timeout", TIMEOUT)
    executable, why = _not_here(reactor, systemctl, options.get("systemd_root", SYSTEMD_ROOT))
    if executable is None:
        assert why is not None
        return {**_unavailable(unit, enabled, why), "changed": False}
    verb = "enable" if enabled else "disable"
    output, code = yield _systemctl(reactor, executable, [verb, unit], timeout)
    state = yield unit_state(reactor, unit, systemctl, **options)
    if not output.timed_out and code == 0:
        if enabled:
            done = Text("Start with the machine: {unit} enabled")
        else:
            done = Text("Start with the machine: {unit} disabled")
        log.info(log_format(done, language), unit=unit, verb=verb)
        return {**state, "changed": True}
    if output.timed_out:
        reason: Text | str = _timed_out(timeout)
    else:
        reason = _first_line(bytes(output.err)) or _first_line(bytes(output.out)) or Text(
            "systemctl exited with code {code}", code=str(code)
        )
    if enabled:
        failed = Text("Start with the machine: could not enable {unit}: {reason}")
    else:
        failed = Text("Start with the machine: could not disable {unit}: {reason}")
    log.info(
        log_format(failed, language),
        verb=verb, unit=unit, reason=reason.render(language) if isinstance(reason, Text) else reason,
    )
    return {**state, "changed": False, "command": _command(unit, enabled), "reason": reason}
