"""
Tests for the C{epop} command, run in-process against a real relay and
sandbox on loopback.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import signal
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from epop import cli
from tests.relaying import start_relay
from epop.wire import FrameReader, FrameType, encode_message
from tests.support import SilentServer, free_port, make_trustme_sandbox, write_random_file


async def run_epop(
    config_path: str, *argv: str, environ: dict[str, str] | None = None, stdin: io.StringIO | None = None
) -> tuple[int, bytes, str]:
    """Run the command in-process: its exit status, standard output and error."""
    stdout, stderr = io.BytesIO(), io.StringIO()
    env = {"EPOP_CONFIG": config_path}
    env.update(environ or {})
    code = await cli.run(reactor, list(argv), stdout=stdout, stderr=stderr, environ=env, stdin=stdin)
    return code, stdout.getvalue(), stderr.getvalue()


class UntouchableInput(io.StringIO):
    """The process's own standard input, which a command given another must not read."""

    def readline(self, size: int | None = -1) -> str:
        raise AssertionError("read the process's standard input, not the one given")

    def isatty(self) -> bool:
        raise AssertionError("looked at the process's standard input, not the one given")


class TerminalInput(io.StringIO):
    """A standard input that is a terminal: a password is asked for, never read from it."""

    def isatty(self) -> bool:
        return True


class StandardInputTests(TestCase):
    """What the command reads comes from the standard input it is given."""

    def setUp(self) -> None:
        self.config_path = os.path.abspath(self.mktemp())
        self.patch(sys, "stdin", UntouchableInput())

    def saved_text(self) -> str:
        with open(self.config_path) as f:
            return f.read()

    async def test_password_from_given_stdin(self) -> None:
        """`config set proxy-password -` reads the first line of the given standard input."""
        code, out, err = await run_epop(
            self.config_path, "config", "set", "proxy-password", "-",
            stdin=io.StringIO("Piped-Pw-456\r\nsecond line\n"),
        )
        self.assertEqual((code, out), (0, b""), err)
        self.assertEqual(err, f"Saved in {self.config_path}.\n")
        self.assertIn("Piped-Pw-456\n", self.saved_text())
        self.assertNotIn("second line", self.saved_text())
        code, out, _ = await run_epop(self.config_path, "config", "show", stdin=io.StringIO())
        self.assertIn(b"proxy-password = (set)", out)

    async def test_password_from_given_terminal(self) -> None:
        """On a terminal the password is asked for without echo, never read as a line."""
        import getpass

        asked: list[str] = []
        self.patch(getpass, "getpass", lambda prompt: asked.append(prompt) or "Typed-Pw-789")
        terminal = TerminalInput("not-the-password\n")
        code, _, err = await run_epop(self.config_path, "config", "set", "proxy-password", "-", stdin=terminal)
        self.assertEqual(code, 0, err)
        self.assertEqual(asked, ["Proxy password: "])
        self.assertEqual(terminal.tell(), 0)
        self.assertIn("Typed-Pw-789", self.saved_text())

    async def test_empty_stdin(self) -> None:
        """An empty standard input is an empty password, refused as a usage error."""
        code, _, err = await run_epop(self.config_path, "config", "set", "proxy-password", "-", stdin=io.StringIO(""))
        self.assertEqual(code, 2, err)
        self.assertIn("epop: proxy-password is empty", err)

    async def test_other_commands_leave_stdin_alone(self) -> None:
        """Only a password given as '-' reads standard input."""
        given = io.StringIO("proxy.chu.local\n")
        code, _, err = await run_epop(self.config_path, "config", "set", "relay", "10.1.2.3", stdin=given)
        self.assertEqual(code, 0, err)
        self.assertEqual(given.tell(), 0)


