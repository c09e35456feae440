"""
Proxy authentication for workstations (C{--tunnel-users FILE}): the
htpasswd file and what the relay refuses in it, the check off the reactor
thread and its memory of recent successes, the session waiting on the
check, and, end to end, curl and C{epop send} through a real relay to the
real sandbox with right, wrong and missing credentials.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import bcrypt
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import eventAsText, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from epop.epmsi.proxy import ProxyConfig
from epop.journal.table import outcome_label
from epop.relay import tap, tunnel_users
from epop.relay.destinations import Destinations
from epop.relay.http_proxy import HttpProxyFactory, HttpProxySession
from epop.relay.protocol import RelayFactory
from epop.relay.settings import RelaySettings, RelaySettingsError
from epop.relay.tunnel_users import TunnelUsers, basic_credentials, read_users
from epop.workstation.client import send_file
from tests.programs import find_program
from tests.relaying import exchange, start_relay
from tests.support import make_trustme_sandbox, poll_until, write_random_file
from tests.test_cli import run_epop
from tests.test_drain import free_port, start_relay_process

#: Cost 4, bcrypt's least: these tests check behaviour, not strength.
_COST = 4


def bcrypt_line(user: str, password: str, prefix: bytes = b"2b") -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(_COST, prefix=prefix))
    return f"{user}:{hashed.decode('ascii')}"


def write_users(testcase: SynchronousTestCase, *lines: str) -> str:
    path = os.path.abspath(testcase.mktemp())
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def htpasswd_file(testcase: SynchronousTestCase, *users: tuple[str, str]) -> str:
    """A users file made by Apache's own C{htpasswd -B}, as an administrator would."""
    htpasswd = find_program("htpasswd")
    if htpasswd is None:
        if os.environ.get("EPOP_REQUIRE_SQUID") == "1":
            raise AssertionError("htpasswd is required: install apache2-utils")
        raise SkipTest("htpasswd not found: install apache2-utils")
    path = os.path.abspath(testcase.mktemp())
    for index, (user, password) in enumerate(users):
        create = ["-c"] if index == 0 else []
        subprocess.run(
            [htpasswd, "-B", "-C", str(_COST), "-i", *create, path, user],
            input=password.encode(), capture_output=True, check=True, timeout=30,
        )
    return path


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class FileTests(SynchronousTestCase):
    """What the relay takes in the file, and the words for what it does not."""

    def test_htpasswd_file(self) -> None:
        """htpasswd -B writes $2y$ entries: taken."""
        path = htpasswd_file(self, ("alice", "secret"), ("bob", "other"))
        users = read_users(path)
        self.assertEqual(sorted(users), ["alice", "bob"])
        self.assertTrue(users["alice"].startswith(b"$2y$"))
        self.assertTrue(bcrypt.checkpw(b"secret", users["alice"]))

    def test_every_bcrypt_prefix(self) -> None:
        """$2a$, $2b$ and $2y$ alike; blank lines and # comments skipped, as Apache does."""
        line_2y = bcrypt_line("carol", "c").replace("$2b$", "$2y$", 1)
        path = write_users(self, "# DIM", bcrypt_line("alice", "a", b"2a"), "", bcrypt_line("bob", "b"), line_2y)
        users = read_users(path)
        self.assertEqual(sorted(users), ["alice", "bob", "carol"])
        self.assertTrue(bcrypt.checkpw(b"c", users["carol"]))

    def test_refusals(self) -> None:
        """Each problem its own message, naming the file and the line."""
        good = bcrypt_line("alice", "secret")
        cases = [
            (["bob:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ="], "line 1: user 'bob': only bcrypt entries are accepted (htpasswd -B)"),
            (["bob:$apr1$x1ShkDAu$P3ZnH6Kdkz1.qmSmPF04a/"], "line 1: user 'bob': only bcrypt entries are accepted (htpasswd -B)"),
            ([good, "bob:xyJ3h8Kw4uaAQ"], "line 2: user 'bob': only bcrypt entries are accepted (htpasswd -B)"),
            (["bob:plainpassword"], "line 1: user 'bob': only bcrypt entries are accepted (htpasswd -B)"),
            ([good, "", good], "line 3: user 'alice' is already on line 1"),
            (["just a line"], "line 1: expected USER:HASH, as htpasswd -B writes it"),
            ([":" + good.split(":", 1)[1]], "line 1: expected USER:HASH"),
            (["bob:"], "line 1: expected USER:HASH"),
            (["bob:$2y$05$tooshort"], "line 1: user 'bob': the bcrypt entry is damaged"),
            ([], "the users file has no users; add one with htpasswd -B"),
            (["# only a comment", ""], "the users file has no users"),
        ]
        for lines, problem in cases:
            path = write_users(self, *lines)
            error = self.assertRaises(ValueError, read_users, path)
            self.assertIn(problem, str(error), lines)
            self.assertTrue(str(error).startswith(path), str(error))
            # A plain password in the file is never repeated.
            self.assertNotIn("plainpassword", str(error))

    def test_unreadable(self) -> None:
        missing = os.path.abspath(self.mktemp())
        error = self.assertRaises(ValueError, read_users, missing)
        self.assertTrue(str(error).startswith("cannot read the users file given: No such file or directory ("), error)
        self.assertNotIn(missing, str(error))
        binary = write_users(self)
        Path(binary).write_bytes(b"alice:\xff\xfe\n")
        error = self.assertRaises(ValueError, read_users, binary)
        self.assertEqual(str(error), f"{binary}: the users file is not UTF-8 text")

    def test_same_refusal_everywhere(self) -> None:
        """The Python API, the command line and the settings file say the same thing."""
        path = write_users(self, bcrypt_line("alice", "a"), "bob:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=")
        problem = f"{path}, line 2: user 'bob': only bcrypt entries are accepted (htpasswd -B)"
        error = self.assertRaises(RelaySettingsError, RelaySettings, tunnel_users=path)
        self.assertEqual(str(error), f"tunnel_users: {problem}")
        self.assertRaises(RelaySettingsError, RelaySettings, tunnel_users=["a"])
        journal = self.mktemp()
        error = self.assertRaises(
            usage.UsageError, tap.Options().parseOptions, ["--tunnel-users", path, "--journal", journal]
        )
        self.assertEqual(str(error), f"--tunnel-users: {problem}")
        config = os.path.abspath(self.mktemp())
        Path(config).write_text(f"[epop]\ntunnel-users = {path}\n", encoding="utf-8")
        error = self.assertRaises(
            usage.UsageError, tap.Options().parseOptions, ["--config", config, "--journal", journal]
        )
        self.assertEqual(str(error), f"{config}, line 2: tunnel-users: {problem}")

    def test_option_reaches_settings(self) -> None:
        path = write_users(self, bcrypt_line("alice", "a"))
        options = tap.Options()
        options.parseOptions(["--tunnel-users", path, "--journal", self.mktemp()])
        self.assertEqual(options.settings().tunnel_users, path)
        self.assertIn("--tunnel-users", options.__str__())


