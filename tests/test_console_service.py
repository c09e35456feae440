"""
Where the console listens and what twistd epop accepts for it: the
loopback rule, the TLS console, bind failures, the logged URL, and the
relay's own port, which never answers as the console.
"""

from __future__ import annotations

import os
import re
import socket

import trustme
from twisted.internet import reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop.console.service import ConsoleService, ConsoleSettings, listens_locally
from epop.local_tls import RelayTLS
from epop.relay import tap
from epop.relay.service import ListenError
from tests.console_fakes import FakeConsoleBackend, LiveConsole, _client, _cookie
from tests.support import free_port, poll_until


def _tls(testcase: TestCase | SynchronousTestCase) -> tuple[RelayTLS, bytes]:
    """The relay's TLS settings with a trustme certificate for 127.0.0.1, and its CA's PEM."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = testcase.mktemp(), testcase.mktemp()
    with open(cert, "wb") as f:
        f.write(b"".join(pem.bytes() for pem in server.cert_chain_pems))
    server.private_key_pem.write_to_path(key)
    return RelayTLS(cert, key), ca.cert_pem.bytes()

#: How every refusal of a console open to the network ends.
ELSE = "or keep it on this machine (e.g. --console tcp:3359:interface=127.0.0.1) and reach it through SSH"
#: What such a refusal asks for when the relay has no certificate.
CERTIFICATE = (
    "a certificate (--tls-cert and --tls-key, or --tls-cert auto for the relay's own; "
    "the console is then served over HTTPS)"
)


class LoopbackRuleTests(SynchronousTestCase):
    def test_local(self) -> None:
        """127.x.x.x, ::1, localhost and Unix sockets are this machine only."""
        for endpoint in [
            "tcp:3359:interface=127.0.0.1",
            "tcp:3359:interface=127.1.2.3",
            "tcp6:3359:interface=\\:\\:1",
            "tcp:3359:interface=localhost",
            "unix:/run/epop/console.sock",
        ]:
            self.assertTrue(listens_locally(endpoint)[0], endpoint)
            ConsoleSettings(endpoint).check()

    def test_network(self) -> None:
        """Any other address, or none (all addresses), needs TLS and a password, and says which is missing."""
        tls = RelayTLS("cert.pem", "key.pem")
        cases = [
            (ConsoleSettings("tcp:3359:interface=10.1.2.3"),
             "the console listens on 10.1.2.3, not only on this machine: it needs " + CERTIFICATE
             + " and --console-password-file"),
            (ConsoleSettings("tcp:3359", password_file="pw"),
             "the console listens on all addresses, not only on this machine: it needs " + CERTIFICATE),
            (ConsoleSettings("tcp6:3359:interface=\\:\\:", tls=tls),
             "the console listens on all addresses, not only on this machine: it needs --console-password-file"),
            (ConsoleSettings("tcp:3359:interface=relay.example", tls=tls),
             "the console listens on relay.example, not only on this machine: it needs --console-password-file"),
        ]
        for settings, message in cases:
            with self.assertRaises(ValueError) as raised:
                settings.check()
            self.assertEqual(str(raised.exception), message + "; " + ELSE)
        ConsoleSettings("tcp:3359:interface=10.1.2.3", "pw", tls).check()

    def test_served_tls(self) -> None:
        """The relay's TLS serves the console on the network only: this machine talks to itself in plain HTTP."""
        tls = RelayTLS("cert.pem", "key.pem")
        for endpoint in ["tcp:3359:interface=127.0.0.1", "tcp6:3359:interface=\\:\\:1", "unix:/run/epop/console.sock"]:
            self.assertIsNone(ConsoleSettings(endpoint, tls=tls).served_tls, endpoint)
        for endpoint in ["tcp:3359", "tcp:3359:interface=10.1.2.3"]:
            self.assertIs(ConsoleSettings(endpoint, "pw", tls).served_tls, tls, endpoint)
        self.assertIsNone(ConsoleSettings("tcp:3359", "pw").served_tls)

    def test_endpoint_kinds(self) -> None:
        """ssl: and nonsense are refused: TLS comes from --tls-cert."""
        for endpoint in ["ssl:3359", "tcp:notaport", "carrier-pigeon:1"]:
            with self.assertRaises(ValueError):
                ConsoleSettings(endpoint).check()


