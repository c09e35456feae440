"""
The README's commands after C{make run}, in a new shell: the line it gives
(C{. .venv/bin/activate}) puts C{epop} and C{twistd} on the C{PATH}, which
a new shell's does not hold.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent


class ActivateTests(SynchronousTestCase):
    def test_readme_line_finds_the_commands(self) -> None:
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        found = re.search(r"^(\. \.venv/bin/activate)\b", readme, re.MULTILINE)
        assert found is not None, "the README does not say how to get the commands"
        if not (ROOT / ".venv" / "bin" / "activate").exists():
            raise SkipTest("no .venv here (make venv makes it)")
        # A new shell: nothing of the virtualenv on its PATH.
        environ = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
        done = subprocess.run(
            ["bash", "-c", f"{found.group(1)} && command -v epop && command -v twistd"],
            cwd=ROOT,
            env=environ,
            capture_output=True,
            timeout=30,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        epop, twistd = done.stdout.decode().split()
        self.assertEqual(Path(epop).parent.parent.resolve(), (ROOT / ".venv").resolve())
        self.assertEqual(Path(twistd).parent.parent.resolve(), (ROOT / ".venv").resolve())
