"""
C{twistd epop} that cannot listen, as a real program: in the foreground and
as a daemon it must exit non-zero at once, say why on the terminal that
started it, and leave no pid file and no process behind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, TestCase

from tests.support import free_port

#: Runs twistd as a child subreaper (Linux): the daemon's forked processes
#: become its children, so it can tell whether any is left running and reap
#: every one of them (none is left a zombie of this test).
_HARNESS = textwrap.dedent(
    """
    import ctypes, json, os, signal, subprocess, sys, time
    PR_SET_CHILD_SUBREAPER = 36
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(json.dumps({"skip": "no child subreaper"})); sys.exit(0)
    argv = json.loads(sys.argv[1])
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30)
        rc, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = "hung", e.stdout or b"", e.stderr or b""
    # Every other process twistd forked must end soon, and is reaped here.
    left = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.05)
    else:
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == os.getpid():
                    left.append(int(name))
                    os.kill(int(name), signal.SIGKILL)
    print(json.dumps({"rc": rc, "out": out.decode(errors="replace"),
                      "err": err.decode(errors="replace"), "left": left}))
    """
)


class TwistdCannotListenTests(TestCase):
    """twistd epop with its port already taken, foreground and daemonised."""

    def setUp(self) -> None:
        if not sys.platform.startswith("linux"):
            raise SkipTest("needs Linux's child subreaper")
        self.taken = socket.socket()
        self.addCleanup(self.taken.close)
        self.taken.bind(("127.0.0.1", 0))
        self.taken.listen(1)
        self.port = self.taken.getsockname()[1]
        self.folder = FilePath(self.mktemp())
        self.folder.makedirs()

    def run_twistd(self, *twistd_options: str) -> dict[str, Any]:
        pidfile = self.folder.child("twistd.pid").path
        argv = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            *twistd_options,
            f"--pidfile={pidfile}",
            f"--logfile={self.folder.child('twistd.log').path}",
            "epop",
            f"--listen=tcp:{self.port}:interface=127.0.0.1",
            "--no-check",
            "--console=none",
            f"--journal={self.folder.child('journal.jsonl').path}",
        ]
        done = subprocess.run(
            [sys.executable, "-c", _HARNESS, json.dumps(argv)],
            capture_output=True,
            timeout=60,
            cwd=self.folder.path,
        )
        report = json.loads(done.stdout.decode().strip().splitlines()[-1])
        if "skip" in report:
            raise SkipTest(report["skip"])
        return report

    def assert_failed_cleanly(self, report: dict[str, Any]) -> None:
        self.assertEqual(report["rc"], 1, report)
        terminal = report["out"] + report["err"]
        self.assertIn(f"cannot listen on tcp:{self.port}:interface=127.0.0.1", terminal)
        self.assertIn("Address already in use", terminal)
        self.assertNotIn("Traceback", terminal)
        self.assertFalse(self.folder.child("twistd.pid").exists(), "stale pid file")
        self.assertEqual(report["left"], [], "processes left running")

    def test_daemon(self) -> None:
        """
        Daemonised (no -n, as the install guide shows), twistd's first
        process exits 1 with the reason, instead of waiting for ever for its
        daemon.
        """
        self.assert_failed_cleanly(self.run_twistd())

    def test_foreground(self) -> None:
        """
        In the foreground with a log file the reason reaches the terminal
        too, not only the log, and the exit status is 1.
        """
        report = self.run_twistd("--nodaemon")
        self.assert_failed_cleanly(report)
        self.assertIn("Address already in use", self.folder.child("twistd.log").getContent().decode())

    def test_daemon_output_is_the_guides(self) -> None:
        """
        docs/install.md quotes, word for word, what a detaching twistd prints
        when it cannot listen (its listen string aside).
        """
        report = self.run_twistd()
        terminal = report["out"] + report["err"]
        guide = (Path(__file__).resolve().parent.parent / "docs" / "install.md").read_text(encoding="utf-8")
        lines = [line for line in terminal.splitlines() if line.strip()]
        self.assertTrue(lines, report)
        for line in lines:
            line = line.replace(f"tcp:{self.port}:interface=127.0.0.1", "tcp:3358")
            self.assertIn(line, guide)


class ForegroundReasonOnceTests(TestCase):
    """C{twistd -n epop} without a log file logs to standard output: the reason is said once where the person looks."""

    def setUp(self) -> None:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.listen = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        self.folder = FilePath(self.mktemp())
        self.folder.makedirs()

    def run_twistd(self, stderr: int) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "epop",
             f"--listen={self.listen}", "--no-check", "--console=none",
             f"--journal={self.folder.child('journal.jsonl').path}"],
            stdout=subprocess.PIPE, stderr=stderr, timeout=60, cwd=self.folder.path,
        )

    def test_one_terminal(self) -> None:
        """Standard output and error the same terminal (or file): the reason once, as the log's line."""
        done = self.run_twistd(subprocess.STDOUT)
        self.assertEqual(done.returncode, 1)
        self.assertEqual(done.stdout.decode().count(f"cannot listen on {self.listen}"), 1, done.stdout)

    def test_log_elsewhere(self) -> None:
        """The log sent elsewhere than standard error (twistd -n epop > relay.log): the reason on each."""
        done = self.run_twistd(subprocess.PIPE)
        self.assertEqual(done.returncode, 1)
        self.assertEqual(done.stdout.decode().count(f"cannot listen on {self.listen}"), 1, done.stdout)
        self.assertEqual(done.stderr.decode().count(f"cannot listen on {self.listen}"), 1, done.stderr)


