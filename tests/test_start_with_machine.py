"""
"Start with the machine": the relay's systemd unit, asked and changed with a
real systemctl process (a script standing in for it, with its exit codes
and outputs).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from epop.relay.start_with_machine import set_enabled, unit_name, unit_state

_FAKE = """#!/bin/sh
dir=$(dirname "$0")
[ "$1" = "--no-ask-password" ] || { echo "no --no-ask-password" >&2; exit 64; }
shift
echo "$@" >> "$dir/calls"
case "$1" in
is-enabled)
    state=$(cat "$dir/state")
    case "$state" in
    hang) exec sleep 60 ;;
    old-not-found)
        echo "Failed to get unit file state for $2: No such file or directory" >&2; exit 1 ;;
    not-booted)
        echo "System has not been booted with systemd as init system (PID 1). Can't operate." >&2
        echo "Failed to connect to bus: Host is down" >&2; exit 1 ;;
    esac
    echo "$state"
    [ "$state" = enabled ] && exit 0
    exit 1 ;;
enable|disable)
    [ -f "$dir/hang" ] && exec sleep 60
    if [ -f "$dir/denied" ]; then
        echo "Failed to $1 unit: Access denied" >&2
        echo "second line" >&2
        exit 1
    fi
    if [ "$1" = enable ]; then echo enabled > "$dir/state"; else echo disabled > "$dir/state"; fi
    echo "Created symlink /etc/systemd/system/multi-user.target.wants/$2" >&2
    exit 0 ;;
esac
exit 2
"""


class FakeSystemctl:
    def __init__(self, folder: str, state: str) -> None:
        os.makedirs(folder)
        self.folder = folder
        self.path = os.path.join(folder, "systemctl")
        with open(self.path, "w") as f:
            f.write(_FAKE)
        os.chmod(self.path, 0o755)
        self.set_state(state)

    def set_state(self, state: str) -> None:
        with open(os.path.join(self.folder, "state"), "w") as f:
            f.write(state + "\n")

    def touch(self, name: str) -> None:
        open(os.path.join(self.folder, name), "w").close()

    def calls(self) -> list[str]:
        try:
            with open(os.path.join(self.folder, "calls")) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []


class UnitStateTests(TestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()
        os.makedirs(self.root)

    def fake(self, state: str) -> FakeSystemctl:
        return FakeSystemctl(self.mktemp(), state)

    def state(self, fake: FakeSystemctl, **kwargs: Any) -> Any:
        return unit_state(reactor, "epop.service", fake.path, systemd_root=self.root, **kwargs)

    @inlineCallbacks
    def test_enabled(self) -> Any:
        fake = self.fake("enabled")
        found = yield self.state(fake)
        self.assertEqual(found, {
            "available": True, "unit": "epop.service", "enabled": True, "state": "enabled",
            "command": "sudo systemctl disable epop.service", "reason": None,
        })
        self.assertEqual(fake.calls(), ["is-enabled epop.service"])

    @inlineCallbacks
    def test_words(self) -> Any:
        """Each word systemctl prints, and what the box makes of it."""
        fake = self.fake("disabled")
        for word, enabled, command in [
            ("disabled", False, "enable"),
            ("masked", False, "enable"),
            ("enabled-runtime", True, "disable"),
            ("alias", True, "disable"),
            ("static", None, "enable"),
            ("not-found", None, "enable"),
        ]:
            fake.set_state(word)
            found = yield self.state(fake)
            self.assertEqual(
                (found["state"], found["enabled"], found["command"]),
                (word, enabled, f"sudo systemctl {command} epop.service"),
            )

    @inlineCallbacks
    def test_old_not_found(self) -> Any:
        """An older systemctl says it on standard error only."""
        found = yield self.state(self.fake("old-not-found"))
        self.assertEqual((found["available"], found["state"], found["enabled"]),
                         (True, "not-found", None))

    @inlineCallbacks
    def test_not_booted_with_systemd(self) -> Any:
        """systemctl present, systemd not running: not available, with systemctl's words."""
        found = yield self.state(self.fake("not-booted"))
        self.assertFalse(found["available"])
        self.assertIn("not been booted with systemd", str(found["reason"]))

    @inlineCallbacks
    def test_no_systemd_folder(self) -> Any:
        """No /run/systemd/system: systemctl is not even asked."""
        fake = self.fake("enabled")
        found = yield unit_state(reactor, "epop.service", fake.path,
                                 systemd_root=os.path.join(self.root, "missing"))
        self.assertEqual((found["available"], found["enabled"]), (False, None))
        self.assertIn("not started by systemd", str(found["reason"]))
        self.assertEqual(fake.calls(), [])

    @inlineCallbacks
    def test_no_systemctl(self) -> Any:
        found = yield unit_state(reactor, "epop.service", os.path.join(self.root, "none"),
                                 systemd_root=self.root)
        self.assertEqual((found["available"], found["state"]), (False, "unavailable"))
        self.assertIn("systemctl was not found", str(found["reason"]))
        self.assertEqual(found["command"], "sudo systemctl enable epop.service")

    @inlineCallbacks
    def test_hangs(self) -> Any:
        """A systemctl that does not answer is killed; the state is unknown, and says why."""
        found = yield self.state(self.fake("hang"), timeout=0.3)
        self.assertEqual((found["state"], found["enabled"]), ("unknown", None))
        self.assertIn("did not answer within 0.3 seconds", str(found["reason"]))


