"""
The README's, the docs' and C{make run}'s foreground relays (C{twistd -n
epop}) pass C{--pidfile=}: without it twistd writes C{twistd.pid} in the
current folder, and a second relay started there (another port, a test
next to a running one) stops with "Another twistd server is running".
Windows' twistd has no C{--pidfile} (docs/windows.md), so that guide is
left out.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent

#: twistd, its own options, then the relay (C{epop}) or a .tac (C{-y}).
_FOREGROUND = re.compile(r"\btwistd(?P<options>(?:\s+--?[\w-]+(?:=\S*)?)*)\s+(?:epop|-y)\b")


def foreground_without_pidfile(text: str) -> list[str]:
    """The lines of C{text} that start twistd in the foreground without C{--pidfile}."""
    found = []
    for line in text.splitlines():
        for match in _FOREGROUND.finditer(line):
            options = match.group("options").split()
            foreground = "-n" in options or "--nodaemon" in options
            if foreground and not any(o.startswith("--pidfile") for o in options):
                found.append(line.strip())
    return found


class ForegroundExamplesTests(SynchronousTestCase):
    def test_finder(self) -> None:
        """The check finds what it is meant to, and only that."""
        self.assertEqual(
            foreground_without_pidfile(
                "twistd -n epop --no-check\n"
                "  /opt/epop/bin/twistd --nodaemon --logfile=- epop \\\n"
                "`twistd -n` in prose\n"
                "twistd -n --pidfile= epop\n"
                "twistd --nodaemon --pidfile= -y relay.tac\n"
                "twistd epop --listen tcp:3358\n"
            ),
            ["twistd -n epop --no-check", "/opt/epop/bin/twistd --nodaemon --logfile=- epop \\"],
        )

    def test_readme_docs_and_makefile(self) -> None:
        files = [ROOT / "README.md", ROOT / "Makefile"] + sorted((ROOT / "docs").glob("*.md"))
        files = [f for f in files if f.name != "windows.md"]
        self.assertGreater(len(files), 5)
        seen = 0
        for path in files:
            text = path.read_text(encoding="utf-8")
            seen += len(_FOREGROUND.findall(text))
            with self.subTest(file=path.name):
                self.assertEqual(foreground_without_pidfile(text), [])
        self.assertGreater(seen, 10)

    def test_pid_file_ignored(self) -> None:
        """A daemonised relay's twistd.pid is never committed by mistake."""
        self.assertIn("twistd.pid", (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines())
