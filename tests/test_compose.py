"""
The example in ``docs/compose.md`` runs: a relay attached to another
application's service tree, started by twistd, relaying for real.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from epop.workstation.client import RelayAddress, send_file, test_connection
from tests.support import free_port, make_trustme_sandbox, poll_until, write_random_file

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "relay.tac"


class Twistd(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback((reason.value.exitCode, reason.value.signal))


class ComposeExampleTests(TestCase):
    timeout = 120

    async def test_tac_example_relays(self) -> None:
        """The documented .tac file starts a relay that uploads and journals."""
        sandbox = make_trustme_sandbox(self, reactor)
        port = free_port()
        journal = os.path.abspath(self.mktemp())
        env = dict(
            os.environ,
            EPOP_LISTEN=f"tcp:{port}:interface=127.0.0.1",
            EPOP_EPMSI=sandbox.url,
            EPOP_CA_FILE=sandbox.ca_path,
            EPOP_JOURNAL=journal,
            GATEWAY_STATUS=f"tcp:{free_port()}:interface=127.0.0.1",
        )
        twistd = Twistd()
        process = reactor.spawnProcess(
            twistd,
            sys.executable,
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=", "-y", str(EXAMPLE)],
            env=env,
            path=os.path.dirname(journal),
        )

        def stop() -> Deferred[tuple[int | None, int | None]]:
            if not twistd.ended.called:
                process.signalProcess(signal.SIGTERM)
            return twistd.ended

        self.addCleanup(stop)
        relay = RelayAddress("127.0.0.1", port)
        reports = []

        async def ready() -> bool:
            report = await test_connection(reactor, relay=relay, timeout=1)
            reports.append(report)
            return report.ok

        for _ in range(100):
            if twistd.ended.called or await ready():
                break
            await poll_until(reactor, lambda: False, attempts=1, interval=0.1)
        self.assertTrue(reports and reports[-1].ok, twistd.output.decode(errors="replace"))
        path = self.mktemp()
        sha = write_random_file(path, 2 * 1024 * 1024)
        reply = await send_file(reactor, path, to="/syriusUpload.do", relay=relay)
        self.assertEqual(json.loads(reply.body)["files"][0]["sha256"], sha)
        # twistd shuts down cleanly, then ends itself with the signal it got.
        self.assertIn(await stop(), [(0, None), (None, signal.SIGTERM)])
        records = [json.loads(line) for line in open(journal)]
        types = [record["type"] for record in records]
        self.assertEqual(types[0], "listening-opened")
        self.assertIn("listening-closed", types)
        self.assertIn("object-released", types)
        # Every connection opened was journaled as closed before twistd ended.
        opened = {r["connection"] for r in records if r["type"] == "connection-opened"}
        closed = {r["connection"] for r in records if r["type"] == "connection-closed"}
        self.assertEqual(opened, closed)
