"""
After a crash: the connections of a relay that was killed (or whose
machine stopped) are shown as lost, not open, once a later run starts or
as soon as the reader sees that the relay's process is gone.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop import cli
from epop.journal.writer import encode_record
from epop.journal.connections import (
    RELAY_GONE,
    RELAY_RESTARTED,
    RunChecker,
    connection_summaries,
    connections_table,
)
from epop.journal.process import ALIVE, GONE, UNKNOWN, process_fields, process_start, process_state
from tests.relaying import HELLO, raw_connect
from tests.support import free_port, poll_until
from tests.test_drain import start_relay_process

RUN_A = "3c1c3f5238c2"
RUN_B = "1da46e10bf43"
NOW = datetime(2026, 11, 25, 12, tzinfo=timezone.utc).timestamp()
BOOT = "254ff3d1-c172-43f1-9362-ebb3d6d2f702"
NAMESPACE = "pid:[4026531836]"


def _at(seconds: float) -> str:
    when = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _stat(pid: int, ticks: int, command: str = "twistd", state: str = "S") -> str:
    # The 52 fields of /proc/PID/stat; state is the 3rd, starttime the 22nd.
    after = [state, "1"] + ["0"] * 17 + [str(ticks)] + ["0"] * 30
    return f"{pid} ({command}) " + " ".join(after) + "\n"


class FakeProc:
    """A /proc tree with the files the process check reads."""

    def __init__(self, root: str, boot: str = BOOT) -> None:
        self.root = root
        os.makedirs(os.path.join(root, "sys", "kernel", "random"))
        with open(os.path.join(root, "sys", "kernel", "random", "boot_id"), "w") as f:
            f.write(boot + "\n")
        os.makedirs(os.path.join(root, "self", "ns"))
        os.symlink(NAMESPACE, os.path.join(root, "self", "ns", "pid"))

    def add(self, pid: int, ticks: int, command: str = "twistd", state: str = "S") -> None:
        os.makedirs(os.path.join(self.root, str(pid)), exist_ok=True)
        with open(os.path.join(self.root, str(pid), "stat"), "w") as f:
            f.write(_stat(pid, ticks, command, state))


def _dead_pid() -> int:
    """The number of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


class ProcessStateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.proc = FakeProc(os.path.abspath(self.mktemp()))
        self.host = "relay-host"

    def written(self, pid: int, ticks: int) -> dict[str, Any]:
        """A listening-opened record as the relay numbered PID, started at TICKS, writes it."""
        self.proc.add(pid, ticks)
        record = {"type": "listening-opened", "host": self.host, "pid": pid, "process_start": process_start(pid, self.proc.root)}
        os.remove(os.path.join(self.proc.root, str(pid), "stat"))
        return record

    def state(self, record: dict[str, Any], host: str | None = None) -> str:
        return process_state(record, self.proc.root, host or self.host)

    def test_start_names_the_boot_namespace_and_start_time(self) -> None:
        """The start holds the boot id, the PID namespace and the start ticks (from the last ')' on, whatever the command)."""
        self.proc.add(4321, 987654, command="tw) ist (d")
        start = process_start(4321, self.proc.root)
        assert start is not None
        self.assertTrue(start.startswith("linux/"))
        self.assertTrue(start.endswith(f"/{BOOT}/{NAMESPACE}/987654"), start)
        self.assertIsNone(process_start(4322, self.proc.root))
        self.assertIsNone(process_start(4321, os.path.abspath(self.mktemp())))

    def test_same_process_is_alive(self) -> None:
        """The same number with the same start time is the relay, still running."""
        record = self.written(4321, 1000)
        self.proc.add(4321, 1000)
        self.assertEqual(self.state(record), ALIVE)

    def test_reused_number_is_gone(self) -> None:
        """The same number with another start time is another process: the relay is gone."""
        record = self.written(4321, 1000)
        self.proc.add(4321, 2000)
        self.assertEqual(self.state(record), GONE)

    def test_another_boot_is_gone(self) -> None:
        """After a restart of the machine (a power cut), the relay is gone even if its number is taken again."""
        record = self.written(4321, 1000)
        rebooted = FakeProc(os.path.abspath(self.mktemp()), boot="00000000-0000-0000-0000-000000000000")
        rebooted.add(4321, 1000)
        self.assertEqual(process_state(record, rebooted.root, self.host), GONE)

    def test_zombie_is_gone(self) -> None:
        """A relay killed but not yet reaped (state Z, or X while torn down) keeps its number and start time: it is gone all the same."""
        for state in ("Z", "X"):
            record = self.written(4321, 1000)
            self.proc.add(4321, 1000, command="tw) Z (d", state=state)
            self.assertEqual(self.state(record), GONE, state)
            self.assertEqual(self.state({**record, "process_start": None}), GONE, state)
        for state in ("S", "R", "D", "T"):
            self.proc.add(4321, 1000, state=state)
            self.assertEqual(self.state(record), ALIVE, state)

    def test_real_zombie_is_gone(self) -> None:
        """A child that has exited and that its parent has not waited for yet answers signal 0, and is gone."""
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        self.addCleanup(child.wait)
        fields = {**process_fields(), "pid": child.pid, "process_start": process_start(child.pid)}
        self.assertEqual(process_state(fields), ALIVE)
        assert child.stdin is not None
        child.stdin.close()  # the child exits; nobody waits for it yet
        stat = os.path.join("/proc", str(child.pid), "stat")
        for _ in range(500):
            with open(stat) as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    break
            time.sleep(0.01)
        else:
            self.fail("the child did not become a zombie")
        os.kill(child.pid, 0)  # its number still exists
        self.assertEqual(process_state(fields), GONE)
        self.assertEqual(process_state({**fields, "process_start": None}), GONE)

    def test_number_not_in_proc_asks_the_kernel(self) -> None:
        """A number missing from /proc (or hidden by hidepid) is checked with signal 0: ended is gone, existing is alive."""
        dead = _dead_pid()
        record = self.written(dead, 1000)
        self.assertEqual(self.state(record), GONE)
        record = self.written(os.getpid(), 1000)
        self.assertEqual(self.state(record), ALIVE)

    def test_what_cannot_be_judged_is_unknown(self) -> None:
        """Another host, another PID namespace, another machine, or no usable pid: unknown, never gone."""
        record = self.written(_dead_pid(), 1000)
        self.assertEqual(self.state(record, host="elsewhere"), UNKNOWN)
        start = record["process_start"]
        parts = start.split("/")
        other_namespace = "/".join([*parts[:3], "pid:[1]", parts[4]])
        self.assertEqual(self.state({**record, "process_start": other_namespace}), UNKNOWN)
        other_machine = "/".join([parts[0], "0123456789abcdef", *parts[2:]])
        self.assertEqual(self.state({**record, "process_start": other_machine}), UNKNOWN)
        self.assertEqual(self.state({**record, "process_start": "windows/1"}), UNKNOWN)
        for pid in (None, "12", 0, -1, True, 1.5):
            self.assertEqual(self.state({**record, "pid": pid}), UNKNOWN, pid)

    def test_without_a_start_the_number_decides(self) -> None:
        """A record without process_start (written where /proc is missing): an ended number is gone, a live one alive."""
        self.assertEqual(self.state({"host": self.host, "pid": _dead_pid(), "process_start": None}), GONE)
        self.assertEqual(self.state({"host": self.host, "pid": os.getpid(), "process_start": None}), ALIVE)

    def test_this_process_on_the_real_proc(self) -> None:
        """The fields the relay writes for itself describe a live process; a child's, once it has ended, a gone one."""
        fields = process_fields()
        self.assertEqual((fields["host"], fields["pid"]), (socket.gethostname(), os.getpid()))
        self.assertEqual(process_state(fields), ALIVE)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            child_fields = {**fields, "pid": child.pid, "process_start": process_start(child.pid)}
            self.assertEqual(process_state(child_fields), ALIVE)
        finally:
            child.kill()
            child.wait()
        self.assertEqual(process_state(child_fields), GONE)


