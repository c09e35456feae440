"""
C{make demo} (C{scripts/demo.sh}), as a new user runs it: the whole chain
on loopback, an upload by epop and one by curl through the relay's HTTPS
proxy mode, each receipt checked, the tunnel in the journal, whatever the
person's own saved settings say.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import trustme
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DemoTests(TestCase):
    async def test_demo(self) -> None:
        """The demo ends with status 0, having sent through the relay both ways, and journaled the tunnel."""
        if shutil.which("curl") is None:
            raise SkipTest("curl is not installed")
        scratch = os.path.abspath(self.mktemp())
        # The person's own settings, after an epop trust of another relay:
        # the demo's relay has no TLS, so they must not apply to it.
        own = os.path.abspath(self.mktemp())
        os.makedirs(own)
        trustme.CA().cert_pem.write_to_path(os.path.join(own, "relay-ca.pem"))
        settings = f"[epop]\nrelay = 10.1.2.3\ntls = yes\nrelay-ca = {own}/relay-ca.pem\n"
        with open(os.path.join(own, "client.ini"), "w") as f:
            f.write(settings)
        env = dict(
            os.environ,
            EPOP_CONFIG=os.path.join(own, "client.ini"),
            BIN=os.path.dirname(sys.executable),
            EPOP_DEMO_DIR=scratch,
            EPOP_DEMO_WAIT="0",
            no_proxy="",
            NO_PROXY="",
        )
        out, err, status = await getProcessOutputAndValue(
            "bash", [os.path.join(ROOT, "scripts", "demo.sh")], env=env, path=ROOT, reactor=reactor
        )
        said = out.decode("utf-8", "replace")
        self.assertEqual(status, 0, said + err.decode("utf-8", "replace"))
        self.assertIn("OK: e-PMSI received exactly the file that was sent", said)
        self.assertIn("OK: e-PMSI received exactly the file curl sent through the relay's CONNECT tunnel", said)
        # The messages name the scratch folder given, not .demo.
        shown = scratch[len(ROOT) + 1 :] if scratch.startswith(ROOT + os.sep) else scratch
        self.assertIn(f"(log: {shown}/relay.log)", said)
        with open(os.path.join(scratch, "journal.jsonl")) as journal:
            records = [json.loads(line) for line in journal if line.strip()]
        [tunnel] = [r for r in records if r["type"] == "object-released" and r.get("kind") == "tunnel"]
        self.assertEqual(tunnel["outcome"], "completed")
        self.assertGreater(tunnel["bytes_in"], 1024 * 1024)
        with open(os.path.join(own, "client.ini")) as f:
            self.assertEqual(f.read(), settings)