class CredentialsHeaderTests(SynchronousTestCase):
    def test_basic(self) -> None:
        self.assertEqual(basic_credentials(basic("alice", "s:e:cret")), ("alice", "s:e:cret"))
        self.assertEqual(basic_credentials("basic " + base64.b64encode("zoé:été".encode()).decode()), ("zoé", "été"))
        latin1 = base64.b64encode("zoé:été".encode("latin-1")).decode()
        self.assertEqual(basic_credentials("Basic " + latin1), ("zoé", "été"))

    def test_none_given(self) -> None:
        """No header, or another scheme: no credentials (asked for)."""
        self.assertIsNone(basic_credentials(""))
        self.assertIsNone(basic_credentials("Negotiate YIIGhgYJKoZIhvcSAQICAQBuggZ1"))

    def test_unreadable(self) -> None:
        """Unreadable ones are nobody's: refused as wrong."""
        self.assertEqual(basic_credentials("Basic %%%"), ("", ""))
        self.assertEqual(basic_credentials("Basic " + base64.b64encode(b"nocolon").decode()), ("", ""))


class _Threads:
    """Stands for the thread pool: records each call, fired by the test."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, function: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((function, args, d))
        return d

    def run(self) -> None:
        """Run what was asked, as the pool's thread would, and fire its Deferred."""
        for function, args, d in self.calls:
            if not d.called:
                d.callback(function(*args))