def _listening(run: str, at: float, **process: Any) -> dict[str, Any]:
    return {"time": _at(at), "type": "listening-opened", "run": run, "address": "0.0.0.0:3358", "port": 3358, **process, "description": "e-POP relay listening on 0.0.0.0:3358"}


def _opened(run: str, number: int, at: float) -> dict[str, Any]:
    return {"time": _at(at), "type": "connection-opened", "run": run, "connection": number, "client": "10.1.4.27:51234", "description": "Connection opened"}


def _closed(run: str, number: int, at: float) -> dict[str, Any]:
    return {"time": _at(at), "type": "connection-closed", "run": run, "connection": number, "client": "10.1.4.27:51234", "duration": 1.0, "bytes_in": 1, "bytes_out": 2, "reason": "closed-by-client", "description": "Connection closed"}


class SummaryTests(SynchronousTestCase):
    def test_gone_relay_connections_are_lost(self) -> None:
        """Open connections of the last run are lost (relay-gone) when its process is gone, open while it runs."""
        records = [_listening(RUN_A, NOW), _opened(RUN_A, 1, NOW + 1), _opened(RUN_A, 2, NOW + 2), _closed(RUN_A, 2, NOW + 3)]
        asked: list[str] = []

        def gone(run: str) -> bool:
            asked.append(run)
            return True

        summaries = connection_summaries(records, NOW + 60, gone)
        self.assertEqual([(s.connection, s.state, s.reason) for s in summaries], [(1, "lost", RELAY_GONE), (2, "closed", "closed-by-client")])
        self.assertIsNone(summaries[0].duration)
        self.assertEqual(asked, [RUN_A])
        alive = connection_summaries(records, NOW + 60, lambda run: False)
        self.assertEqual([(s.state, s.reason, s.duration) for s in alive][0], ("open", None, 59.0))

    def test_a_later_run_makes_them_lost_without_asking(self) -> None:
        """A run followed by another is over: its open connections are lost (relay-restarted), and no process is checked."""
        records = [_listening(RUN_A, NOW), _opened(RUN_A, 1, NOW + 1), _listening(RUN_B, NOW + 10), _opened(RUN_B, 1, NOW + 11)]
        summaries = connection_summaries(records, NOW + 60, lambda run: run == RUN_A)
        self.assertEqual([(s.run, s.state, s.reason) for s in summaries], [(RUN_A, "lost", RELAY_RESTARTED), (RUN_B, "open", None)])

    def test_table_says_why_in_both_languages(self) -> None:
        """The table says which: the relay started again, or its process is gone; in English and French; '?' for closed and duration."""
        records = [_listening(RUN_A, NOW), _opened(RUN_A, 1, NOW + 1), _listening(RUN_B, NOW + 10), _opened(RUN_B, 1, NOW + 11)]
        summaries = connection_summaries(records, NOW + 60, lambda run: True)
        english = connections_table(summaries, "en", timezone.utc)
        self.assertRegex(english[2], r" +\? +\? +never closed: the relay stopped, and started again since$")
        self.assertRegex(english[3], r" +\? +\? +never closed: the relay's process is gone \(killed, or the machine stopped\)$")
        french = connections_table(summaries, "fr", timezone.utc)
        self.assertRegex(french[2], r" +\? +\? +jamais fermée : le relais s'est arrêté, puis a redémarré depuis$")
        self.assertRegex(french[3], r" +\? +\? +jamais fermée : le processus du relais n'existe plus \(arrêté de force, ou la machine s'est arrêtée\)$")

    def test_run_checker_finds_the_start_in_rotated_files(self) -> None:
        """The run's listening-opened may be in a rotated file: the checker reads them, newest first, once."""
        path = os.path.abspath(self.mktemp())
        process = {"host": "relay-host", "pid": 4321, "process_start": None}
        with open(path + ".2", "wb") as f:
            f.write(encode_record(_listening(RUN_A, NOW, **process)))
        with open(path + ".1", "wb") as f:
            f.write(encode_record(_opened(RUN_A, 1, NOW + 1)))
        with open(path, "wb") as f:
            f.write(encode_record(_opened(RUN_A, 2, NOW + 2)))
        checked: list[dict[str, Any]] = []

        def check(record: dict[str, Any]) -> str:
            checked.append(record)
            return GONE

        checker = RunChecker(path, [_opened(RUN_A, 2, NOW + 2)], check)
        self.assertTrue(checker(RUN_A))
        self.assertEqual([r["pid"] for r in checked], [4321])
        self.assertFalse(RunChecker(path, [], lambda record: ALIVE)(RUN_A))
        self.assertFalse(RunChecker(path, [], check)(RUN_B))
        self.assertFalse(RunChecker(path + "-missing", [], check)(RUN_A))