def run_foreground_twistd(
    folder: FilePath, *epop_options: str, environ: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """
    C{twistd -n --pidfile= epop OPTIONS} in C{folder}: its exit code and all
    it printed.  C{environ} is added to this process's environment.
    """
    done = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "epop", *epop_options],
        capture_output=True,
        timeout=60,
        cwd=folder.path,
        env={**os.environ, **(environ or {})},
    )
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


class UsageErrorTests(TestCase):
    """A mistake on twistd epop's command line: the reason, not a page of every option."""

    def test_one_line_of_usage_then_the_reason(self) -> None:
        folder = FilePath(self.mktemp())
        folder.makedirs()
        code, output = run_foreground_twistd(folder, "--console=none", "--ca-file", "nothere.pem")
        self.assertEqual(code, 1, output)
        self.assertIn("cannot read CA file nothere.pem: No such file or directory", output)
        self.assertIn("'twistd epop --help' lists every option", output)
        self.assertNotIn("--allow=", output)
        self.assertLessEqual(len(output.strip().splitlines()), 4, output)

    def test_port_out_of_range_before_any_listens(self) -> None:
        """
        --listen tcp:99999 is a usage error naming it, in the relay's
        language, before the good --listen has started: not bind()'s words.
        """
        folder = FilePath(self.mktemp())
        folder.makedirs()
        port = free_port()
        good = f"tcp:{port}:interface=127.0.0.1"
        for language, said in [
            ("C.UTF-8", "--listen tcp:99999: the port must be a number from 0 to 65535"),
            ("fr_FR.UTF-8", "--listen tcp:99999 : le port doit être un nombre de 0 à 65535"),
        ]:
            code, output = run_foreground_twistd(
                folder, "--console=none", "--no-check", "--listen", good, "--listen", "tcp:99999",
                environ={"LANG": language, "LC_ALL": "", "LC_MESSAGES": ""},
            )
            self.assertEqual(code, 1, output)
            self.assertIn(said, output)
            self.assertNotIn("bind()", output)
            self.assertNotIn(f"127.0.0.1:{port}", output)  # the good port: never listened on
            self.assertNotIn("Traceback", output)

    def test_help_still_lists_every_option(self) -> None:
        from twisted.python import usage

        from epop.relay import tap

        self.assertIn("--allow=", tap.Options().getUsage())
        options = tap.Options()
        with self.assertRaises(usage.UsageError):
            options.parseOptions(["--idle-timeout", "soon"])
        self.assertNotIn("--allow=", options.getUsage())