class SetEnabledTests(TestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()
        os.makedirs(self.root)
        self.fake = FakeSystemctl(self.mktemp(), "disabled")

    def set(self, enabled: bool, **kwargs: Any) -> Any:
        return set_enabled(reactor, "epop.service", enabled, self.fake.path,
                           systemd_root=self.root, **kwargs)

    @inlineCallbacks
    def test_enable_then_disable(self) -> Any:
        found = yield self.set(True)
        self.assertEqual((found["changed"], found["enabled"], found["state"], found["command"]),
                         (True, True, "enabled", "sudo systemctl disable epop.service"))
        found = yield self.set(False)
        self.assertEqual((found["changed"], found["enabled"]), (True, False))
        self.assertEqual(self.fake.calls(), [
            "enable epop.service", "is-enabled epop.service",
            "disable epop.service", "is-enabled epop.service",
        ])

    @inlineCallbacks
    def test_denied(self) -> Any:
        """Not root, no polkit: unchanged, systemctl's first line, the command to type."""
        self.fake.touch("denied")
        found = yield self.set(True)
        self.assertEqual(
            (found["changed"], found["enabled"], found["state"], found["command"],
             found["reason"]),
            (False, False, "disabled", "sudo systemctl enable epop.service",
             "Failed to enable unit: Access denied"),
        )

    @inlineCallbacks
    def test_hangs(self) -> Any:
        self.fake.touch("hang")
        found = yield self.set(True, timeout=0.3)
        self.assertFalse(found["changed"])
        self.assertEqual(found["command"], "sudo systemctl enable epop.service")
        self.assertIn("did not answer", str(found["reason"]))

    @inlineCallbacks
    def test_unavailable(self) -> Any:
        found = yield set_enabled(reactor, "epop.service", False, self.fake.path,
                                  systemd_root=os.path.join(self.root, "missing"))
        self.assertEqual((found["changed"], found["available"], found["command"]),
                         (False, False, "sudo systemctl disable epop.service"))
        self.assertEqual(self.fake.calls(), [])


class UnitNameTests(TestCase):
    def name(self, text: str | None) -> str:
        path = self.mktemp()
        if text is not None:
            with open(path, "w") as f:
                f.write(text)
        return unit_name(path)

    def test_names(self) -> None:
        for text, expected in [
            ("0::/system.slice/epop.service\n", "epop.service"),
            ("0::/system.slice/relay-lab.service\n", "relay-lab.service"),
            ("0::/system.slice/system-epop.slice/epop@lab.service\n", "epop@lab.service"),
            ("12:pids:/system.slice/x.service\n1:name=systemd:/system.slice/epop2.service\n",
             "epop2.service"),
            ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/t.scope\n",
             "epop.service"),
            ("0::/user.slice/user-1000.slice/session-3.scope\n", "epop.service"),
            ("0::/\n", "epop.service"),
            ("", "epop.service"),
            (None, "epop.service"),
        ]:
            self.assertEqual(self.name(text), expected, text)
