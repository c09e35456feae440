"""
The relay's settings file (C{twistd epop --config FILE}): which keys it
takes, how the command line overrides it, every mistake named with its key,
and the documented example, which must keep parsing.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop import tap
from epop.relay_config import (
    SettingKeys,
    SettingsError,
    command_line_keys,
    read_settings_file,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "relay.ini"


def _check_endpoint(description: str) -> None:
    tap._check_endpoint(description)


class KeysTests(SynchronousTestCase):
    def test_keys_come_from_the_options(self) -> None:
        """Every long option is a key, except --config itself; listen and allow repeat."""
        keys = SettingKeys.of(tap.Options())
        options = tap.Options()
        expected = {name for name, *_ in options.optParameters} | {name for name, *_ in options.optFlags}
        expected = (expected - {"config"}) | {"listen", "allow"}
        self.assertEqual(set(keys.names()), expected)
        self.assertEqual(keys.repeatable, {"listen", "allow"})
        self.assertEqual(keys.flags, {"no-check", "require-tls"})
        self.assertIs(keys.parameters["idle-timeout"], float)
        self.assertIn("drain-seconds", keys.names())
        self.assertNotIn("proxy-password", keys.names())
        self.assertNotIn("help", keys.names())

    def test_new_options_are_accepted(self) -> None:
        """An option added to the class is a key at once: parameter, flag or handler."""

        class Extended(tap.Options):
            optParameters = [["journal-colour", None, None, "x"]]
            optFlags = [["quiet", None, "x"]]

            def opt_tag(self, value: str) -> None:
                """x"""
                self["tag"] = value.upper()

        path = self.mktemp()
        Path(path).write_text(
            "[epop]\njournal-colour = blue\nquiet = yes\ntag = ward-4\n", encoding="utf-8"
        )
        options = Extended()
        options.parseOptions(["--config", path, "--journal", self.mktemp()])
        self.assertEqual(
            (options["journal-colour"], options["quiet"], options["tag"]), ("blue", 1, "WARD-4")
        )

    def test_command_line_keys(self) -> None:
        """The options named on a command line, by their long names, however spelled."""
        given = command_line_keys(
            tap.Options(), ["--listen", "tcp:1", "--idle-timeout=5", "--no-check", "--allow", "::1"]
        )
        self.assertEqual(given, {"listen", "idle-timeout", "no-check", "allow"})
        self.assertEqual(command_line_keys(tap.Options(), ["--nonsense"]), frozenset())


class ReadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.keys = SettingKeys.of(tap.Options())

    def read(self, text: str) -> dict:
        path = self.mktemp()
        Path(path).write_text(text, encoding="utf-8")
        return dict(read_settings_file(path, self.keys, check_endpoint=_check_endpoint).values)

    def error(self, text: str) -> str:
        path = self.mktemp()
        Path(path).write_text(text, encoding="utf-8")
        error = self.assertRaises(
            SettingsError, read_settings_file, path, self.keys, check_endpoint=_check_endpoint
        )
        self.assertTrue(str(error).startswith(path), str(error))
        return str(error)[len(path) :]

    def test_values(self) -> None:
        """Values are typed like the options: numbers, flags, lists of one per line."""
        values = self.read(
            "# comment\n[epop]\n; another\n"
            "listen =\n    tcp:3358:interface=10.1.2.3\n\n    tcp6:3358\n"
            "allow = 10.1.0.0/16\n    fd00::/8\n"
            "idle-timeout = 60\n"
            "Require-TLS = No\n"
            "no-check = TRUE\n"
            "epmsi = https://epmsi.example\n"
        )
        self.assertEqual(
            values,
            {
                "listen": ("tcp:3358:interface=10.1.2.3", "tcp6:3358"),
                "allow": ("10.1.0.0/16", "fd00::/8"),
                "idle-timeout": 60.0,
                "require-tls": False,
                "no-check": True,
                "epmsi": "https://epmsi.example",
            },
        )

    def test_flag_spellings(self) -> None:
        for word, value in [("yes", True), ("no", False), ("true", True), ("false", False), ("1", True), ("0", False)]:
            self.assertEqual(self.read(f"[epop]\nno-check = {word}\n"), {"no-check": value}, word)

    def test_empty_allow_is_everyone(self) -> None:
        self.assertEqual(self.read("[epop]\nallow =\n"), {"allow": ()})

    def test_errors_name_the_key_and_line(self) -> None:
        """Each mistake is one message: where, which key, what is wrong."""
        cases = [
            ("[epop]\nfoo = 1\n", ", line 2: unknown key 'foo'; valid keys are: allow, ca-file,"),
            ("[epop]\nallow = 10.0.0.0/8\n    10.1.2.300\n", ", line 2: allow: '10.1.2.300' is not an IP address"),
            ("[epop]\nlisten = nonsense:1\n", ", line 2: listen: 'nonsense:1' is not a valid endpoint"),
            ("[epop]\n\nidle-timeout = 2 minutes\n", ", line 3: idle-timeout: '2 minutes' is not a number"),
            ("[epop]\ndrain-seconds = nan\n", ", line 2: drain-seconds: 'nan' is not a number"),
            ("[epop]\nno-check = sometimes\n", ", line 2: no-check: 'sometimes' is not yes or no"),
            ("[epop]\nepmsi =\n    https://a.example\n    https://b.example\n", ", line 2: epmsi: takes one value, not 2 lines"),
            ("[epop]\nca-file =\n", ", line 2: ca-file: has no value"),
            ("listen = tcp:3358\n", ", line 1: the settings must come after an [epop] header"),
            ("[relay]\nlisten = tcp:3358\n", ": unknown section [relay]"),
            ("[epop]\n[DEFAULT]\nlisten = tcp:3358\n", ": unknown section [DEFAULT]"),
            ("", ": no [epop] section"),
            ("[epop]\nlisten = tcp:1\nallow = ::1\nlisten = tcp:2\n", ", line 4: listen: the key is given twice"),
            ("[epop]\n[epop]\n", ", line 2: the section [epop] is given twice"),
            ("[epop]\nlisten tcp:3358\n", ", line 2: cannot read 'listen tcp:3358': expected 'key = value'"),
            ("[epop]\nlisten: tcp:3358\n", ", line 2: cannot read 'listen: tcp:3358'"),
            ("[epop]\nconfig = other.ini\n", ", line 2: unknown key 'config'"),
        ]
        for text, expected in cases:
            message = self.error(text)
            self.assertTrue(message.startswith(expected), f"{text!r}: {message}")

    def test_no_password_in_the_file(self) -> None:
        """proxy-password is refused, says where passwords go, and never echoes the value."""
        message = self.error("[epop]\nproxy-user = dim\nproxy-password = s3cret\n")
        self.assertIn("line 3: proxy-password: passwords are never read from the settings file", message)
        self.assertIn("proxy-password-file", message)
        self.assertIn("EPOP_PROXY_PASSWORD", message)
        self.assertNotIn("s3cret", message)

    def test_unreadable_file(self) -> None:
        missing = os.path.join(self.mktemp(), "relay.ini")
        error = self.assertRaises(SettingsError, read_settings_file, missing, self.keys)
        self.assertEqual(str(error), f"cannot read the settings file {missing}: No such file or directory")
        binary = self.mktemp()
        Path(binary).write_bytes(b"[epop]\nallow = \xff\n")
        error = self.assertRaises(SettingsError, read_settings_file, binary, self.keys)
        self.assertIn("not UTF-8", str(error))


class OptionsTests(SynchronousTestCase):
    """tap.Options with --config: the file fills in, the command line wins."""

    def parse(self, text: str, *arguments: str) -> tap.Options:
        path = self.mktemp()
        Path(path).write_text(text, encoding="utf-8")
        options = tap.Options()
        options.parseOptions(["--config", path, "--journal", self.mktemp(), *arguments])
        return options

    def test_file_fills_in(self) -> None:
        settings = self.parse(
            "[epop]\nlisten =\n    tcp:4001\n    tcp:4002\nallow = 10.0.0.0/8\n"
            "idle-timeout = 60\ndrain-seconds = 5\nno-check = yes\n"
        ).settings()
        self.assertEqual(settings.listen, ("tcp:4001", "tcp:4002"))
        self.assertEqual(settings.allow, ("10.0.0.0/8",))
        self.assertEqual((settings.idle_timeout, settings.drain_seconds), (60.0, 5.0))
        self.assertFalse(settings.check_at_start)

    def test_command_line_overrides(self) -> None:
        """A value on the command line wins; a repeatable one replaces the file's whole list."""
        settings = self.parse(
            "[epop]\nlisten =\n    tcp:4001\n    tcp:4002\nallow = 10.0.0.0/8\nidle-timeout = 60\n",
            "--listen", "tcp:5000", "--allow", "192.168.1.0/24", "--idle-timeout", "7",
        ).settings()
        self.assertEqual(settings.listen, ("tcp:5000",))
        self.assertEqual(settings.allow, ("192.168.1.0/24",))
        self.assertEqual(settings.idle_timeout, 7.0)

    def test_defaults_without_the_key(self) -> None:
        settings = self.parse("[epop]\n").settings()
        self.assertEqual(settings.listen, ("tcp:3358",))
        self.assertEqual(settings.drain_seconds, 30.0)
        self.assertEqual(settings.allow, ())

    def test_checks_name_the_file(self) -> None:
        """A value from the file that fails the options' own checks points at its line."""
        error = self.assertRaises(usage.UsageError, self.parse, "[epop]\n\nidle-timeout = 0\n")
        self.assertRegex(str(error), r"^--idle-timeout must be a positive number of seconds \(set in .*, line 3\)$")
        error = self.assertRaises(usage.UsageError, self.parse, "[epop]\ndrain-seconds = -1\n")
        self.assertIn("--drain-seconds must be 0 or a positive number", str(error))
        error = self.assertRaises(usage.UsageError, self.parse, "[epop]\ntls-key = k.pem\n")
        self.assertRegex(str(error), r"^--tls-key needs --tls-cert \(set in .*, line 2\)$")

    def test_proxy_password_from_file_only(self) -> None:
        """The proxy's password still comes from proxy-password-file, named in the settings."""
        secret = self.mktemp()
        Path(secret).write_text("pw\n", encoding="utf-8")
        proxy = self.parse(
            f"[epop]\nproxy = http://proxy.chu.local:3128\nproxy-user = dim\nproxy-password-file = {secret}\n"
        ).settings().proxy
        assert proxy is not None
        self.assertEqual((proxy.user, proxy.password), ("dim", "pw"))

    def test_drain_seconds_option(self) -> None:
        options = tap.Options()
        options.parseOptions(["--drain-seconds", "0", "--journal", self.mktemp()])
        self.assertEqual(options.settings().drain_seconds, 0.0)
        for bad in ("-1", "inf"):
            self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--drain-seconds", bad])