class OptionsTests(SynchronousTestCase):
    """twistd epop's console options."""

    def parse(self, *args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(["--no-check", "--journal", self.mktemp(), *args])
        return options

    def test_default(self) -> None:
        self.assertEqual(self.parse().console, ConsoleSettings("tcp:3359:interface=127.0.0.1"))

    def test_none(self) -> None:
        """--console none: no console service."""
        options = self.parse("--console", "none")
        self.assertIsNone(options.console.endpoint)
        top = tap.makeService(options)
        self.assertEqual([s for s in top if isinstance(s, ConsoleService)], [])

    def test_console_service_added(self) -> None:
        top = tap.makeService(self.parse("--console", "tcp:0:interface=127.0.0.1"))
        [console] = [s for s in top if isinstance(s, ConsoleService)]
        self.assertEqual(console.settings.endpoint, "tcp:0:interface=127.0.0.1")

    def test_network_refused(self) -> None:
        with self.assertRaises(usage.UsageError) as raised:
            self.parse("--console", "tcp:3359:interface=10.1.2.3")
        self.assertEqual(
            str(raised.exception),
            "--console: the console listens on 10.1.2.3, not only on this machine: it needs "
            + CERTIFICATE + " and --console-password-file; " + ELSE,
        )

    def test_network_refused_in_french(self) -> None:
        """
        In French, every part of the refusal is French (where it listens,
        the example), and it names --tls-cert auto as a way to the certificate.
        """
        with self.assertRaises(usage.UsageError) as raised:
            self.parse("--lang", "fr", "--console", "tcp:4397")
        self.assertEqual(
            str(raised.exception),
            "--console : la console écoute sur toutes les adresses, pas seulement sur cette machine : il lui "
            "faut un certificat (--tls-cert et --tls-key, ou --tls-cert auto pour celui du relais ; la "
            "console est alors servie en HTTPS) et --console-password-file ; ou gardez-la sur cette machine "
            "(par ex. --console tcp:3359:interface=127.0.0.1) et atteignez-la par SSH",
        )

    def test_port_out_of_range(self) -> None:
        """The console's port is checked when the options are read, as --listen's are."""
        for endpoint in ["tcp:99999:interface=127.0.0.1", "tcp6:-1:interface=\\:\\:1"]:
            with self.assertRaises(usage.UsageError) as raised:
                self.parse("--console", endpoint)
            self.assertEqual(
                str(raised.exception), f"--console: {endpoint}: the port must be a number from 0 to 65535"
            )

    def test_network_with_tls_and_password(self) -> None:
        tls, _ = _tls(self)
        password = self.mktemp()
        with open(password, "w") as f:
            f.write("pw\n")
        options = self.parse(
            "--console", "tcp:3359:interface=10.1.2.3", "--console-password-file", password,
            "--tls-cert", tls.cert, "--tls-key", tls.key,
        )
        self.assertEqual(options.console, ConsoleSettings("tcp:3359:interface=10.1.2.3", password, options.tls))

    def test_unreadable_password_file(self) -> None:
        missing = self.mktemp()
        with self.assertRaises(usage.UsageError) as raised:
            self.parse("--console-password-file", missing)
        self.assertIn("--console-password-file: cannot read the console password file given", str(raised.exception))

    def test_where_the_console_saves(self) -> None:
        """
        With --config, that file, and once the console saved it, SIGHUP's
        comparison starts from what it saved; without, a file beside the
        journal, not read at start.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("[epop]\nallow = 127.0.0.1\n")
        options = self.parse("--config", path, "--listen", "tcp:0")
        files = tap.console_files(options)
        self.assertEqual((files.config, files.config_in_use), (path, True))
        self.assertIn("listen", files.overridden)
        with open(path, "a") as f:
            f.write("idle-timeout = 60\n")
        assert files.saved is not None
        files.saved()
        assert options.settings_file is not None
        self.assertEqual(options.settings_file.values["idle-timeout"], 60.0)

        journal = os.path.abspath(self.mktemp())
        files = tap.console_files(self.parse("--journal", journal))
        self.assertEqual(files.config, os.path.join(os.path.dirname(journal), "epop-relay.ini"))
        self.assertFalse(files.config_in_use)
        self.assertIsNone(files.saved)

    def test_no_listen_at_start_needs_the_console(self) -> None:
        """Without a console nothing could start listening: refused, saying why."""
        self.assertFalse(self.parse("--no-listen-at-start").settings().listen_at_start)
        self.assertTrue(self.parse().settings().listen_at_start)
        with self.assertRaises(usage.UsageError) as raised:
            self.parse("--no-listen-at-start", "--console", "none")
        self.assertEqual(
            str(raised.exception),
            "--no-listen-at-start needs the console (not --console none): only the console can "
            "start listening then",
        )

    def test_settings_file(self) -> None:
        """Both are settings-file keys; a mistake there names the file and line."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("[epop]\nconsole = tcp:3359\n")
        with self.assertRaises(usage.UsageError) as raised:
            self.parse("--config", path)
        self.assertTrue(str(raised.exception).startswith(f"{path}, line 2: console: the console listens on all"))


class ServiceTests(TestCase):
    def test_logs_url(self) -> None:
        """Once listening, one line with the real port and a 43-character token."""
        console = LiveConsole(self)
        [event] = [e for e in console.events if e.get("log_format", "").startswith("Console:")]
        self.assertEqual(event["log_format"], "Console: open {url} in a browser on this machine")
        self.assertRegex(event["url"], rf"^http://127\.0\.0\.1:{console.port}/\?token=[\w-]{{43}}$")

    def test_port_taken(self) -> None:
        """A port that cannot be bound raises ListenError naming the console's endpoint."""
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        endpoint = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        service = ConsoleService(reactor, FakeConsoleBackend(), ConsoleSettings(endpoint))
        error = self.assertRaises(ListenError, service.privilegedStartService)
        self.assertIn(f"cannot listen on {endpoint} (the console)", str(error))
        self.assertIn("already listening", str(error))

    async def test_stops_listening(self) -> None:
        console = LiveConsole(self)
        await console.service.stopService()
        with self.assertRaises(ConnectionRefusedError):
            await console.request("GET", "/static/console.css")

    async def test_tls(self) -> None:
        """
        On the network under TLS: HTTPS with the relay's certificate, a
        Secure cookie, and an https Origin.
        """
        tls, ca_pem = _tls(self)
        # Served as on the network, while listening on loopback only (tests never listen beyond it).
        console = LiveConsole(self, password="pw", tls=tls, ca_pem=ca_pem, served_as_on_the_network=True)
        [url] = console.logged_urls()
        self.assertTrue(url.startswith("https://"), url)
        self.assertEqual(console.origin, f"https://127.0.0.1:{console.port}")
        token = url.partition("/?token=")[2]
        response = await console.client.get(f"{console.origin}/?token={token}", allow_redirects=False)
        self.assertEqual(response.code, 303)
        [header] = response.headers.getRawHeaders(b"Set-Cookie")
        self.assertIn("secure", [a.strip().lower() for a in header.decode().split(";")])
        cookie = _cookie(response)
        state = await console.get_json("/api/state", cookie)
        stop = await console.post("/api/listening", cookie, state["csrf"], {"listening": False})
        self.assertEqual(stop.code, 200)
        await stop.content()
        plain = await console.post(
            "/api/listening", cookie, state["csrf"], {"listening": False},
            headers={"Origin": f"http://127.0.0.1:{console.port}"},
        )
        self.assertEqual(plain.code, 403)
        await plain.content()

    async def test_loopback_plain_under_tls(self) -> None:
        """
        On loopback, the relay's TLS settings aside: plain HTTP that a client
        without the relay's authority opens, and a cookie not marked Secure
        (a browser would not send it back over HTTP).
        """
        tls, _ = _tls(self)
        console = LiveConsole(self, tls=tls)
        [url] = console.logged_urls()
        self.assertTrue(url.startswith(f"http://127.0.0.1:{console.port}/?token="), url)
        response = await console.client.get(url, allow_redirects=False)
        self.assertEqual(response.code, 303)
        [header] = response.headers.getRawHeaders(b"Set-Cookie")
        self.assertNotIn("secure", [a.strip().lower() for a in header.decode().split(";")])
        await response.content()

    async def test_password_never_logged(self) -> None:
        """Signing in, right and wrong, logs no password, and requests are not logged one by one."""
        console = LiveConsole(self, password="hunter2-secret")
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": console.origin}
        for password in (b"hunter2-secret", b"wrong-guess"):
            response = await console.request("POST", "/sign-in", headers=headers, data=b"password=" + password)
            await response.content()
        from twisted.logger import formatEvent

        logged = repr(console.events) + "".join(formatEvent(e) for e in console.events)
        self.assertIn("wrong password", logged)
        self.assertNotIn("hunter2", logged)
        self.assertNotIn("wrong-guess", logged)
        self.assertNotIn("/sign-in", logged)


class RelayPortTests(TestCase):
    """The console is served only on its own port."""

    async def test_not_on_relay_port(self) -> None:
        relay_port = free_port()
        options = tap.Options()
        options.parseOptions([
            "--no-check", "--journal", self.mktemp(),
            "--listen", f"tcp:{relay_port}:interface=127.0.0.1",
            "--console", "tcp:0:interface=127.0.0.1",
        ])
        top = tap.makeService(options)
        top.privilegedStartService()
        top.startService()
        self.addCleanup(top.stopService)
        [console] = [s for s in top if isinstance(s, ConsoleService)]
        assert console.port is not None
        client = _client(reactor, None)
        answer = await client.get(f"http://127.0.0.1:{relay_port}/api/state", allow_redirects=False)
        body = await answer.content()
        # The relay's own HTTP-proxy answer to a plain request, not the console's JSON.
        self.assertEqual(answer.code, 405)
        self.assertTrue(body.startswith(b"This is an e-POP relay: use it as an HTTPS proxy"), body)
        own = await client.get(f"http://127.0.0.1:{console.port.getHost().port}/api/state", allow_redirects=False)
        self.assertEqual((own.code, await own.json()), (401, {"error": "signed-out"}))


class TwistdTests(TestCase):
    """A real twistd epop: console mistakes end the start with one line."""

    timeout = 60

    async def run_twistd(self, *arguments: str) -> tuple[str, int]:
        import sys

        from twisted.internet.utils import getProcessOutputAndValue

        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=",
             "epop", "--no-check", "--journal", os.path.join(folder, "journal.jsonl"),
             "--listen", f"tcp:{free_port()}:interface=127.0.0.1", *arguments],
            env=dict(os.environ), path=folder,
        )
        return (out + err).decode(errors="replace"), code

    async def test_network_without_tls(self) -> None:
        text, code = await self.run_twistd("--console", "tcp:0")
        self.assertNotEqual(code, 0)
        self.assertIn(
            "--console: the console listens on all addresses, not only on this machine: it needs "
            + CERTIFICATE + " and --console-password-file",
            text,
        )
        self.assertNotIn("Traceback", text)

    async def test_own_authority_console_on_loopback(self) -> None:
        """
        twistd epop --tls-cert auto with the default kind of console (on
        loopback): the address it logs is http://, and opens without the
        relay's authority, as curl on the relay's machine does.
        """
        from tests.test_drain import start_relay_process

        console_port = free_port()
        relay = await start_relay_process(
            self, free_port(), "--tls-cert", "auto", "--tls-dir", os.path.abspath(self.mktemp()),
            "--console", f"tcp:{console_port}:interface=127.0.0.1",
            environ={"LANG": "C.UTF-8", "LC_ALL": "", "LC_MESSAGES": ""},
        )
        said = await poll_until(reactor, lambda: relay.ended.called or "?token=" in relay.text(), 300, 0.1)
        self.assertTrue(said and not relay.ended.called, relay.text())
        found = re.search(r"Console: open (\S+) in a browser on this machine", relay.text())
        assert found is not None, relay.text()
        url = found.group(1)
        self.assertTrue(url.startswith(f"http://127.0.0.1:{console_port}/?token="), url)
        response = await _client(reactor, None).get(url, allow_redirects=False)
        self.assertEqual(response.code, 303)
        await response.content()

    async def test_console_port_taken(self) -> None:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        endpoint = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        text, code = await self.run_twistd("--console", endpoint)
        self.assertNotEqual(code, 0)
        self.assertIn(
            f"epop: cannot listen on {endpoint} (the console): Address already in use "
            "(is another relay or program already listening there?)",
            text,
        )
        self.assertNotIn("Traceback", text)
