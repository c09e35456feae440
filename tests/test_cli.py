"""
Tests for the C{epop} command, run in-process against a real relay and
sandbox on loopback.
"""

from __future__ import annotations

import io
import json

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from epop import cli
from tests.relaying import start_relay
from tests.support import make_trustme_sandbox, write_random_file


class CommandTests(TestCase):
    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)
        self.path = self.mktemp()
        self.sha = write_random_file(self.path, 1024 * 1024, seed=5)

    async def run_epop(self, *argv: str) -> tuple[int, bytes, str]:
        stdout, stderr = io.BytesIO(), io.StringIO()
        code = await cli.run(reactor, list(argv), stdout=stdout, stderr=stderr)
        return code, stdout.getvalue(), stderr.getvalue()

    async def test_send_through_relay(self) -> None:
        """`epop send` prints e-PMSI's answer and exits 0 for a 2xx."""
        code, out, err = await self.run_epop(
            "send", self.path, "--relay", str(self.relay.endpoint),
            "--to", "/syriusUpload.do", "--field", "theFile", "-F", "year=2026",
        )
        self.assertEqual(code, 0, err)
        receipt = json.loads(out)
        self.assertEqual(receipt["files"][0]["sha256"], self.sha)
        self.assertEqual(receipt["fields"], ["year"])
        self.assertIn("e-PMSI answered 200", err)

    async def test_send_direct(self) -> None:
        """`epop send --direct` reaches e-PMSI without a relay."""
        code, out, err = await self.run_epop(
            "send", self.path, "--direct", "--epmsi", self.sandbox.url,
            "--ca-file", self.sandbox.ca_path,
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["files"][0]["sha256"], self.sha)
        self.assertIn("directly", err)

    async def test_error_status_exits_non_zero(self) -> None:
        """An answer other than 2xx prints its status and body and exits 1."""
        code, out, err = await self.run_epop(
            "send", self.path, "--relay", str(self.relay.endpoint), "-F", "big=" + "x" * 70000,
        )
        self.assertEqual(code, 1)
        self.assertIn("e-PMSI answered 413", err)
        self.assertEqual(json.loads(out)["status"], "error")

    async def test_test_command(self) -> None:
        """`epop test` says what it reached; failure names the step and exits 1."""
        code, out, err = await self.run_epop("test", "--relay", str(self.relay.endpoint))
        self.assertEqual(code, 0, err)
        self.assertIn(b"reached at 127.0.0.1", out)
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        number = port.getHost().port
        await port.stopListening()
        code, out, err = await self.run_epop("test", "--relay", f"127.0.0.1:{number}")
        self.assertEqual(code, 1)
        self.assertIn("Test failed while reaching the relay", err)
        self.assertIn("connection refused", err)

    async def test_usage_errors(self) -> None:
        """Mistakes on the command line exit 2 with a message saying what is wrong."""
        cases = [
            (["send", self.path], "say where to send"),
            (["send", self.path, "--relay", "a", "--direct"], "not both"),
            (["send", "/nonexistent", "--direct"], "no such file"),
            (["send", self.path, "--direct", "-F", "novalue"], "NAME=VALUE"),
            (["send", self.path, "--relay", "a", "--ca-file", "x"], "--direct only"),
            (["test", "--relay", "host:99999"], "1 to 65535"),
            ([], "give a command"),
        ]
        for argv, text in cases:
            code, out, err = await self.run_epop(*argv)
            self.assertEqual(code, 2, argv)
            self.assertIn(text, err)
