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

from epop.epmsi.proxy import ProxyConfig
from epop.local_tls import RelayTLS
from epop.relay import settings as settings_module
from epop.relay import tap
from epop.relay.allowlist import Allowlist
from epop.relay.settings import (
    NUMBERS,
    RelaySettings,
    RelaySettingsError,
    SettingKeys,
    SettingsError,
    command_line_keys,
    read_settings_file,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "relay.ini"


class KeysTests(SynchronousTestCase):
    def test_keys_come_from_the_options(self) -> None:
        """Every long option is a key, except --config itself; listen and allow repeat."""
        keys = SettingKeys.of(tap.Options())
        options = tap.Options()
        expected = {name for name, *_ in options.optParameters} | {name for name, *_ in options.optFlags}
        expected = (expected - {"config"}) | {"listen", "allow", "tunnel-to"}
        self.assertEqual(set(keys.names()), expected)
        self.assertEqual(keys.repeatable, {"listen", "allow", "tunnel-to"})
        self.assertEqual(keys.flags, {"no-check", "require-tls", "no-tunnel", "no-listen-at-start"})
        self.assertEqual(keys.parameters["idle-timeout"]("2.5"), 2.5)
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
        return dict(read_settings_file(path, self.keys).values)

    def error(self, text: str) -> str:
        path = self.mktemp()
        Path(path).write_text(text, encoding="utf-8")
        error = self.assertRaises(SettingsError, read_settings_file, path, self.keys)
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
            ("[epop]\nallow = 10.0.0.0/8\n    10.1.2.300\n", ", line 3: allow: '10.1.2.300' is not an IP address"),
            ("[epop]\nallow = 10.0.0.0/8\n\n    # a comment\n    fd00::/8\n    fd00::zz\n", ", line 6: allow: 'fd00::zz' is not an IP address"),
            ("[epop]\nallow = 10.1.2.300\n    10.0.0.0/8\n", ", line 2: allow: '10.1.2.300' is not an IP address"),
            ("[epop]\nlisten = nonsense:1\n", ", line 2: listen: nonsense:1: invalid endpoint (unknown endpoint type 'nonsense'"),
            ("[epop]\nlisten =\n    tcp:3358\n    tcp:abc\n", ", line 4: listen: tcp:abc: invalid endpoint (the port 'abc' is not a number)"),
            ("[epop]\n\nidle-timeout = 2 minutes\n", ", line 3: idle-timeout: expected a positive number of seconds, not '2 minutes'"),
            ("[epop]\ndrain-seconds = nan\n", ", line 2: drain-seconds: expected a number of seconds, not 'nan' (0: abort at once)"),
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

    def test_allow_on_one_line(self) -> None:
        """Several allowed clients on one line, or in one --allow: the error says how lists are written."""
        hint = "; one address or network per line (indented under allow =), or repeat --allow"
        error = self.assertRaises(usage.UsageError, self.parse, "[epop]\nallow = 10.9.9.9, 127.0.0.1\n")
        self.assertRegex(str(error), r"^.*, line 2: allow: '10\.9\.9\.9, 127\.0\.0\.1' is not an IP address or network ")
        self.assertTrue(str(error).endswith(hint), str(error))
        error = self.assertRaises(usage.UsageError, self.parse, "[epop]\n", "--allow", "10.9.9.9 127.0.0.1")
        self.assertTrue(str(error).endswith(hint), str(error))
        # One entry that is simply wrong gets no such hint.
        error = self.assertRaises(usage.UsageError, self.parse, "[epop]\nallow = 10.9.9.999\n")
        self.assertNotIn("per line", str(error))

    def test_journal_folder_missing(self) -> None:
        """
        A journal in a folder that does not exist: refused, saying so and
        that the relay does not create it; --tls-cert auto, whose folder is
        beside the journal's, makes nothing either.
        """
        folder = os.path.abspath(os.path.join(self.mktemp(), "r1"))
        options = tap.Options()
        error = self.assertRaises(
            usage.UsageError,
            options.parseOptions,
            ["--journal", os.path.join(folder, "journal.jsonl"), "--tls-cert", "auto", "--console", "none"],
        )
        self.assertEqual(
            str(error),
            f"--journal {folder}/journal.jsonl: the folder {folder} does not exist (the relay does not create it): "
            "create it for the relay's user, or choose another place",
        )
        self.assertFalse(os.path.exists(folder))

    def test_checks_name_the_file(self) -> None:
        """A value from the file that fails the options' own checks points at its line."""
        error = self.assertRaises(usage.UsageError, self.parse, "[epop]\n\nidle-timeout = 0\n")
        self.assertRegex(str(error), r"^.*, line 3: idle-timeout: expected a positive number of seconds, not '0'$")
        error = self.assertRaises(usage.UsageError, self.parse, "[epop]\ndrain-seconds = -1\n")
        self.assertIn("line 2: drain-seconds: expected a number of seconds, not '-1'", str(error))
        error = self.assertRaises(usage.UsageError, self.parse, "[epop]\ntls-key = k.pem\n")
        self.assertRegex(str(error), r"^.*, line 2: tls-key: needs tls-cert$")

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


#: Each numeric option of twistd epop, a bad value, and what the message says is expected.
NUMERIC_OPTIONS = [
    ("idle-timeout", "abc", "a positive number of seconds"),
    ("epmsi-timeout", "0", "a positive number of seconds"),
    ("connect-timeout", "-3", "a positive number of seconds"),
    ("hello-timeout", "inf", "a positive number of seconds"),
    ("frame-timeout", "30s", "a positive number of seconds"),
    ("upload-min-rate", "abc", "a number of bytes per second"),
    ("upload-grace", "nan", "a positive number of seconds"),
    ("checks-per-connection", "1.5", "a whole number of checks a minute"),
    ("checks-per-client", "x", "a whole number of checks a minute"),
    ("drain-seconds", "-1", "a number of seconds"),
    ("max-connections", "-1", "a whole number of connections"),
    ("max-connections-per-client", "many", "a whole number of connections"),
    ("tunnel-idle-timeout", "0", "a positive number of seconds"),
]


class NumericOptionTests(SynchronousTestCase):
    """
    A numeric option with a bad value is one message that names the option
    (or the settings file's key and line) and what it expects, never
    Twisted's bare "could not convert string to float".
    """

    def test_every_numeric_option_is_covered(self) -> None:
        """The list above holds every option whose value is a number."""
        numeric = {
            name
            for name, _short, default, *_ in tap.Options.optParameters
            if isinstance(default, (int, float)) and name != "journal-keep"
        }
        self.assertEqual(numeric, {name for name, _, _ in NUMERIC_OPTIONS})

    def test_command_line(self) -> None:
        """--NAME: expected ..., not 'VALUE'."""
        for name, bad, expected in NUMERIC_OPTIONS:
            error = self.assertRaises(usage.UsageError, tap.Options().parseOptions, [f"--{name}", bad])
            self.assertTrue(str(error).startswith(f"--{name}: expected {expected}, not {bad!r}"), str(error))
            self.assertNotIn("enforcement", str(error))

    def test_user_report(self) -> None:
        """The three values a new user tried, word for word."""
        cases = [
            ("--upload-min-rate", "abc", "--upload-min-rate: expected a number of bytes per second, not 'abc' (0: no minimum)"),
            ("--checks-per-client", "x", "--checks-per-client: expected a whole number of checks a minute, not 'x' (0: no limit)"),
            ("--max-connections", "-1", "--max-connections: expected a whole number of connections, not '-1' (0: no limit)"),
        ]
        for option, value, message in cases:
            error = self.assertRaises(usage.UsageError, tap.Options().parseOptions, [option, value])
            self.assertEqual(str(error), message)

    def test_zero_where_it_means_something(self) -> None:
        """0 is accepted where it means "no limit", refused for a timeout."""
        options = tap.Options()
        options.parseOptions(
            ["--journal", self.mktemp(), "--upload-min-rate", "0", "--checks-per-client", "0",
             "--max-connections", "0", "--drain-seconds", "0", "--idle-timeout", "0.5"]
        )
        settings = options.settings()
        self.assertEqual(
            (settings.upload_min_rate, settings.checks_per_client, settings.max_connections,
             settings.drain_seconds, settings.idle_timeout),
            (0.0, 0, 0, 0.0, 0.5),
        )
        self.assertIsInstance(settings.checks_per_client, int)
        self.assertIsInstance(settings.max_connections, int)

    def test_settings_file(self) -> None:
        """In a settings file: the file, the line, the key, and the same problem."""
        for name, bad, expected in NUMERIC_OPTIONS:
            path = self.mktemp()
            Path(path).write_text(f"[epop]\n# {name}\n{name} = {bad}\n", encoding="utf-8")
            error = self.assertRaises(
                usage.UsageError, tap.Options().parseOptions, ["--config", path, "--journal", self.mktemp()]
            )
            self.assertTrue(
                str(error).startswith(f"{os.path.abspath(path)}, line 3: {name}: expected {expected}, not {bad!r}"),
                str(error),
            )


class ExampleTests(SynchronousTestCase):
    """docs/examples/relay.ini parses, and shows every key."""

    def setUp(self) -> None:
        self.keys = SettingKeys.of(tap.Options())
        self.text = EXAMPLE.read_text(encoding="utf-8")

    def test_parses(self) -> None:
        values = read_settings_file(str(EXAMPLE), self.keys).values
        self.assertIn("listen", values)
        self.assertIn("allow", values)

    def test_every_key_shown_and_valid(self) -> None:
        """With its commented-out keys switched on, the example sets every key, validly."""
        switched_on = re.sub(r"(?m)^# ([a-z-]+ = )", r"\1", self.text)
        path = self.mktemp()
        Path(path).write_text(switched_on, encoding="utf-8")
        values = read_settings_file(path, self.keys).values
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
             "--nodaemon", "--pidfile=", "epop", "--console", "none", "--config", path],
            env=dict(os.environ),
            path=os.path.dirname(path),
        )
        code = await process.ended
        text = process.output.decode(errors="replace")
        self.assertNotEqual(code, None)
        self.assertIn(f"{path}, line 2: idle-timeout: expected a positive number of seconds, not 'soon'", text)
        self.assertNotIn("Traceback", text)