class CheckTests(SynchronousTestCase):
    """The check: off the reactor thread, remembered when right, never when wrong."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.threads = _Threads()
        self.path = write_users(self, bcrypt_line("alice", "secret"), bcrypt_line("bob", "other"))
        self.users = TunnelUsers(self.path, self.clock, self.threads)

    def check(self, user: str, password: str) -> bool:
        d = self.users.check(user, password)
        self.threads.run()
        return self.successResultOf(d)

    def test_in_a_thread(self) -> None:
        """bcrypt runs where in_thread says; the reactor thread only waits for its answer."""
        d = self.users.check("alice", "secret")
        self.assertNoResult(d)
        [(function, args, _)] = self.threads.calls
        self.assertIs(function, tunnel_users._verify)
        self.assertEqual(args[0], b"secret")
        self.threads.run()
        self.assertTrue(self.successResultOf(d))

    def test_remembered(self) -> None:
        """A second tunnel within 10 minutes costs no bcrypt run; after them, one."""
        self.assertTrue(self.check("alice", "secret"))
        self.assertEqual(len(self.threads.calls), 1)
        self.clock.advance(599)
        self.assertTrue(self.successResultOf(self.users.check("alice", "secret")))
        self.assertEqual(len(self.threads.calls), 1)
        self.clock.advance(2)
        self.assertTrue(self.check("alice", "secret"))
        self.assertEqual(len(self.threads.calls), 2)

    def test_wrong_never_remembered(self) -> None:
        """A wrong password is checked each time, and never matches a remembered right one."""
        self.assertTrue(self.check("alice", "secret"))
        self.assertFalse(self.check("alice", "Secret"))
        self.assertFalse(self.check("alice", "Secret"))
        self.assertEqual(len(self.threads.calls), 3)
        self.assertTrue(self.successResultOf(self.users.check("alice", "secret")))

    def test_unknown_user(self) -> None:
        """Refused after a bcrypt run all the same, so that timing does not tell who exists."""
        self.assertFalse(self.check("mallory", "secret"))
        self.assertEqual(len(self.threads.calls), 1)
        # Even if the dummy hash matched, no user means no.
        d = self.users.check("mallory", "x")
        self.threads.calls[-1][2].callback(True)
        self.assertFalse(self.successResultOf(d))

    def test_bounded(self) -> None:
        users = TunnelUsers(self.path, self.clock, self.threads, remember_entries=1)
        for user, password in (("alice", "secret"), ("bob", "other")):
            users.check(user, password)
            self.threads.run()
        self.assertTrue(self.successResultOf(users.check("bob", "other")))
        self.assertEqual(len(self.threads.calls), 2)
        users.check("alice", "secret")  # forgotten: bob came after
        self.assertEqual(len(self.threads.calls), 3)

    def test_long_password(self) -> None:
        """Past 72 bytes bcrypt reads no further (htpasswd -B neither): no error."""
        path = write_users(self, bcrypt_line("carol", "x" * 72))
        users = TunnelUsers(path, self.clock, self.threads)
        d = users.check("carol", "x" * 100)
        self.threads.run()
        self.assertTrue(self.successResultOf(d))

    def test_file_changed(self) -> None:
        """A changed file is read again; a remembered password of a changed entry is not trusted."""
        self.assertTrue(self.check("alice", "secret"))
        Path(self.path).write_text(bcrypt_line("alice", "new") + "\n" + bcrypt_line("dave", "d") + "\n")
        self.assertFalse(self.check("alice", "secret"))
        self.assertTrue(self.check("alice", "new"))
        self.assertTrue(self.check("dave", "d"))
        self.assertFalse(self.check("bob", "other"))

    def test_file_broken_later(self) -> None:
        """A file that no longer reads keeps the users the relay had, and says why."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        Path(self.path).write_text("alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n")
        self.assertTrue(self.check("alice", "secret"))
        [text] = [eventAsText(e) for e in events if "--tunnel-users" in eventAsText(e)]
        self.assertIn("only bcrypt entries are accepted", text)
        self.assertIn("keeps the 2 user(s) it had", text)


