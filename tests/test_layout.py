"""
The packages' boundaries (docs/architecture.md): which role may import which.

A workstation never carries the relay's code and the e-PMSI leg serves both
without knowing either, so that each can change without the other; this
test keeps it so as the code grows.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import epop

PACKAGE = Path(epop.__file__).parent

ROLES = ("relay", "epmsi", "workstation", "journal", "sandbox")

#: For each role, the other roles it may import.
ALLOWED = {
    "relay": {"epmsi", "journal"},
    "workstation": {"epmsi"},
    "epmsi": set(),
    "journal": set(),
    "sandbox": set(),
}


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
                extra = imported_roles(path) - ALLOWED[role] - {role}
                if extra:
                    wrong.append(f"{role}/{path.name} imports {', '.join(sorted(extra))}")
        self.assertEqual(wrong, [])

    def test_the_check_sees_imports(self) -> None:
        """The walk finds both import forms, so that the test above can fail."""
        self.assertLessEqual({"epmsi", "journal"}, imported_roles(PACKAGE / "relay" / "operations.py"))
        self.assertIn("epmsi", imported_roles(PACKAGE / "workstation" / "direct.py"))

    def test_every_role_is_a_package(self) -> None:
        """The roles named here are the packages that exist, no more, no less."""
        found = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
        self.assertEqual(found, set(ROLES))