#: A bad value for each checked setting: the field, its value in Python, its
#: text on the command line and in the file, and what every message says.
SAME_RULES = [
    ("listen", ("nonsense:1",), "nonsense:1", "nonsense:1: invalid endpoint (unknown endpoint type 'nonsense': expected tcp:PORT"),
    ("listen", ("tcp:abc",), "tcp:abc", "tcp:abc: invalid endpoint (the port 'abc' is not a number)"),
    ("listen", ("tcp",), "tcp", "tcp: invalid endpoint (no port given)"),
    ("listen", ("tcp:1:colour=red",), "tcp:1:colour=red", "tcp:1:colour=red: invalid endpoint (unknown parameter 'colour')"),
    ("listen", ("tcp:1:backlog=many",), "tcp:1:backlog=many", "tcp:1:backlog=many: invalid endpoint ('many' is not a number)"),
    ("listen", ("tcp:99999",), "tcp:99999", "tcp:99999: the port must be a number from 0 to 65535"),
    ("listen", ("haproxy:tcp6:-1",), "haproxy:tcp6:-1", "haproxy:tcp6:-1: the port must be a number from 0 to 65535"),
    ("epmsi", "http://x", "http://x", "e-PMSI URL must start with https:// (got 'http://x')"),
    ("ca_file", "/nonexistent/ca.pem", "/nonexistent/ca.pem", "cannot read CA file /nonexistent/ca.pem"),
    ("allow", ("10.1.2.300",), "10.1.2.300", "'10.1.2.300' is not an IP address or network"),
    ("journal_rotate", "weekly", "weekly", "expected 'daily' or a size such as 500K, 100M or 1G, not 'weekly'"),
    ("journal_keep", -1, "-1", "expected a whole number of rotated files, not "),
    ("journal_keep", 1.5, "1.5", "expected a whole number of rotated files, not "),
    ("idle_timeout", 0, "0", "expected a positive number of seconds, not "),
    ("epmsi_timeout", -3, "-3", "expected a positive number of seconds, not "),
    ("connect_timeout", 0, "0", "expected a positive number of seconds, not "),
    ("hello_timeout", float("inf"), "inf", "expected a positive number of seconds, not "),
    ("frame_timeout", float("nan"), "nan", "expected a positive number of seconds, not "),
    ("upload_min_rate", -5, "-5", "expected a number of bytes per second, not "),
    ("upload_grace", 0, "0", "expected a positive number of seconds, not "),
    ("checks_per_connection", 1.5, "1.5", "expected a whole number of checks a minute, not "),
    ("checks_per_client", -1, "-1", "expected a whole number of checks a minute, not "),
    ("drain_seconds", -1, "-1", "expected a number of seconds, not "),
    ("max_connections", 2.5, "2.5", "expected a whole number of connections, not "),
    ("max_connections_per_client", -1, "-1", "expected a whole number of connections, not "),
    ("tunnel_idle_timeout", 0, "0", "expected a positive number of seconds, not "),
    ("tunnel_users", "/nonexistent/users", "/nonexistent/users", "cannot read the users file given: No such file or directory"),
    ("tunnel_to", ("files.example.org:https",), "files.example.org:https", "'files.example.org:https': the port must be a number from 1 to 65535"),
    ("proxy", ProxyConfig("p", 99999), "http://p:99999", "proxy 'http://p:99999' has an invalid port: expected "),
    ("proxy", ProxyConfig("p", 3128, user="dim"), "http://dim@p:3128", "the proxy user 'dim' needs a password"),
]