class ExampleTests(SynchronousTestCase):
    """docs/examples/relay.ini parses, and shows every key."""

    def setUp(self) -> None:
        self.keys = SettingKeys.of(tap.Options())
        self.text = EXAMPLE.read_text(encoding="utf-8")

    def test_parses(self) -> None:
        values = read_settings_file(str(EXAMPLE), self.keys, check_endpoint=_check_endpoint).values
        self.assertIn("listen", values)
        self.assertIn("allow", values)

    def test_every_key_shown_and_valid(self) -> None:
        """With its commented-out keys switched on, the example sets every key, validly."""
        switched_on = re.sub(r"(?m)^# ([a-z-]+ = )", r"\1", self.text)
        path = self.mktemp()
        Path(path).write_text(switched_on, encoding="utf-8")
        values = read_settings_file(path, self.keys, check_endpoint=_check_endpoint).values
        self.assertEqual(sorted(set(self.keys.names()) - set(values)), [], "keys missing from the example")


class _Output(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[int | None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value.exitCode)


class TwistdTests(TestCase):
    timeout = 60

    async def test_bad_file_is_one_line_from_twistd(self) -> None:
        """twistd prints the mistake as a usage error, without a traceback, and does not start."""
        path = os.path.abspath(self.mktemp())
        Path(path).write_text("[epop]\nidle-timeout = soon\n", encoding="utf-8")
        process = _Output()
        reactor.spawnProcess(
            process,
            sys.executable,
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "--nodaemon", "--pidfile=", "epop", "--config", path],
            env=dict(os.environ),
            path=os.path.dirname(path),
        )
        code = await process.ended
        text = process.output.decode(errors="replace")
        self.assertNotEqual(code, None)
        self.assertIn(f"{path}, line 2: idle-timeout: 'soon' is not a number", text)
        self.assertNotIn("Traceback", text)