class ConfigUnsetTests(TestCase):
    """`epop config unset KEY` says what it did, or that there was nothing to do."""

    def setUp(self) -> None:
        self.config_path = os.path.abspath(self.mktemp())

    async def test_unset_what_was_set(self) -> None:
        """A saved key is removed, and the file saved."""
        await run_epop(self.config_path, "config", "set", "relay", "10.1.2.3")
        code, out, err = await run_epop(self.config_path, "config", "unset", "relay")
        self.assertEqual((code, out, err), (0, b"", f"Saved in {self.config_path}.\n"))
        code, out, _ = await run_epop(self.config_path, "config", "show")
        self.assertNotIn(b"relay =", out)

    async def test_unset_what_was_not_set(self) -> None:
        """A key that was not saved: said so, in French too, exit 0, no file written."""
        code, out, err = await run_epop(self.config_path, "config", "unset", "proxy")
        self.assertEqual((code, out, err), (0, b"", "proxy was not set; nothing changed.\n"))
        self.assertFalse(os.path.exists(self.config_path))
        code, _, err = await run_epop(self.config_path, "--lang", "fr", "config", "unset", "proxy")
        self.assertEqual((code, err), (0, "proxy n'était pas enregistré ; rien n'a changé.\n"))

    async def test_unset_unknown_key(self) -> None:
        """An unknown key is still a usage error."""
        code, _, err = await run_epop(self.config_path, "config", "unset", "server")
        self.assertEqual(code, 2, err)
        self.assertIn("unknown setting", err)