class SameRulesTests(SynchronousTestCase):
    """
    The command line, the settings file and the Python API refuse the same
    values with the same words; only what is put in front differs (the
    option, the file's line and key, the field).
    """

    def setUp(self) -> None:
        # A proxy user's password must come from nowhere but the test.
        environ = {k: v for k, v in os.environ.items() if k != "EPOP_PROXY_PASSWORD"}
        self.patch(os, "environ", environ)

    def test_every_rule_is_covered(self) -> None:
        """SAME_RULES tries every field that has a rule beyond its type."""
        rules = set(NUMBERS) | {"listen", "epmsi", "ca_file", "allow", "journal_rotate", "proxy", "tunnel_to", "tunnel_users"}
        self.assertEqual({field for field, *_ in SAME_RULES}, rules)

    def test_python_api(self) -> None:
        """RelaySettings refuses each value when made, naming the field."""
        for field, value, _text, problem in SAME_RULES:
            error = self.assertRaises(RelaySettingsError, RelaySettings, **{field: value})
            self.assertIsInstance(error, ValueError)
            self.assertEqual(error.field, field)
            self.assertTrue(str(error).startswith(field), str(error))
            self.assertIn(problem, str(error))

    def test_command_line(self) -> None:
        for field, _value, text, problem in SAME_RULES:
            option = "--" + field.replace("_", "-")
            error = self.assertRaises(
                usage.UsageError, tap.Options().parseOptions, [option, text, "--journal", self.mktemp()]
            )
            self.assertIn(problem, str(error), option)
            if field not in ("epmsi", "ca_file"):  # their messages say what they are about
                self.assertTrue(str(error).startswith(option), str(error))

    def test_settings_file(self) -> None:
        for field, _value, text, problem in SAME_RULES:
            key = field.replace("_", "-")
            path = os.path.abspath(self.mktemp())
            Path(path).write_text(f"[epop]\n{key} = {text}\n", encoding="utf-8")
            error = self.assertRaises(
                usage.UsageError, tap.Options().parseOptions, ["--config", path, "--journal", self.mktemp()]
            )
            self.assertIn(problem, str(error), key)
            self.assertTrue(str(error).startswith(f"{path}, line 2: {key}: "), str(error))

    def test_numbers_quote_what_was_given(self) -> None:
        """Text is quoted as typed; a Python value as its repr."""
        self.assertEqual(
            str(self.assertRaises(RelaySettingsError, RelaySettings, idle_timeout=0)),
            "idle_timeout: expected a positive number of seconds, not 0",
        )
        error = self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--idle-timeout", "0"])
        self.assertEqual(str(error), "--idle-timeout: expected a positive number of seconds, not '0'")

    def test_checked_once_when_made(self) -> None:
        """A relay built from checked settings is not checked again: no second read of the CA file."""
        reads = []
        self.patch(settings_module, "trust_root_from_pem", lambda path: reads.append(path))
        settings = RelaySettings(ca_file="ca.pem", listen=())
        self.assertEqual(reads, ["ca.pem"])
        changed = settings.with_allow(Allowlist(["10.0.0.0/8"]))
        self.assertEqual((changed.allow, reads), (("10.0.0.0/8",), ["ca.pem"]))

    def test_user_report(self) -> None:
        """The values a new user tried, word for word where they are typed."""

        def refused(*arguments: str) -> str:
            return str(self.assertRaises(usage.UsageError, tap.Options().parseOptions, list(arguments)))

        keep = "--journal-keep: expected a whole number of rotated files, not {!r} (0: keep all)"
        for value in ("-1", "abc", "1.5"):
            self.assertEqual(refused("--journal-keep", value), keep.format(value))
        self.assertEqual(
            refused("--listen", "tcp:abc"), "--listen tcp:abc: invalid endpoint (the port 'abc' is not a number)"
        )
        # Found when the options are read, not by bind() once the good ports listen.
        self.assertEqual(
            refused("--listen", "tcp:3358", "--listen", "tcp:99999"),
            "--listen tcp:99999: the port must be a number from 0 to 65535",
        )
        self.assertEqual(refused("--proxy-user", "dim"), "--proxy-user: a proxy user was given without a proxy")
        self.assertEqual(
            str(self.assertRaises(RelaySettingsError, RelaySettings, listen=("tcp:abc",))),
            "listen: tcp:abc: invalid endpoint (the port 'abc' is not a number)",
        )

    def test_no_python_exception_text(self) -> None:
        """Twisted's parser's own words never reach the administrator."""
        for description in ["tcp:abc", "tcp:", "tcp", "nonsense:1", "tcp:1:colour=red", "tcp:1:2:3:4:5", "haproxy:tcp:x"]:
            error = self.assertRaises(RelaySettingsError, RelaySettings, listen=(description,))
            for python in ("int()", "literal", "_parse", "argument", "Unknown"):
                self.assertNotIn(python, str(error), description)

    def test_unreadable_ssl_certificate(self) -> None:
        """An ssl: endpoint whose certificate cannot be read is refused, not a traceback."""
        error = self.assertRaises(
            RelaySettingsError, RelaySettings, listen=("ssl:3358:privateKey=/nonexistent/key.pem",)
        )
        self.assertIn("invalid endpoint (cannot read /nonexistent/key.pem: No such file", str(error))


