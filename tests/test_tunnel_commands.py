"""
The workstation's own commands, in direct mode, with the relay as their
HTTPS proxy: C{epop test} and C{epop send} through its CONNECT mode, and
what they say when the relay will not tunnel where they ask.
"""

from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.relaying import start_relay
from tests.support import SilentServer, make_trustme_sandbox, poll_until, write_random_file
from tests.test_cli import run_epop


class DirectThroughRelayTests(TestCase):
    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)
        self.proxy = f"http://127.0.0.1:{self.relay.port}"
        self.config_path = os.path.abspath(self.mktemp())

    async def epop(self, *argv: str) -> tuple[int, bytes, str]:
        return await run_epop(self.config_path, "--lang", "en", *argv)

    async def test_test_command(self) -> None:
        """`epop test --direct --proxy http://RELAY` reaches e-PMSI through a tunnel."""
        code, out, err = await self.epop(
            "test", "--direct", "--proxy", self.proxy,
            "--epmsi", self.sandbox.url, "--ca-file", self.sandbox.ca_path,
        )
        self.assertEqual(code, 0, err)
        self.assertIn(f"reached through the proxy 127.0.0.1:{self.relay.port}".encode(), out)
        self.assertTrue(await poll_until(reactor, lambda: self.relay.records("object-released")))
        [released] = self.relay.records("object-released")
        self.assertEqual((released["kind"], released["outcome"]), ("tunnel", "completed"))

    async def test_send_command(self) -> None:
        """`epop send --direct --proxy http://RELAY`: the sandbox's receipt has the file's SHA-256."""
        path = self.mktemp()
        sha = write_random_file(path, 2 * 1024 * 1024 + 3, seed=12)
        code, out, err = await self.epop(
            "send", path, "--direct", "--proxy", self.proxy,
            "--epmsi", self.sandbox.url, "--ca-file", self.sandbox.ca_path,
            "--to", "/syriusUpload.do", "--field", "theFile", "-F", "year=2026",
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["files"][0]["sha256"], sha)

    async def test_destination_not_allowed(self) -> None:
        """A workstation aiming elsewhere is shown the relay's refusal, naming what it serves; nothing reached."""
        elsewhere = SilentServer(self, reactor)
        code, out, err = await self.epop(
            "test", "--direct", "--proxy", self.proxy,
            "--epmsi", f"https://127.0.0.1:{elsewhere.port}",
        )
        self.assertEqual(code, 1)
        self.assertIn(f"through the proxy 127.0.0.1:{self.relay.port}", err)
        self.assertIn(
            f"the proxy refused the tunnel (403 Forbidden): \"127.0.0.1:{elsewhere.port} is not a "
            "destination of this relay. This relay only opens HTTPS tunnels to e-PMSI: "
            f"127.0.0.1:{self.sandbox.port.getHost().port}.\"",
            err,
        )
        self.assertEqual(elsewhere.accepted, [])
        self.assertTrue(await poll_until(reactor, lambda: self.relay.records("connection-closed")))
        [closed] = self.relay.records("connection-closed")
        self.assertEqual(closed["reason"], "destination-not-allowed")