class RealThreadTests(TestCase):
    async def test_bcrypt_off_the_reactor_thread(self) -> None:
        """With the reactor's own pool, bcrypt never runs on the reactor thread."""
        threads = []
        original = tunnel_users._verify

        def verify(password: bytes, hashed: bytes) -> bool:
            threads.append(threading.current_thread())
            return original(password, hashed)

        self.patch(tunnel_users, "_verify", verify)
        users = TunnelUsers.for_reactor(write_users(self, bcrypt_line("alice", "secret")), reactor)
        self.assertTrue(await users.check("alice", "secret"))
        self.assertFalse(await users.check("alice", "wrong"))
        self.assertEqual(len(threads), 2)
        self.assertNotIn(threading.main_thread(), threads)


def _session(users: TunnelUsers) -> tuple[RelayFactory, HttpProxySession, StringTransport, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    relay = RelayFactory(reactor, None, "run")  # type: ignore[arg-type]
    factory = HttpProxyFactory(relay, Destinations(None, extra=["10.0.0.9:443"]), users=users)
    session = factory.buildProtocol(IPv4Address("TCP", "10.1.1.1", 5000))
    client = StringTransport(peerAddress=IPv4Address("TCP", "10.1.1.1", 5000))
    session.makeConnection(client)
    return relay, session, client, reactor


class SessionTests(SynchronousTestCase):
    """The session while the check runs: the client may go, the relay may stop."""

    def setUp(self) -> None:
        self.threads = _Threads()
        path = write_users(self, bcrypt_line("alice", "secret"))
        self.users = TunnelUsers(path, Clock(), self.threads)
        self.relay, self.session, self.client, self.reactor = _session(self.users)

    def connect(self, password: str, more: bytes = b"") -> None:
        head = f"CONNECT 10.0.0.9:443 HTTP/1.1\r\nProxy-Authorization: {basic('alice', password)}\r\n\r\n"
        self.session.dataReceived(head.encode() + more)

    def test_right(self) -> None:
        """Right: the tunnel opens, and what came with and after the head goes through it."""
        self.connect("secret", b"hel")
        self.assertEqual(self.client.producerState, "paused")
        self.session.dataReceived(b"lo")
        self.assertEqual(self.reactor.tcpClients, [])
        self.threads.run()
        [(host, port, connecting, _timeout, _bind)] = self.reactor.tcpClients
        self.assertEqual((host, port), ("10.0.0.9", 443))
        far = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 443))
        connecting.buildProtocol(None).makeConnection(far)
        self.assertEqual(self.client.value(), b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.assertEqual(far.value(), b"hello")
        self.assertEqual(self.session.user, "alice")

    def test_wrong(self) -> None:
        self.connect("nope", b"hello")
        self.threads.run()
        answer = self.client.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n"), answer)
        self.assertIn(b'\r\nProxy-Authenticate: Basic realm="e-POP relay", charset="UTF-8"\r\n', answer)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertTrue(self.client.disconnecting)

    def test_client_gone_meanwhile(self) -> None:
        """The client hangs up during the check: the late answer opens nothing, writes nothing."""
        self.connect("secret")
        self.session.connectionLost(None)  # type: ignore[arg-type]
        self.threads.run()
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.client.value(), b"")
        self.assertEqual(self.relay.connections, {})

    def test_relay_stopping_meanwhile(self) -> None:
        """The relay stops during the check: 503 at once; the late answer opens nothing."""
        self.connect("secret")
        self.relay.drain(10)
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 503 "), self.client.value())
        written = self.client.value()
        self.threads.run()
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.client.value(), written)

    def test_check_failed(self) -> None:
        """The check itself broke (not a wrong password): 503, logged, the password not."""
        self.session.factory.users = _Broken()  # type: ignore[assignment]
        self.connect("secret")
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 503 "), self.client.value())
        self.assertIn(b"could not check the user name and password", self.client.value())
        [failure] = self.flushLoggedErrors(OSError)
        self.assertNotIn("secret", str(failure))