class CommandTests(TestCase):
    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.relay = start_relay(self, reactor, self.sandbox.url, self.sandbox.ca_path)
        self.path = self.mktemp()
        self.sha = write_random_file(self.path, 1024 * 1024, seed=5)
        self.config_path = os.path.abspath(self.mktemp())

    async def run_epop(self, *argv: str, environ: dict[str, str] | None = None) -> tuple[int, bytes, str]:
        return await run_epop(self.config_path, *argv, environ=environ)

    async def test_send_through_relay(self) -> None:
        """`epop send` prints e-PMSI's answer and exits 0 for a 2xx."""
        code, out, err = await self.run_epop(
            "send", self.path, "--relay", str(self.relay.endpoint),
            "--to", "/syriusUpload.do", "--field", "theFile", "-F", "year=2026",
        )
        self.assertEqual(code, 0, err)
        receipt = json.loads(out)
        self.assertEqual(receipt["files"][0]["sha256"], self.sha)
        self.assertEqual(receipt["fields"], ["year"])
        self.assertIn("e-PMSI answered 200", err)

    async def test_send_direct(self) -> None:
        """`epop send --direct` reaches e-PMSI without a relay."""
        code, out, err = await self.run_epop(
            "send", self.path, "--direct", "--epmsi", self.sandbox.url,
            "--ca-file", self.sandbox.ca_path,
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["files"][0]["sha256"], self.sha)
        self.assertIn("directly", err)

    async def test_error_status_exits_non_zero(self) -> None:
        """An answer other than 2xx prints its status and body and exits 1."""
        code, out, err = await self.run_epop(
            "send", self.path, "--relay", str(self.relay.endpoint), "-F", "big=" + "x" * 70000,
        )
        self.assertEqual(code, 1)
        self.assertIn("e-PMSI answered 413", err)
        self.assertIn("Not accepted: ", err)
        self.assertNotIn("Sent ", err)
        self.assertEqual(json.loads(out)["status"], "error")

    async def test_test_command(self) -> None:
        """`epop test` says what it reached; failure names the step and exits 1."""
        code, out, err = await self.run_epop("test", "--relay", str(self.relay.endpoint))
        self.assertEqual(code, 0, err)
        self.assertIn(b"reached at 127.0.0.1", out)
        code, out, err = await self.run_epop("test", "--relay", f"127.0.0.1:{free_port()}")
        self.assertEqual(code, 1)
        self.assertIn("Test failed at this step: reaching the relay.", err)
        self.assertIn("connection refused", err)

    async def test_usage_errors(self) -> None:
        """Mistakes on the command line exit 2 with a message saying what is wrong."""
        cases = [
            (["send", self.path], "say where to send"),
            (["send", self.path, "--relay", "a", "--direct"], "not both"),
            (["send", "/nonexistent", "--direct"], "no such file"),
            (["send", self.path, "--direct", "-F", "novalue"], "NAME=VALUE"),
            (["send", self.path, "--relay", "a", "--ca-file", "x"], "--direct only"),
            (["test", "--relay", "host:99999"], "1 to 65535"),
            ([], "give a command"),
        ]
        for argv, text in cases:
            code, out, err = await self.run_epop(*argv)
            self.assertEqual(code, 2, argv)
            self.assertIn(text, err)

    async def test_saved_settings_are_used_and_flags_win(self) -> None:
        """Saved settings replace flags once; a flag still overrides them."""
        for key, value in [
            ("relay", str(self.relay.endpoint)),
            ("field", "theFile"),
            ("epmsi", self.sandbox.url),
            ("ca-file", self.sandbox.ca_path),
        ]:
            code, _, err = await self.run_epop("config", "set", key, value)
            self.assertEqual(code, 0, err)
        code, out, err = await self.run_epop("send", self.path)
        self.assertEqual(code, 0, err)
        self.assertIn("through relay", err)
        self.assertEqual(json.loads(out)["files"][0]["field"], "theFile")
        code, out, err = await self.run_epop("send", self.path, "--direct", "--field", "other")
        self.assertEqual(code, 0, err)
        self.assertIn("directly", err)
        self.assertEqual(json.loads(out)["files"][0]["field"], "other")
        code, out, err = await self.run_epop("test")
        self.assertEqual(code, 0, err)

    async def test_config_show_hides_password(self) -> None:
        """`config show` lists the settings but never the proxy password."""
        import sys

        self.patch(sys, "stdin", io.StringIO("Secret-Pw-123\n"))
        code, _, err = await self.run_epop("config", "set", "proxy-password", "-")
        self.assertEqual(code, 0, err)
        await self.run_epop("config", "set", "proxy-user", "dim")
        code, out, _ = await self.run_epop("config", "show")
        self.assertIn(b"proxy-user = dim", out)
        self.assertIn(b"proxy-password = (set)", out)
        self.assertNotIn(b"Secret-Pw-123", out)
        with open(self.config_path) as f:
            self.assertIn("Secret-Pw-123", f.read())
        self.assertEqual(os.stat(self.config_path).st_mode & 0o777, 0o600)
        code, _, err = await self.run_epop("config", "set", "nonsense", "1")
        self.assertEqual(code, 2)
        self.assertIn("nonsense", err)

    async def test_proxy_settings_import(self) -> None:
        """`proxy-settings` says what it found and --save stores it."""
        env = {"HTTPS_PROXY": "http://proxy.chu.local:3128"}
        code, out, _ = await self.run_epop("proxy-settings", environ=env)
        self.assertEqual(code, 0)
        self.assertIn(b"http://proxy.chu.local:3128", out)
        self.assertIn(b"HTTPS_PROXY", out)
        code, _, err = await self.run_epop("proxy-settings", "--save", environ=env)
        self.assertEqual(code, 0, err)
        code, out, _ = await self.run_epop("config", "show")
        self.assertIn(b"proxy = http://proxy.chu.local:3128", out)
        code, out, _ = await self.run_epop("proxy-settings", environ={})
        self.assertIn(b"No proxy setting found", out)

    async def test_proxy_flags_need_direct(self) -> None:
        """Proxy flags through a relay are refused: the relay has its own."""
        code, _, err = await self.run_epop(
            "send", self.path, "--relay", "10.1.2.3", "--proxy", "http://p:3128"
        )
        self.assertEqual(code, 2)
        self.assertIn("--proxy applies to --direct only", err)
        code, _, err = await self.run_epop(
            "test", "--direct", "--proxy", "http://p:3128", "--proxy-user", "dim", environ={}
        )
        self.assertEqual(code, 2)
        self.assertIn("needs a password", err)

    async def test_broken_settings_file(self) -> None:
        """A damaged settings file is named, with what is wrong in it."""
        with open(self.config_path, "w") as f:
            f.write("[epop]\nmode = sideways\n")
        code, _, err = await self.run_epop("test")
        self.assertEqual(code, 2)
        self.assertIn(self.config_path, err)
        self.assertIn("mode", err)

    async def test_interfaces(self) -> None:
        """`epop interfaces` lists addresses with the --listen option and the address to type."""
        code, out, _ = await self.run_epop("interfaces", "--port", "4000")
        self.assertEqual(code, 0)
        self.assertIn(b"127.0.0.1 (", out)
        self.assertIn(b"--listen tcp:4000:interface=127.0.0.1", out)
        self.assertIn(b"127.0.0.1:4000", out)

    async def test_interfaces_refuses_a_port_workstations_cannot_use(self) -> None:
        """`epop interfaces --port 0` (or not a port at all) is a usage error, not "type 192.0.2.2:0"."""
        for port in ("0", "65536", "x", "-1"):
            code, out, err = await self.run_epop("interfaces", "--port", port)
            self.assertEqual((code, out), (2, b""), err)
            self.assertIn(f"epop: --port: expected the relay's port number, from 1 to 65535, not '{port}'", err)
        code, out, _ = await self.run_epop("interfaces", "-p", "65535")
        self.assertEqual(code, 0)
        self.assertIn(b"127.0.0.1:65535", out)


