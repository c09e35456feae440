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

The developer's editable install (the Makefile's command) is tested too,
in a fresh virtualenv that reuses the packages of the one running the tests
(C{--no-build-isolation --no-deps}): it needs no network.

Set C{EPOP_SKIP_PACKAGING=1} to skip them, e.g. offline.
"""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
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


def makefile_install_command() -> list[str]:
    """The Makefile's editable install, as arguments after C{python -m pip}."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    prefix = "$(VENV_BIN)/python -m pip install "
    commands = [
        line.strip()
        for line in makefile.splitlines()
        if line.strip().startswith(prefix) and " -e " in line
    ]
    if len(commands) != 1:
        raise AssertionError(f"expected one editable pip install in the Makefile, found {commands}")
    return shlex.split(commands[0])[3:]


class _Editable:
    """
    The Makefile's editable install, in a fresh virtualenv, made once.

    The virtualenv has no packages of its own: a C{.pth} line puts the
    running environment's site-packages after its own, so the install needs
    neither network nor build isolation.  That folder's own C{.pth} files
    (such as the developer's editable epop) are not read, so the plugin can
    only come from this install.
    """

    def __init__(self) -> None:
        self.scratch = tempfile.mkdtemp(prefix="epop-editable-")
        atexit.register(shutil.rmtree, self.scratch, ignore_errors=True)
        self.source = os.path.join(self.scratch, "source")
        shutil.copytree(ROOT, self.source, ignore=_IGNORED, symlinks=True)
        venv = os.path.join(self.scratch, "fresh")
        _run([sys.executable, "-m", "venv", "--without-pip", venv], self.scratch)
        self.python = os.path.join(venv, "bin", "python")
        purelib = _run(
            [self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            self.scratch,
        ).strip()
        with open(os.path.join(purelib, "reuse_test_environment.pth"), "w", encoding="utf-8") as pth:
            pth.write(sysconfig.get_paths()["purelib"] + "\n")
        #: What pip and setuptools printed (verbose, so setuptools' own
        #: warnings show).
        self.install_output = _run(
            [
                self.python,
                "-m",
                "pip",
                *makefile_install_command(),
                "--no-build-isolation",
                "--no-deps",
                "--disable-pip-version-check",
                "--verbose",
            ],
            self.source,
        )

    def twistd(self, *args: str) -> str:
        """Run twistd with the fresh virtualenv's Python, away from the source tree."""
        return _run(
            [self.python, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())", *args],
            self.scratch,
        )


_built: _Built | None = None
_editable: _Editable | None = None


def editable() -> _Editable:
    global _editable
    if _editable is None:
        _editable = _Editable()
    return _editable


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

    def test_build_warns_of_nothing_deprecated(self) -> None:
        """setuptools builds the wheel without a deprecation warning about the project's configuration."""
        output = built().build_output
        warnings = [line for line in output.splitlines() if "deprecat" in line.lower()]
        self.assertEqual(warnings, [], output)

    def test_wheel_ships_only_the_packages(self) -> None:
        """The project folder is the package root, yet the wheel holds only epop/ and the plugin."""
        with zipfile.ZipFile(built().wheel) as wheel:
            tops = {name.split("/")[0] for name in wheel.namelist()}
        self.assertEqual(
            {top for top in tops if not top.endswith(".dist-info")},
            {"epop", "twisted"},
        )

    def test_fresh_install_commands(self) -> None:
        """In a fresh virtualenv, twistd lists the epop plugin and the epop command runs."""
        fresh = built()
        self.assertIn("epop", fresh.run("twistd", "--help").split())
        self.assertIn("--listen", fresh.run("twistd", "epop", "--help"))
        self.assertIn("sandbox", fresh.run("epop", "--help"))


class EditableInstallTests(SynchronousTestCase):
    """The Makefile's C{pip install -e}: quiet, and twistd finds the plugin."""

    timeout = 2 * STEP_TIMEOUT

    if os.environ.get("EPOP_SKIP_PACKAGING") == "1":
        skip = "EPOP_SKIP_PACKAGING=1: not installing the checkout"

    def test_no_build_warning(self) -> None:
        """
        setuptools builds the editable install without a warning.

        pip shows the build's Python warnings as C{...Warning: ...} lines
        (compat mode's C{SetuptoolsDeprecationWarning} as a
        C{BuildBackendWarning}); pip's own notices are C{WARNING:} lines
        about this machine's package indexes, not about the project.
        """
        output = editable().install_output
        self.assertIn("Successfully installed epop", output)
        warnings = [
            line
            for line in output.splitlines()
            if "Warning:" in line or "deprecat" in line.lower()
        ]
        self.assertEqual(warnings, [], output)

    def test_plugin_visible(self) -> None:
        """twistd, run outside the checkout, lists the epop plugin and its options."""
        fresh = editable()
        self.assertIn("epop", fresh.twistd("--help").split())
        self.assertIn("--listen", fresh.twistd("epop", "--help"))

    def test_plugin_from_checkout(self) -> None:
        """The plugin twistd loads is the checkout's file, so edits show without reinstalling."""
        fresh = editable()
        found = fresh.twistd("--help")
        self.assertIn("epop", found.split())
        self.assertTrue(
            os.path.exists(os.path.join(fresh.source, "twisted", "plugins", "dropin.cache")),
            "twistd cached no plugin list in the checkout's twisted/plugins/",
        )

    def test_plugin_cache_ignored(self) -> None:
        """The plugin cache twistd writes into the checkout is ignored by git."""
        self.assertIn("dropin.cache", (ROOT / ".gitignore").read_text(encoding="utf-8").split())