class OptionsTogetherTests(SynchronousTestCase):
    """
    Options that need each other: the command line names the options, the
    settings file its line and key, with the same explanation.
    """

    def setUp(self) -> None:
        environ = {k: v for k, v in os.environ.items() if k != "EPOP_PROXY_PASSWORD"}
        self.patch(os, "environ", environ)

    def test_same_explanation(self) -> None:
        cases = [
            ("proxy-user = dim", ["--proxy-user", "dim"], "proxy-user", "a proxy user was given without a proxy"),
            ("proxy = http://p:3128\nproxy-user = dim", ["--proxy", "http://p:3128", "--proxy-user", "dim"],
             "proxy-user", "the proxy user 'dim' needs a password: put it in a password file"),
            ("proxy = ftp://p:21", ["--proxy", "ftp://p:21"], "proxy", "only http:// proxies are supported"),
            ("proxy = http://p:3128\nproxy-password-file = /nonexistent/pw",
             ["--proxy", "http://p:3128", "--proxy-password-file", "/nonexistent/pw"],
             "proxy-password-file", "cannot read the proxy password file given"),
            ("tls-key = k.pem", ["--tls-key", "k.pem"], "tls-key", "needs {}tls-cert"),
            ("tls-cert = c.pem", ["--tls-cert", "c.pem"], "tls-cert", "needs {}tls-key"),
            ("require-tls = yes", ["--require-tls"], "require-tls", "needs {0}tls-cert and {0}tls-key"),
            ("journal = /nonexistent/dir/j.jsonl", ["--journal", "/nonexistent/dir/j.jsonl"], "journal",
             "the folder /nonexistent/dir does not exist (the relay does not create it)"),
        ]
        for text, arguments, key, problem in cases:
            last = text.count("\n") + 2
            path = os.path.abspath(self.mktemp())
            Path(path).write_text(f"[epop]\n{text}\n", encoding="utf-8")
            journal = [] if key == "journal" else ["--journal", self.mktemp()]
            error = self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--config", path, *journal])
            self.assertTrue(str(error).startswith(f"{path}, line {last}: {key}: "), str(error))
            self.assertIn(problem.format(""), str(error))
            self.assertNotIn("--", str(error))
            error = self.assertRaises(usage.UsageError, tap.Options().parseOptions, [*arguments, *journal])
            self.assertTrue(str(error).startswith(f"--{key}"), str(error))
            self.assertIn(problem.format("--"), str(error))

    def test_command_line_wins_and_is_named(self) -> None:
        """A value given on the command line is named as an option even with a settings file."""
        path = os.path.abspath(self.mktemp())
        Path(path).write_text("[epop]\nidle-timeout = 60\n", encoding="utf-8")
        error = self.assertRaises(
            usage.UsageError, tap.Options().parseOptions,
            ["--config", path, "--journal-keep", "-1", "--journal", self.mktemp()],
        )
        self.assertEqual(str(error), "--journal-keep: expected a whole number of rotated files, not '-1' (0: keep all)")


