"""
Packaging: the wheel, installed into a fresh virtualenv, gives a working
C{twistd epop} plugin and C{epop} command.

The twistd plugin lives in C{twisted/plugins/}, a namespace package shared
with Twisted itself: the wheel must ship C{twisted/plugins/epop_plugin.py}
but never a C{twisted/__init__.py} or C{twisted/plugins/__init__.py}, which
would shadow Twisted once installed.  Only a real build and a real install
can tell, so these tests run C{python -m build} on a copy of the project and
C{pip install} the wheel (dependencies come from the package index; pip's
cache makes that quick after the first run).

Set C{EPOP_SKIP_PACKAGING=1} to skip them, e.g. offline.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

#: The project root: the folder holding setup.cfg, above tests/.
ROOT = Path(__file__).resolve().parent.parent

#: Seconds allowed for one build or install step.
STEP_TIMEOUT = 600

#: Not copied into the build folder: local state and build leftovers that
#: could leak stale files into the wheel.
_IGNORED = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".demo",
    "_trial_temp*",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    "dropin.cache",
    "epop-sandbox",
    "epop-journal.jsonl*",
    "benchmarks",
)


def _run(args: list[str], cwd: str) -> str:
    """Run a command, return its combined output; fail with it if it fails."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run(
        args,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=STEP_TIMEOUT,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited with {result.returncode}:\n{result.stdout}"
        )
    return result.stdout


class _Built:
    """The wheel and a fresh virtualenv holding it, made once per process."""

    def __init__(self) -> None:
        self.scratch = tempfile.mkdtemp(prefix="epop-packaging-")
        atexit.register(shutil.rmtree, self.scratch, ignore_errors=True)
        source = os.path.join(self.scratch, "source")
        dist = os.path.join(self.scratch, "dist")
        self.venv = os.path.join(self.scratch, "fresh")
        # Build from a copy: setuptools writes build/ and *.egg-info into the
        # tree it builds, which would race with a developer's work.
        shutil.copytree(ROOT, source, ignore=_IGNORED, symlinks=True)
        #: What building printed (setuptools' warnings included).
        self.build_output = _run([sys.executable, "-m", "build", "--wheel", "--outdir", dist, source], self.scratch)
        wheels = sorted(Path(dist).glob("epop-*.whl"))
        if len(wheels) != 1:
            raise AssertionError(f"expected one epop wheel in {dist}, found {wheels}")
        self.wheel = str(wheels[0])
        _run([sys.executable, "-m", "venv", self.venv], self.scratch)
        _run(
            [
                self.bin("python"),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--quiet",
                self.wheel,
            ],
            self.scratch,
        )

    def bin(self, name: str) -> str:
        return os.path.join(self.venv, "bin", name)

    def run(self, *args: str) -> str:
        """Run a program of the fresh virtualenv, away from the source tree."""
        return _run([self.bin(args[0]), *args[1:]], self.scratch)


_built: _Built | None = None


def built() -> _Built:
    global _built
    if _built is None:
        _built = _Built()
    return _built


class PackagingTests(SynchronousTestCase):
    timeout = 2 * STEP_TIMEOUT

    if os.environ.get("EPOP_SKIP_PACKAGING") == "1":
        skip = "EPOP_SKIP_PACKAGING=1: not building and installing the wheel"

    def test_wheel_contents(self) -> None:
        """The wheel ships the twistd plugin and py.typed, and no twisted/ __init__.py."""
        with zipfile.ZipFile(built().wheel) as wheel:
            names = set(wheel.namelist())
        self.assertIn("twisted/plugins/epop_plugin.py", names)
        self.assertIn("epop/py.typed", names)
        self.assertIn("epop/__init__.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        # The data folders: the French catalog and the console's page.
        self.assertIn("epop/locale/fr/LC_MESSAGES/epop.mo", names)
        for name in ("index.html", "console.js", "console.css"):
            self.assertIn(f"epop/console/static/{name}", names)

    def test_build_warns_of_no_undeclared_package(self) -> None:
        """The data folders are declared: setuptools builds without its "absent from packages" warning."""
        self.assertNotIn("absent from the `packages` configuration", built().build_output)

    def test_fresh_install_commands(self) -> None:
        """In a fresh virtualenv, twistd lists the epop plugin and the epop command runs."""
        fresh = built()
        self.assertIn("epop", fresh.run("twistd", "--help").split())
        self.assertIn("--listen", fresh.run("twistd", "epop", "--help"))
        self.assertIn("sandbox", fresh.run("epop", "--help"))