class _Broken:
    def check(self, user: str, password: str) -> Deferred[bool]:
        return fail(OSError("thread pool gone"))


class _Recorder:
    """Every log event of the test, as twistd's log file would show it, and whole."""

    def __init__(self, testcase: TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def text(self) -> str:
        return "\n".join(eventAsText(e, includeTraceback=True) + "\n" + repr(e) for e in self.events)


class ThroughRelayTests(TestCase):
    """Real curl and epop through a real relay with --tunnel-users, to the real sandbox."""

    timeout = 60

    def setUp(self) -> None:
        self.log = _Recorder(self)
        self.sandbox = make_trustme_sandbox(self, reactor)
        self.sandbox_connections: list[object] = []
        build = self.sandbox.site.buildProtocol

        def counted(address: object) -> Any:
            self.sandbox_connections.append(address)
            return build(address)

        self.sandbox.site.buildProtocol = counted  # type: ignore[method-assign]
        self.users_path = htpasswd_file(self, ("alice", "secret"), ("zoé", "été:2026"))
        self.journal_path = os.path.abspath(self.mktemp())
        self.relay = start_relay(
            self, reactor, self.sandbox.url, self.sandbox.ca_path,
            tunnel_users=self.users_path, journal=self.journal_path, file_journal=True,
        )
        self.path = self.mktemp()
        self.sha = write_random_file(self.path, 200 * 1024 + 3, seed=12)
        self.target = self.sandbox.url[len("https://"):]

    async def curl(self, *options: str) -> tuple[bytes, bytes, int]:
        out, err, code = await getProcessOutputAndValue(
            "curl",
            [
                "-sS", "--max-time", "60", "-x", f"http://127.0.0.1:{self.relay.port}",
                *options, "--cacert", self.sandbox.ca_path,
                "-F", f"theFile=@{self.path}", f"{self.sandbox.url}/syriusUpload.do",
            ],
            env=dict(os.environ, no_proxy="", NO_PROXY=""),
        )
        return out, err, code

    async def closed(self) -> dict[str, Any]:
        self.assertTrue(await poll_until(reactor, lambda: self.relay.records("connection-closed")))
        [closed] = self.relay.records("connection-closed")
        return closed

    def assert_secrets_kept(self, *secrets: str) -> None:
        """Neither the journal nor the log holds a password or an Authorization header."""
        journal = Path(self.journal_path).read_text(encoding="utf-8")
        log = self.log.text()
        # Both hold the connection: they are the ones to search.
        self.assertIn('"type":"connection-closed"', journal)
        self.assertIn("tunnel-credentials-wrong" if "wrong" in journal else "completed", log)
        for secret in secrets:
            for where, text in (("journal", journal), ("log", log)):
                self.assertNotIn(secret, text, where)
                self.assertNotIn(base64.b64encode(secret.encode()).decode(), text, where)
        for user in ("alice", "zoé"):
            for password in secrets:
                header = basic(user, password)[len("Basic "):]
                self.assertNotIn(header, journal)
                self.assertNotIn(header, log)
        self.assertNotIn("Proxy-Authorization", journal + log)
        self.assertNotIn("Basic ", journal + log)

    async def test_curl_with_credentials(self) -> None:
        """curl --proxy-user uploads; the tunnel's journal object names the user."""
        out, err, code = await self.curl("--proxy-user", "alice:secret")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["files"][0]["sha256"], self.sha)
        closed = await self.closed()
        self.assertEqual(closed["user"], "alice")
        [made] = self.relay.records("object-instantiated")
        [released] = self.relay.records("object-released")
        self.assertEqual((made["user"], released["user"]), ("alice", "alice"))
        self.assertEqual(released["outcome"], "completed")
        self.assertEqual(len(self.sandbox_connections), 1)
        self.assert_secrets_kept("secret")
        self.assertIn(f" (user alice) to {self.target} closed: ", closed["description"])
        await self.assert_views_name("alice", closed)

    async def assert_views_name(self, user: str | None, closed: dict[str, Any]) -> None:
        """
        `epop journal` (French and English), `epop connections` and its --json,
        run on the relay's journal file, name the user; or have no user at all.
        """
        config = os.path.abspath(self.mktemp())
        code, english, err = await run_epop(config, "--lang", "en", "journal", self.journal_path)
        self.assertEqual(code, 0, err)
        code, french, err = await run_epop(config, "--lang", "fr", "journal", self.journal_path)
        self.assertEqual(code, 0, err)
        code, table, err = await run_epop(config, "--lang", "en", "connections", self.journal_path)
        self.assertEqual(code, 0, err)
        code, table_fr, err = await run_epop(config, "--lang", "fr", "connections", self.journal_path)
        self.assertEqual(code, 0, err)
        code, as_json, err = await run_epop(config, "connections", self.journal_path, "--json")
        self.assertEqual(code, 0, err)
        [summary] = [json.loads(line) for line in as_json.splitlines()]
        header, _, row = table.decode().splitlines()
        header_fr = table_fr.decode().splitlines()[0]
        reason = closed["reason"]
        if user is None:
            self.assertNotIn("user", summary)
            self.assertNotIn("User", header)
            self.assertNotIn(", user ", english.decode())
            self.assertNotIn("utilisateur", french.decode())
            return
        self.assertEqual(summary["user"], user)
        self.assertEqual(header.split()[:3], ["Connection", "Client", "User"])
        self.assertEqual(header_fr.split()[:3], ["Connexion", "Client", "Utilisateur"])
        self.assertEqual(row.split()[2], user)
        self.assertIn(f"Connection id: 1, user {user}, to {self.target}, {reason}; ", english.decode())
        label = outcome_label(reason).render("fr")
        self.assertIn(f"Id de connexion : 1, utilisateur {user}, vers {self.target}, {label} ; ", french.decode())
        if self.relay.records("object-instantiated"):
            self.assertIn(f"Instantiated object: tunnel to {self.target}, user {user}\n", english.decode())
            self.assertIn(f"Type de l'objet instancié : tunnel vers {self.target}, utilisateur {user}\n", french.decode())

    async def test_curl_utf8_user(self) -> None:
        """A user name and password out of ASCII, with a ':' in the password (RFC 7617, UTF-8)."""
        out, err, code = await self.curl("--proxy-user", "zoé:été:2026")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["files"][0]["sha256"], self.sha)
        closed = await self.closed()
        self.assertEqual(closed["user"], "zoé")
        await self.assert_views_name("zoé", closed)

    async def test_curl_wrong_password(self) -> None:
        out, err, code = await self.curl("--proxy-user", "alice:guess")
        self.assertNotEqual(code, 0)
        self.assertIn(b"407", err)
        closed = await self.closed()
        self.assertEqual((closed["reason"], closed["user"]), ("tunnel-credentials-wrong", "alice"))
        self.assertEqual(self.sandbox_connections, [])
        self.assert_secrets_kept("guess")
        self.assertIn(f" (user alice) to {self.target} closed: tunnel-credentials-wrong", closed["description"])
        await self.assert_views_name("alice", closed)

    async def refused(self, headers: str, reason: str) -> str:
        request = f"CONNECT {self.target} HTTP/1.1\r\nHost: {self.target}\r\n{headers}\r\n"
        answer = await exchange(reactor, self.relay.port, request.encode())
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n"), answer)
        self.assertIn(b'\r\nProxy-Authenticate: Basic realm="e-POP relay", charset="UTF-8"\r\n', head)
        self.assertIn(b"text/plain; charset=utf-8", head)
        self.assertEqual((await self.closed())["reason"], reason)
        self.assertEqual(self.sandbox_connections, [])
        self.assertEqual(self.relay.records("object-instantiated"), [])
        return body.decode("utf-8")

    async def test_missing(self) -> None:
        body = await self.refused("", "tunnel-credentials-missing")
        self.assertIn("This relay asks for a user name and password", body)
        closed = await self.closed()
        self.assertNotIn("user", closed)
        self.assertNotIn("(user", closed["description"])
        await self.assert_views_name(None, closed)

    async def test_missing_french(self) -> None:
        body = await self.refused("Accept-Language: fr-FR,fr;q=0.9\r\n", "tunnel-credentials-missing")
        self.assertIn("Ce relais demande un nom d'utilisateur et un mot de passe", body)

    async def test_other_scheme(self) -> None:
        """NTLM or Negotiate is not Basic: asked for Basic."""
        await self.refused("Proxy-Authorization: NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAGAbEdAAAADw==\r\n", "tunnel-credentials-missing")

    async def test_wrong_password(self) -> None:
        body = await self.refused(f"Proxy-Authorization: {basic('alice', 'Secret')}\r\n", "tunnel-credentials-wrong")
        self.assertIn("The user name or password for this relay is wrong", body)
        self.assert_secrets_kept("Secret")

    async def test_unknown_user(self) -> None:
        await self.refused(f"Proxy-Authorization: {basic('mallory', 'secret')}\r\n", "tunnel-credentials-wrong")
        self.assertEqual((await self.closed())["user"], "mallory")

    async def test_garbled(self) -> None:
        await self.refused("Proxy-Authorization: Basic ***\r\n", "tunnel-credentials-wrong")

    async def test_destination_first(self) -> None:
        """A destination the relay never serves gets its 403, with no password asked."""
        answer = await exchange(reactor, self.relay.port, b"CONNECT www.example.org:443 HTTP/1.1\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 403 "), answer)
        self.assertNotIn(b"Proxy-Authenticate", answer)
        self.assertEqual((await self.closed())["reason"], "destination-not-allowed")

    async def test_epop_send_with_credentials(self) -> None:
        """The workstation's proxy leg sends its Basic credentials: the file arrives."""
        reply = await send_file(
            reactor, self.path, to="/syriusUpload.do", field="theFile", epmsi=self.sandbox.url,
            ca_file=self.sandbox.ca_path, proxy=ProxyConfig("127.0.0.1", self.relay.port, "alice", "secret"),
        )
        self.assertEqual(json.loads(reply.body)["files"][0]["sha256"], self.sha)
        self.assertEqual((await self.closed())["user"], "alice")

    async def test_epop_send_wrong_password(self) -> None:
        """`epop send --direct` with a wrong password says the proxy refused it, and sends nothing."""
        config = os.path.abspath(self.mktemp())
        code, out, err = await run_epop(
            config, "send", self.path, "--direct", "--epmsi", self.sandbox.url,
            "--ca-file", self.sandbox.ca_path, "--to", "/syriusUpload.do", "--field", "theFile",
            "--proxy", f"http://127.0.0.1:{self.relay.port}", "--proxy-user", "alice",
            environ={"EPOP_PROXY_PASSWORD": "guess"},
        )
        self.assertNotEqual(code, 0)
        self.assertIn("the proxy rejected the user name 'alice' or its password (407 Proxy Authentication Required)", err)
        self.assertEqual(self.sandbox_connections, [])
        self.assertEqual((await self.closed())["reason"], "tunnel-credentials-wrong")

    async def test_epop_send_without_credentials(self) -> None:
        code, out, err = await run_epop(
            os.path.abspath(self.mktemp()), "send", self.path, "--direct", "--epmsi", self.sandbox.url,
            "--ca-file", self.sandbox.ca_path, "--to", "/syriusUpload.do", "--field", "theFile",
            "--proxy", f"http://127.0.0.1:{self.relay.port}",
        )
        self.assertNotEqual(code, 0)
        self.assertIn("the proxy demands a user name and password (407 Proxy Authentication Required)", err)
        self.assertEqual(self.sandbox_connections, [])