class CommandTests(SynchronousTestCase):
    def run_epop(self, *argv: str) -> tuple[int, str, str]:
        stdout, stderr = io.BytesIO(), io.StringIO()
        environ = {"EPOP_CONFIG": os.path.abspath(self.mktemp())}
        d = cli.run(reactor, list(argv), stdout=stdout, stderr=stderr, environ=environ)
        return self.successResultOf(d), stdout.getvalue().decode(), stderr.getvalue()

    def test_connections_of_a_dead_process(self) -> None:
        """`epop connections` checks the last run's process on this host: ended, its open connection is lost (relay-gone)."""
        path = os.path.abspath(self.mktemp())
        for pid, expected in ((_dead_pid(), ("lost", RELAY_GONE)), (os.getpid(), ("open", None))):
            process = {"host": socket.gethostname(), "pid": pid, "process_start": process_start(pid)}
            with open(path, "wb") as f:
                for record in (_listening(RUN_A, NOW, **process), _opened(RUN_A, 1, NOW + 1)):
                    f.write(encode_record(record))
            code, out, err = self.run_epop("connections", path, "--json")
            self.assertEqual(code, 0, err)
            [summary] = [json.loads(line) for line in out.splitlines()]
            self.assertEqual((summary["state"], summary["reason"]), expected)


class KilledRelayTests(TestCase):
    """A real twistd relay killed with SIGKILL while a workstation is connected."""

    timeout = 120

    async def test_connections_of_a_killed_relay_are_lost(self) -> None:
        port = free_port()
        relay = await start_relay_process(self, port, "--epmsi", "https://127.0.0.1:9/")
        client = await raw_connect(self, reactor, port)
        client.transport.write(HELLO)
        self.assertTrue(
            await poll_until(reactor, lambda: "connection-opened" in relay.types(), 200, 0.05), relay.text()
        )
        stdout, stderr = io.BytesIO(), io.StringIO()
        environ = {"EPOP_CONFIG": os.path.abspath(self.mktemp())}
        self.assertEqual(await cli.run(reactor, ["connections", relay.journal, "--json"], stdout=stdout, stderr=stderr, environ=environ), 0)
        [summary] = [json.loads(line) for line in stdout.getvalue().splitlines()]
        self.assertEqual((summary["state"], summary["reason"]), ("open", None))

        relay.signal(signal.SIGKILL)
        self.assertEqual(await relay.ended, (None, signal.SIGKILL))
        self.assertNotIn("connection-closed", relay.types())
        stdout = io.BytesIO()
        await cli.run(reactor, ["--lang", "fr", "connections", relay.journal], stdout=stdout, stderr=stderr, environ=environ)
        lines = stdout.getvalue().decode().splitlines()
        self.assertRegex(lines[2], r"^1 .* \? +\? +jamais fermée : le processus du relais n'existe plus")
        stdout = io.BytesIO()
        await cli.run(reactor, ["connections", relay.journal, "--json"], stdout=stdout, stderr=stderr, environ=environ)
        [summary] = [json.loads(line) for line in stdout.getvalue().splitlines()]
        self.assertEqual((summary["state"], summary["reason"], summary["closed"]), ("lost", RELAY_GONE, None))
        self.assertEqual(stderr.getvalue(), "")