class _SwallowingRelay(Protocol):
    """A relay that takes the whole upload, then hangs up without an answer."""

    def connectionMade(self) -> None:
        self.reader = FrameReader()
        self.factory.connections.append(self)
        self.transport.write(encode_message(FrameType.WELCOME, {"version": 1}))

    def dataReceived(self, data: bytes) -> None:
        if bytes([FrameType.BODY_END]) + b"\x00\x00\x00" in data[-120:]:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.factory.connections.remove(self)


class _RefusingRelay(Protocol):
    """A relay that greets, then refuses the check with the factory's ERROR code."""

    def connectionMade(self) -> None:
        self.transport.write(encode_message(FrameType.WELCOME, {"version": 1}))

    def dataReceived(self, data: bytes) -> None:
        if bytes([FrameType.CHECK]) in data:
            code = self.factory.code
            self.transport.write(encode_message(FrameType.ERROR, {"code": code, "message": f"no: {code}"}))
            self.transport.loseConnection()


class TestStepTests(TestCase):
    async def test_relay_limit_is_not_reaching(self) -> None:
        """A relay that answered, then refused the check at its limit: that step, not 'reaching the relay'."""
        factory = Factory.forProtocol(_RefusingRelay)
        factory.code = "too-many-checks"
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        code, _, err = await run_epop(
            os.path.abspath(self.mktemp()), "test", "--relay", f"127.0.0.1:{port.getHost().port}"
        )
        self.assertEqual(code, 1, err)
        self.assertIn("Test failed at this step: being served by the relay (its limits).", err)
        self.assertIn(f"Relay 127.0.0.1:{port.getHost().port} answered in", err)
        self.assertIn("no: too-many-checks", err)
        self.assertNotIn("reaching the relay", err)