class TwistdTests(TestCase):
    """A real C{twistd epop --tunnel-users}: its log and journal keep passwords out."""

    timeout = 120

    async def test_passwords_never_written(self) -> None:
        sandbox = make_trustme_sandbox(self, reactor)
        users = htpasswd_file(self, ("alice", "s3cret-right"))
        port = free_port()
        relay = await start_relay_process(
            self, port, "--epmsi", sandbox.url, "--ca-file", sandbox.ca_path, "--tunnel-users", users,
        )
        path = self.mktemp()
        sha = write_random_file(path, 50 * 1024, seed=4)
        codes = []
        for account in ("alice:s3cret-right", "alice:s3cret-wrong", "s3cret-typed-as-user:x"):
            out, err, code = await getProcessOutputAndValue(
                "curl",
                [
                    "-sS", "--max-time", "60", "-x", f"http://127.0.0.1:{port}", "--proxy-user", account,
                    "--cacert", sandbox.ca_path, "-F", f"theFile=@{path}", f"{sandbox.url}/syriusUpload.do",
                ],
                env=dict(os.environ, no_proxy="", NO_PROXY=""),
            )
            codes.append(code)
            if code == 0:
                self.assertEqual(json.loads(out)["files"][0]["sha256"], sha)
        self.assertEqual([code == 0 for code in codes], [True, False, False])
        self.assertIn(await relay.stop(), [(0, None), (None, signal.SIGTERM)])
        reasons = [r["reason"] for r in relay.records() if r["type"] == "connection-closed"]
        self.assertEqual(len(reasons), 3, relay.text())
        self.assertEqual(reasons[1:], ["tunnel-credentials-wrong"] * 2)
        journal = Path(relay.journal).read_text(encoding="utf-8")
        log = relay.text()
        self.assertIn("tunnel-credentials-wrong", log)
        for text in (journal, log):
            for secret in ("s3cret-right", "s3cret-wrong"):
                self.assertNotIn(secret, text)
            for account in ("alice:s3cret-right", "alice:s3cret-wrong"):
                self.assertNotIn(base64.b64encode(account.encode()).decode(), text)
            self.assertNotIn("Proxy-Authorization", text)

    async def test_refused_at_start(self) -> None:
        """A file with another kind of entry: one line from twistd, no traceback, no relay."""
        users = write_users(self, bcrypt_line("alice", "a"), "bob:$apr1$x1ShkDAu$P3ZnH6Kdkz1.qmSmPF04a/")
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=",
             "epop", "--console", "none", "--tunnel-users", users,
             "--journal", os.path.abspath(self.mktemp())],
            env=dict(os.environ), path=os.path.dirname(users),
        )
        text = (out + err).decode(errors="replace")
        self.assertNotEqual(code, 0)
        self.assertIn(
            f"--tunnel-users: {users}, line 2: user 'bob': only bcrypt entries are accepted (htpasswd -B)", text
        )
        self.assertNotIn("Traceback", text)
