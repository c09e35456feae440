"""
The packages' boundaries (docs/architecture.md): which role may import which.

A workstation never carries the relay's code and the e-PMSI leg serves both
without knowing either, so that each can change without the other; this
test keeps it so as the code grows.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import epop

PACKAGE = Path(epop.__file__).parent

ROLES = ("relay", "epmsi", "workstation", "journal", "sandbox", "console")

#: Top-level modules that assemble the roles (the public API, the command
#: line, the test doubles); every other top-level module is shared by the
#: roles and imports none of them.
ASSEMBLERS = {"__init__.py", "cli.py", "command.py", "testing.py"}

#: For each role, the other roles it may import.
ALLOWED = {
    "relay": {"epmsi", "journal"},
    "workstation": {"epmsi"},
    "epmsi": set(),
    "journal": set(),
    "sandbox": set(),
    "console": {"relay", "epmsi", "journal"},
}

#: Role modules that assemble a program from several roles: twistd epop
#: runs the relay with its console.
ROLE_ASSEMBLERS = {"relay/tap.py": {"console"}}


def imported_roles(path: Path) -> set[str]:
    """The roles (sub-packages of epop) a module imports, at any depth."""
    roles = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "epop" and len(parts) > 1 and parts[1] in ROLES:
                roles.add(parts[1])
    return roles


class LayoutTests(SynchronousTestCase):
    def test_roles_import_only_what_they_may(self) -> None:
        """Each role imports the shared modules and only the roles it is allowed."""
        wrong = []
        for role in ROLES:
            for path in sorted((PACKAGE / role).glob("*.py")):
                assembles = ROLE_ASSEMBLERS.get(f"{role}/{path.name}", set())
                extra = imported_roles(path) - ALLOWED[role] - {role} - assembles
                if extra:
                    wrong.append(f"{role}/{path.name} imports {', '.join(sorted(extra))}")
        self.assertEqual(wrong, [])

    def test_shared_modules_import_no_role(self) -> None:
        """What every role shares depends on none of them."""
        wrong = []
        for path in sorted(PACKAGE.glob("*.py")):
            if path.name not in ASSEMBLERS and imported_roles(path):
                wrong.append(f"{path.name} imports {', '.join(sorted(imported_roles(path)))}")
        self.assertEqual(wrong, [])

    def loaded(self, module: str, prefix: str) -> list[str]:
        """The modules under C{prefix} that importing C{module} loads, in a fresh interpreter."""
        code = (
            f"import sys, {module}; "
            f"print(' '.join(sorted(m for m in sys.modules if m.startswith({prefix!r}))))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        )
        return out.stdout.split()

    def test_a_workstation_never_loads_the_relay(self) -> None:
        """The client and the relay, as they run: neither loads the other's code."""
        self.assertEqual(self.loaded("epop.workstation.client", "epop.relay"), [])
        self.assertEqual(self.loaded("epop.relay.service", "epop.workstation"), [])
        self.assertEqual(self.loaded("epop.relay.service", "epop.console"), [])
        self.assertEqual(self.loaded("epop.relay.tap", "epop.workstation"), [])

    def test_the_check_sees_imports(self) -> None:
        """The walk finds both import forms, so that the test above can fail."""
        self.assertLessEqual({"epmsi", "journal"}, imported_roles(PACKAGE / "relay" / "operations.py"))
        self.assertIn("epmsi", imported_roles(PACKAGE / "workstation" / "direct.py"))

    def test_every_role_is_a_package(self) -> None:
        """The roles named here are the packages that exist, no more, no less."""
        found = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
        self.assertEqual(found, set(ROLES))