class ExitStatusTests(TestCase):
    """Each exit status of docs/exit-status.md, pinned."""

    def setUp(self) -> None:
        self.config_path = os.path.abspath(self.mktemp())
        self.path = self.mktemp()
        write_random_file(self.path, 256 * 1024, seed=8)

    def test_documented(self) -> None:
        """The table in docs/exit-status.md lists exactly the statuses the command uses."""
        with open(os.path.join(os.path.dirname(__file__), "..", "docs", "exit-status.md")) as f:
            documented = {int(m) for m in re.findall(r"^\| `(\d+)` \|", f.read(), re.M)}
        signals = {cli.exit_status_for_signal(signal.SIGINT), cli.exit_status_for_signal(signal.SIGTERM)}
        self.assertEqual(signals, {130, 143})
        used = {cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_ANSWER_LOST, cli.EXIT_BROKEN_PIPE} | signals
        self.assertEqual(documented, used)
        self.assertEqual((cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_ANSWER_LOST), (0, 1, 2, 3))
        self.assertEqual(cli.EXIT_BROKEN_PIPE, cli.exit_status_for_signal(signal.SIGPIPE))

    async def test_answer_lost_is_3(self) -> None:
        """The whole file sent, then the relay hangs up: 3, and 'e-PMSI may have received it'."""
        factory = Factory.forProtocol(_SwallowingRelay)
        factory.connections = []
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        code, out, err = await run_epop(
            self.config_path, "send", self.path, "--relay", f"127.0.0.1:{port.getHost().port}"
        )
        self.assertEqual(code, 3, err)
        self.assertIn("The relay closed the connection before answering", err)
        self.assertIn("e-PMSI may have received it. Check on e-PMSI before sending it again.", err)
        self.assertIn("(failed step: waiting for e-PMSI's answer)", err)
        self.assertNotIn("Traceback", err)

    async def test_unreachable_is_1(self) -> None:
        """Nothing listens at the relay's address: 1, 'not delivered', step 'reaching the relay'."""
        code, _, err = await run_epop(self.config_path, "send", self.path, "--relay", f"127.0.0.1:{free_port()}")
        self.assertEqual(code, 1, err)
        self.assertIn("connection refused", err)
        self.assertIn("was not delivered: e-PMSI did not receive it (failed step: reaching the relay)", err)

    async def test_bad_stall_timeout_is_2(self) -> None:
        """A stall timeout that is not a positive number is a usage error."""
        code, _, err = await run_epop(
            self.config_path, "send", self.path, "--relay", "127.0.0.1", "--stall-timeout", "0"
        )
        self.assertEqual(code, 2)
        self.assertIn("--stall-timeout: expected a positive number of seconds, not '0'", err)

    async def test_bad_values_name_their_option(self) -> None:
        """
        Values that are not numbers, or not finite, or out of range are
        usage errors that name the option: never a traceback, always 2.
        """
        cases = [
            (("send", self.path, "--relay", "127.0.0.1", "--timeout", "nan"),
             "--timeout: expected a positive number of seconds, not 'nan'"),
            (("send", self.path, "--relay", "127.0.0.1", "--stall-timeout", "abc"),
             "--stall-timeout: expected a positive number of seconds, not 'abc'"),
            (("test", "--relay", "127.0.0.1", "--timeout", "inf"),
             "--timeout: expected a positive number of seconds, not 'inf'"),
            (("sandbox", "--port", "99999"), "--port: expected a port number from 0 to 65535, not '99999'"),
            (("journal", "--since", "99999999d", self.path), "--since 99999999d: too far back for a date"),
            (("connections", "--since", "0001-01-01", self.path), "--since 0001-01-01: too far back for a date"),
            (("send", os.path.dirname(self.path), "--relay", "127.0.0.1"), "is a folder: give the file to send"),
            (("send", "--relay", "127.0.0.1"), "epop: give the file to send: epop send FILE\nTry 'epop send --help'."),
            (("send", self.path, self.path, "--relay", "127.0.0.1"),
             "one file at a time: 2 were given (send each with its own epop send)"),
        ]
        for argv, message in cases:
            code, out, err = await run_epop(self.config_path, *argv)
            self.assertEqual((code, out), (2, b""), (argv, err))
            self.assertIn(message, err)
            self.assertNotIn("Traceback", err)

    async def test_full_standard_output(self) -> None:
        """Standard output on a full disk: one line that says so, status 1, no traceback."""
        class Full(io.BytesIO):
            def write(self, data: bytes) -> int:  # type: ignore[override]
                raise OSError(errno.ENOSPC, "No space left on device")

        stderr = io.StringIO()
        code = await cli.run(
            reactor, ["interfaces"], stdout=Full(), stderr=stderr,
            environ={"EPOP_CONFIG": self.config_path},
        )
        self.assertEqual(code, 1)
        self.assertEqual(stderr.getvalue(), "epop: cannot write to standard output: No space left on device\n")

    async def test_interrupted_send_is_128_plus_signal(self) -> None:
        """An interruption cancels the send in flight and exits 128 + N, in French too."""
        factory = Factory.forProtocol(Protocol)  # accepts, never greets
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        for number, language in ((signal.SIGINT, "en"), (signal.SIGTERM, "fr")):
            interruption = cli.Interruption()
            stdout, stderr = io.BytesIO(), io.StringIO()
            d = cli.run(
                reactor,
                ["--lang", language, "send", self.path, "--relay", f"127.0.0.1:{port.getHost().port}"],
                stdout=stdout, stderr=stderr,
                environ={"EPOP_CONFIG": self.config_path},
                interruption=interruption,
            )
            await deferLater(reactor, 0.2, lambda: None)
            interruption.interrupt(number)
            self.assertEqual(await d, 128 + number)
            if language == "fr":
                self.assertIn("Interrompu (SIGTERM) : l'envoi a été arrêté.", stderr.getvalue())
                self.assertIn("n'a pas été remis", stderr.getvalue())
            else:
                self.assertIn("Interrupted (SIGINT): the upload was stopped.", stderr.getvalue())

    async def test_interrupted_direct_test_is_130(self) -> None:
        """An interrupted `epop test --direct` exits 130, not 1 for a failed check."""
        silent = SilentServer(self, reactor)
        interruption = cli.Interruption()
        stderr = io.StringIO()
        d = cli.run(
            reactor,
            ["test", "--direct", "--epmsi", f"https://127.0.0.1:{silent.port}"],
            stdout=io.BytesIO(), stderr=stderr,
            environ={"EPOP_CONFIG": self.config_path},
            interruption=interruption,
        )
        await deferLater(reactor, 0.2, lambda: None)
        interruption.interrupt(signal.SIGINT)
        self.assertEqual(await d, 130, stderr.getvalue())
        self.assertIn("Interrupted (SIGINT): the test was stopped.", stderr.getvalue())

    def test_second_signal_stops(self) -> None:
        """A second signal, or one with nothing in flight, falls back to stopping."""
        stopped: list[bool] = []
        interruption = cli.Interruption(otherwise=lambda: stopped.append(True))
        interruption.interrupt(signal.SIGINT)
        self.assertEqual((interruption.signal, stopped), (None, [True]))
        cancelled: list[bool] = []
        cleaning_up: Deferred[None] = Deferred()
        operation: Deferred[None] = Deferred(lambda d: cancelled.append(True))
        operation.addErrback(lambda failure: cleaning_up)  # still busy after cancelling
        interruption.watch(operation)
        interruption.interrupt(signal.SIGTERM)
        self.assertEqual((interruption.signal, cancelled, stopped), (signal.SIGTERM, [True], [True]))
        self.assertNoResult(operation)
        interruption.interrupt(signal.SIGINT)
        self.assertEqual(stopped, [True, True])
        self.assertEqual(interruption.exit_status(0), 143)  # react() says 0: it was interrupted
        self.assertEqual(interruption.exit_status(None), 143)
        self.assertEqual(interruption.exit_status(143), 143)
        self.assertEqual(cli.Interruption().exit_status(0), 0)  # the sandbox stopped by Ctrl-C
        cleaning_up.callback(None)
        self.successResultOf(operation)


