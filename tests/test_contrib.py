"""
C{contrib/epop.service}, the systemd unit: it runs the relay the way the
docs say, with the hardening it claims, and C{systemd-analyze verify}
accepts it (when systemd's tools are installed; the test suite never starts
the unit).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from epop.relay.tap import Options

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "epop.service"
WINDOWS_DOC = ROOT / "docs" / "windows.md"

#: The relay's drain period when --drain-seconds is not given.
DEFAULT_DRAIN_SECONDS = 30.0


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """
    A unit file as {section: {key: [values in order]}}: systemd allows a
    key more than once (C{SystemCallFilter=}), which configparser does not.
    Handles comments and backslash continuations.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            raise ValueError(f"not a unit file line: {raw!r}")
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    """A systemd time span (C{45}, C{45s}, C{1min 30s}) in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


class ParseUnitTests(SynchronousTestCase):
    def test_repeated_keys_and_comments(self) -> None:
        parsed = parse_unit(
            "# comment\n[Service]\nA=1\n; other comment\nA=2\nB=x \\\n  y\nC=\n"
        )
        self.assertEqual(parsed, {"Service": {"A": ["1", "2"], "B": ["x y"], "C": [""]}})

    def test_seconds(self) -> None:
        self.assertEqual(seconds("45"), 45)
        self.assertEqual(seconds("45s"), 45)
        self.assertEqual(seconds("1min 30s"), 90)


class UnitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.unit = parse_unit(UNIT.read_text(encoding="utf-8"))
        self.service = self.unit["Service"]

    def one(self, key: str, section: str = "Service") -> str:
        values = self.unit[section].get(key)
        self.assertIsNotNone(values, f"{key}= missing from [{section}]")
        assert values is not None
        self.assertEqual(len(values), 1, f"{key}= given more than once")
        return values[0]

    def exec_start(self) -> list[str]:
        return shlex.split(self.one("ExecStart"))

    def test_exec_start(self) -> None:
        """twistd in the foreground, no pid file, the epop plugin, its settings file."""
        argv = self.exec_start()
        self.assertEqual(argv[0], "/opt/epop/bin/twistd")
        plugin = argv.index("epop")
        self.assertEqual(argv[1:plugin], ["--nodaemon", "--pidfile="])
        self.assertEqual(argv[plugin + 1 :], ["--config", "/etc/epop/relay.ini"])

    def test_twistd_options(self) -> None:
        """twistd itself reads the options before "epop" as meant."""
        argv = self.exec_start()
        options = ServerOptions()
        options.parseOptions(argv[1 : argv.index("epop")])
        self.assertTrue(options["nodaemon"])
        self.assertEqual(options["pidfile"], "")

    def test_relay_options(self) -> None:
        """The options after "epop" are the relay's."""
        argv = self.exec_start()
        known = Options().longOpt
        for arg in argv[argv.index("epop") + 1 :]:
            if not arg.startswith("--"):
                continue
            name = arg[2:].partition("=")[0]
            if name + "=" not in known and name not in known:
                raise SkipTest(f"twistd epop has no --{name} option yet")

    def test_supervision(self) -> None:
        self.assertEqual(self.one("Restart"), "on-failure")
        self.assertEqual(self.one("ExecReload"), "/bin/kill -HUP $MAINPID")
        self.assertEqual(self.one("KillSignal"), "SIGTERM")
        self.assertEqual(self.one("Type"), "exec")

    def test_stop_timeout_longer_than_drain(self) -> None:
        """systemd must not SIGKILL the relay while it drains uploads."""
        drain = DEFAULT_DRAIN_SECONDS
        defaults = Options()
        if defaults.get("drain-seconds") is not None:
            drain = float(defaults["drain-seconds"])
        self.assertGreater(seconds(self.one("TimeoutStopSec")), drain)

    def test_account_and_folders(self) -> None:
        self.assertEqual(self.one("User"), "epop")
        self.assertEqual(self.one("Group"), "epop")
        self.assertNotIn("DynamicUser", self.service)
        self.assertEqual(self.one("WorkingDirectory"), "/var/lib/epop")
        self.assertEqual(self.one("StateDirectory"), "epop")
        self.assertEqual(self.one("ReadWritePaths").split(), ["/var/lib/epop", "/etc/epop"])
        self.assertEqual(self.one("EnvironmentFile"), "-/etc/epop/environment")

    def test_hardening(self) -> None:
        expected = {
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "NoNewPrivileges": "yes",
            "ProtectKernelTunables": "yes",
            "ProtectKernelModules": "yes",
            "ProtectControlGroups": "yes",
            "RestrictNamespaces": "yes",
            "LockPersonality": "yes",
            "CapabilityBoundingSet": "",
        }
        for key, value in expected.items():
            self.assertEqual(self.one(key), value, key)
        families = self.one("RestrictAddressFamilies").split()
        for family in ("AF_INET", "AF_INET6", "AF_UNIX"):
            self.assertIn(family, families)
        # getifaddrs(), which lists the machine's addresses, uses netlink.
        self.assertIn("AF_NETLINK", families)

    def test_no_memory_deny_write_execute(self) -> None:
        """pyOpenSSL's cffi callbacks need writable executable memory."""
        self.assertNotIn("MemoryDenyWriteExecute", self.service)

    def test_ordering_and_install(self) -> None:
        self.assertEqual(self.one("Wants", "Unit"), "network-online.target")
        self.assertEqual(self.one("After", "Unit"), "network-online.target")
        self.assertEqual(self.one("WantedBy", "Install"), "multi-user.target")

    def test_systemd_analyze_verify(self) -> None:
        """
        systemd's own check, on a copy whose ExecStart names this
        environment's twistd (verify insists that the program exists).
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed: unit not verified by systemd")
        twistd = Path(sys.executable).with_name("twistd")
        if not twistd.exists():
            raise SkipTest(f"no {twistd} to stand for /opt/epop/bin/twistd")
        text = UNIT.read_text(encoding="utf-8").replace("/opt/epop/bin/twistd", str(twistd))
        with tempfile.TemporaryDirectory() as folder:
            copy = Path(folder) / "epop.service"
            copy.write_text(text, encoding="utf-8")
            result = subprocess.run(
                [analyze, "verify", "--man=no", str(copy)],
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
            )
        ours = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if "epop.service" in line
        ]
        self.assertEqual((result.returncode, ours), (0, []), result.stderr)


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll C{predicate} until it holds or C{timeout} seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


class LifecycleTests(SynchronousTestCase):
    """
    What systemd would do with the unit, without systemd: run ExecStart in
    WorkingDirectory, send ExecReload's SIGHUP, then KillSignal, and expect
    the relay to exit cleanly within TimeoutStopSec.  Loopback only.
    """

    def test_start_reload_stop(self) -> None:
        if not hasattr(signal, "SIGHUP"):
            raise SkipTest("no SIGHUP on this platform")
        unit = parse_unit(UNIT.read_text(encoding="utf-8"))["Service"]
        argv = shlex.split(unit["ExecStart"][0])
        if "config=" not in Options().longOpt:
            raise SkipTest("twistd epop has no --config option yet")
        twistd = Path(sys.executable).with_name("twistd")
        if not twistd.exists():
            raise SkipTest(f"no {twistd} to stand for {argv[0]}")
        folder = Path(self.mktemp()).resolve()
        state = folder / "state"  # stands for WorkingDirectory=/var/lib/epop
        state.mkdir(parents=True)
        config = folder / "relay.ini"
        config.write_text(
            "[epop]\nlisten = tcp:0:interface=127.0.0.1\nallow = 127.0.0.1\nno-check = yes\n",
            encoding="utf-8",
        )
        argv[0] = str(twistd)
        argv[argv.index("--config") + 1] = str(config)
        journal = state / "epop-journal.jsonl"
        stop_timeout = seconds(unit["TimeoutStopSec"][0])

        def events() -> list[str]:
            if not journal.exists():
                return []
            lines = journal.read_text(encoding="utf-8").splitlines()
            return [json.loads(line)["type"] for line in lines if line.strip()]

        with open(folder / "output.txt", "wb") as output:
            process = subprocess.Popen(argv, cwd=state, stdout=output, stderr=subprocess.STDOUT)
        try:
            _wait_for(lambda: "listening-opened" in events() or process.poll() is not None, 60)
            log = (folder / "output.txt").read_text(encoding="utf-8", errors="replace")
            self.assertIn("listening-opened", events(), f"the relay did not start:\n{log}")

            process.send_signal(signal.SIGHUP)  # ExecReload
            self.assertTrue(_wait_for(lambda: "settings-reloaded" in events(), 30), events())
            self.assertIsNone(process.poll(), "SIGHUP stopped the relay")

            process.send_signal(getattr(signal, unit["KillSignal"][0]))
            code = process.wait(timeout=stop_timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        # After a clean stop, twistd ends itself with the signal that stopped
        # it (twisted.scripts.twistd: app._exitWithSignal); systemd counts an
        # end by SIGTERM as a clean exit, so Restart=on-failure does not fire.
        self.assertIn(code, (0, -signal.SIGTERM))
        self.assertEqual(events()[-1], "listening-closed")


class WindowsDocTests(SynchronousTestCase):
    """
    The twistd command lines of docs/windows.md, read with the options of
    Twisted's Windows twistd (importable on any platform): nothing on
    Windows itself is tested.
    """

    def commands(self) -> list[list[str]]:
        """twistd's own options in each command line of the page."""
        found = []
        for line in WINDOWS_DOC.read_text(encoding="utf-8").splitlines():
            match = re.search(r"(?:twistd\.exe|<arguments>)((?:\s*-\S+)*)\s+epop\s", line)
            if match:
                found.append(match.group(1).split())
        return found

    def test_commands_parse(self) -> None:
        from twisted.scripts._twistw import ServerOptions as WindowsServerOptions

        commands = self.commands()
        self.assertGreaterEqual(len(commands), 4)
        for argv in commands:
            options = WindowsServerOptions()
            options.parseOptions(argv)
            self.assertTrue(options["nodaemon"], argv)

    def test_settings_example_reads(self) -> None:
        """The page's relay.ini, Windows paths and all, is a valid settings file."""
        from epop.relay.settings import SettingKeys, read_settings_file

        text = WINDOWS_DOC.read_text(encoding="utf-8")
        blocks = re.findall(r"```ini\n(.*?)```", text, re.DOTALL)
        self.assertEqual(len(blocks), 1)
        path = Path(self.mktemp())
        path.write_text(blocks[0], encoding="utf-8")
        settings = read_settings_file(str(path), SettingKeys.of(Options()))
        self.assertEqual(settings.values["journal"], "C:\\ProgramData\\epop\\epop-journal.jsonl")

    def test_no_pidfile_on_windows(self) -> None:
        """Windows twistd has no --pidfile: the Linux command line would fail there."""
        from twisted.python.usage import UsageError
        from twisted.scripts._twistw import ServerOptions as WindowsServerOptions

        self.assertRaises(
            UsageError, WindowsServerOptions().parseOptions, ["--nodaemon", "--pidfile="]
        )
        for argv in self.commands():
            self.assertFalse([a for a in argv if a.startswith("--pidfile")], argv)


_MDWE_PROBE = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(3)
from OpenSSL import SSL
try:
    SSL.Context(SSL.TLS_METHOD).set_info_callback(lambda *a: None)
except MemoryError:
    sys.exit(4)
sys.exit(0)
"""


class MemoryDenyWriteExecuteTests(SynchronousTestCase):
    def test_pyopenssl_needs_write_execute(self) -> None:
        """
        Why the unit leaves MemoryDenyWriteExecute= out: with the kernel's
        equivalent (Linux 6.3+) on, pyOpenSSL cannot set the callbacks
        Twisted's TLS uses.
        """
        if not sys.platform.startswith("linux"):
            raise SkipTest("Linux only")
        result = subprocess.run([sys.executable, "-c", _MDWE_PROBE], check=False, timeout=60)
        if result.returncode == 3:
            raise SkipTest("this kernel has no prctl(PR_SET_MDWE) (Linux 6.3+)")
        if result.returncode == 0:
            raise SkipTest(
                "pyOpenSSL now works without writable executable memory: "
                "MemoryDenyWriteExecute=yes could be added to contrib/epop.service"
            )
        self.assertEqual(result.returncode, 4)
