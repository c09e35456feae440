"""
The C{epop} command as a real process whose standard output is a pipe that
its reader closed early (C{epop journal FILE | head -3}): it must stop
quietly, with exit status 141 as documented, and no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timezone

from twisted.trial.unittest import SynchronousTestCase

from tests.test_cli_interrupt import epop_command


class ClosedPipeTests(SynchronousTestCase):
    def start(self, *argv: str) -> tuple[subprocess.Popen[bytes], int]:
        """The command, its stdout the write end of a pipe: returns the read end."""
        read_end, write_end = os.pipe()
        env = dict(os.environ, EPOP_CONFIG=os.path.abspath(self.mktemp()), LANG="C.UTF-8")
        process = subprocess.Popen(
            [*epop_command(), *argv], stdout=write_end, stderr=subprocess.PIPE, env=env
        )
        os.close(write_end)
        return process, read_end

    def ended_quietly(self, process: subprocess.Popen[bytes]) -> None:
        _, err = process.communicate(timeout=60)
        text = err.decode(errors="replace")
        self.assertEqual(process.returncode, 141, text)
        self.assertNotIn("Traceback", text)
        self.assertNotIn("BrokenPipe", text)
        self.assertNotIn("Exception ignored", text)
        self.assertEqual(text, "")

    def test_journal_into_head(self) -> None:
        """`epop journal FILE | head -3`: three lines read, then a quiet exit 141."""
        path = self.mktemp()
        at = datetime(2026, 11, 25, 8, 0, tzinfo=timezone.utc).isoformat()
        with open(path, "w") as f:
            for number in range(20000):
                record = {"time": at, "type": "connection-opened", "run": "r1", "connection": number,
                          "client": "10.0.0.5", "description": f"Connection {number} opened from 10.0.0.5"}
                f.write(json.dumps(record) + "\n")
        process, read_end = self.start("journal", path)
        with os.fdopen(read_end, "rb") as reader:
            for _ in range(3):
                self.assertTrue(reader.readline())
        self.ended_quietly(process)

    def test_help_into_a_closed_pipe(self) -> None:
        """`epop send --help | head` with the reader already gone: a quiet exit 141."""
        process, read_end = self.start("send", "--help")
        os.close(read_end)
        self.ended_quietly(process)

    def test_journal_json_into_a_closed_pipe(self) -> None:
        """Even a short output, refused at the final flush, ends quietly."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(json.dumps({"time": "2026-11-25T08:00:00+00:00", "type": "connection-opened",
                                "description": "Connection 1 opened"}) + "\n")
        process, read_end = self.start("journal", "--json", path)
        os.close(read_end)
        self.ended_quietly(process)