class PythonTypesTests(SynchronousTestCase):
    """
    What only the Python API can give, a value of the wrong type, is refused
    when RelaySettings is made, naming the field, rather than failing later
    in startService.
    """

    def test_refused(self) -> None:
        cases = [
            ({"proxy": "ftp://x:1"}, "proxy: expected a ProxyConfig or None, not a str"),
            ({"proxy": "system"}, "proxy: expected a ProxyConfig or None, not a str: for a URL or 'system'"),
            ({"proxy": ("p", 1)}, "proxy: expected a ProxyConfig or None, not a tuple"),
            ({"proxy": ProxyConfig("", 3128)}, "proxy: proxy host '' is not a host name"),
            ({"proxy": ProxyConfig("p", 0)}, "proxy: proxy 'http://p:0' has an invalid port"),
            ({"proxy": ProxyConfig("p", "3128")}, "proxy: proxy 'http://p:3128' has an invalid port"),
            ({"proxy": ProxyConfig("p", 3128, user="dim")},
             "proxy: the proxy user 'dim' needs a password: give the ProxyConfig its password"),
            ({"tls": "relay.pem"}, "tls: expected a RelayTLS or None, not 'relay.pem'"),
            ({"listen": "tcp:3358"},
             "listen: expected a list of strings, not the string 'tcp:3358': write ['tcp:3358'] for a single endpoint"),
            ({"listen": [3358]}, "listen: expected a list of strings such as ['tcp:3358'], not [3358]"),
            ({"allow": "10.0.0.0/8"}, "allow: expected a list of strings, not the string '10.0.0.0/8'"),
            ({"epmsi": None}, "epmsi: expected an https:// URL, not None"),
            ({"ca_file": Path("ca.pem")}, "ca_file: expected the path of a PEM file, or None, not "),
            ({"journal": ""}, "journal: expected the path of the journal, not ''"),
            ({"journal_rotate": 100}, "journal_rotate: expected 'daily', a size such as '100M', or None, not 100"),
            ({"journal_keep": True}, "journal_keep: expected a whole number of rotated files, not True"),
            ({"check_at_start": "no"}, "check_at_start: expected True or False, not 'no'"),
            ({"check_path": "status"}, "check_path: expected a path starting with /, not 'status'"),
        ]
        for arguments, message in cases:
            error = self.assertRaises(RelaySettingsError, RelaySettings, **arguments)
            self.assertTrue(str(error).startswith(message), str(error))

    def test_proxy_password_never_shown(self) -> None:
        """A URL given where a ProxyConfig belongs is refused without repeating it."""
        error = self.assertRaises(RelaySettingsError, RelaySettings, proxy="http://u:s3cret@p:1")
        self.assertNotIn("s3cret", str(error))

    def test_accepted(self) -> None:
        settings = RelaySettings(
            listen=["tcp:3358"],
            allow=["10.0.0.0/8"],
            proxy=ProxyConfig("proxy.chu.local", 3128, user="dim", password="pw"),
            tls=RelayTLS("relay.pem", "relay.key"),
        )
        self.assertEqual(settings.proxy.port, 3128)