class RelayAddressTests(TestCase):
    """A relay's address is checked where it is typed or saved, and said wrong in words."""

    def setUp(self) -> None:
        self.config_path = os.path.abspath(self.mktemp())

    async def test_url_or_bad_name_is_a_usage_error(self) -> None:
        """A URL or a name no resolver takes is refused with exit 2 before any connection."""
        port = free_port()
        cases = [
            (f"http://127.0.0.1:{port}",
             f"--relay http://127.0.0.1:{port}: give HOST[:PORT], not a URL (e.g. 127.0.0.1:{port})"),
            ("https://127.0.0.1", "--relay https://127.0.0.1: give HOST[:PORT], not a URL (e.g. 127.0.0.1)"),
            ("bad_host", "--relay bad_host: 'bad_host' is not a host name or an IP address"),
            ("a b", "--relay 'a b': 'a b' is not a host name or an IP address"),
            ("bad_host:3358", "--relay bad_host:3358: 'bad_host' is not a host name or an IP address"),
        ]
        for typed, said in cases:
            for command in (["test"], ["send", __file__]):
                code, out, err = await run_epop(self.config_path, *command, "--relay", typed)
                self.assertEqual((code, out), (2, b""), err)
                self.assertEqual(err, f"epop: {said}\nTry 'epop {command[0]} --help'.\n")
        code, _, err = await run_epop(self.config_path, "--lang", "fr", "test", "--relay", "bad_host")
        self.assertIn("'bad_host' n'est ni un nom d'hôte ni une adresse IP", err)

    async def test_config_set_relay_checked(self) -> None:
        """`epop config set relay` refuses what --relay refuses, and saves nothing."""
        for typed, said in [
            ("a b", "relay 'a b': 'a b' is not a host name or an IP address"),
            ("http://10.1.2.3:3358", "relay http://10.1.2.3:3358: give HOST[:PORT], not a URL (e.g. 10.1.2.3:3358)"),
        ]:
            code, _, err = await run_epop(self.config_path, "config", "set", "relay", typed)
            self.assertEqual(code, 2, err)
            self.assertIn(said, err)
        self.assertFalse(os.path.exists(self.config_path))
        # Saved before, by hand or by an older epop: named with its file when
        # used, and epop config set can still replace it.
        with open(self.config_path, "w") as f:
            f.write("[epop]\nrelay = a b\n")
        for command in (["test"], ["send", __file__], ["trust"]):
            code, _, err = await run_epop(self.config_path, *command)
            self.assertEqual(code, 2, command)
            self.assertIn(
                f"epop: {self.config_path}: relay = a b: 'a b' is not a host name or an IP address; "
                "correct it with epop config set relay HOST[:PORT]\n", err,
            )
        code, _, err = await run_epop(self.config_path, "config", "set", "relay", "10.1.2.3")
        self.assertEqual(code, 0, err)

    async def test_ipv6_forms_still_work(self) -> None:
        """[::1]:PORT and a bare ::1 reach a relay as before."""
        sandbox = make_trustme_sandbox(self, reactor)
        relay = start_relay(self, reactor, sandbox.url, sandbox.ca_path, listen=("tcp6:0:interface=\\:\\:1",))
        port = relay.port
        code, out, err = await run_epop(self.config_path, "test", "--relay", f"[::1]:{port}")
        self.assertEqual(code, 0, err)
        self.assertEqual((await run_epop(self.config_path, "config", "set", "relay", "::1"))[0], 0)


class LanguageOptionTests(TestCase):
    async def test_bad_lang_before_help(self) -> None:
        """`epop --lang xx --help` is refused, not answered in English."""
        code, out, err = await run_epop(os.path.abspath(self.mktemp()), "--lang", "xx", "--help")
        self.assertEqual((code, out), (2, b""))
        self.assertEqual(err, "epop: --lang must be one of en, fr\nTry 'epop --help'.\n")

    async def test_bad_lang_points_to_epop_help(self) -> None:
        """`epop --lang de send ...`: the help to read is epop's, where --lang is, not send's."""
        code, _, err = await run_epop(os.path.abspath(self.mktemp()), "--lang", "de", "send", __file__, "--direct")
        self.assertEqual(code, 2)
        self.assertEqual(err, "epop: --lang must be one of en, fr\nTry 'epop --help'.\n")
