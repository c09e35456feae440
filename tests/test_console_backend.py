"""
The console's commands on a real relay (L{RelayConsoleBackend}): real
sockets, the real sandbox over HTTPS, a real settings file and journal.
"""

from __future__ import annotations

import json
import os
import socket
import stat

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from epop.console.backend import ConsoleRefusal, IConsoleBackend
from epop.console.relay_backend import ConsoleFiles, RelayConsoleBackend, listen_address_and_port
from epop.console.rendering import rendered
from epop.epmsi.proxy import ProxyConfig
from epop.relay.settings import SettingKeys, read_settings_file
from epop.relay.tap import Options
from epop.workstation.client import RelayAddress, test_connection
from tests.relaying import start_relay
from tests.support import free_port, make_trustme_sandbox, poll_until

_COMMENTED = """\
# The hospital's relay: ask the IT desk before changing it.
[epop]
# Who may send
allow = 127.0.0.1
"""


class ConsoleBackendTests(TestCase):
    def setUp(self) -> None:
        self.sandbox = make_trustme_sandbox(self, reactor)
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.config = os.path.join(folder, "relay.ini")
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(_COMMENTED)
        self.port = free_port()
        self.relay = start_relay(
            self,
            reactor,
            self.sandbox.url,
            self.sandbox.ca_path,
            file_journal=True,
            journal=os.path.join(folder, "journal.jsonl"),
            listen=(f"tcp:{self.port}:interface=127.0.0.1",),
            allow=("127.0.0.1",),
        )
        self.backend = RelayConsoleBackend(
            reactor, self.relay.service, ConsoleFiles(self.config, config_in_use=True), globalLogPublisher
        )

    def saved(self) -> dict[str, object]:
        return dict(read_settings_file(self.config, SettingKeys.of(Options())).values)

    async def assert_refused(self, port: int) -> None:
        with self.assertRaises(ConnectionRefusedError):
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Protocol())

    async def refusal(self, d: object) -> ConsoleRefusal:
        try:
            await d  # type: ignore[misc]
        except ConsoleRefusal as e:
            return e
        self.fail("no ConsoleRefusal")

    def test_interface(self) -> None:
        verifyObject(IConsoleBackend, self.backend)

    def test_state(self) -> None:
        state = self.backend.state()
        self.assertTrue(state["listening"])
        self.assertFalse(state["editable"])
        self.assertEqual(state["addresses"], [f"127.0.0.1:{self.port}"])
        self.assertEqual(state["settings"]["listen_address"], "127.0.0.1")
        self.assertEqual(state["settings"]["port"], self.port)
        self.assertEqual(state["settings"]["allow"], ["127.0.0.1"])
        self.assertFalse(state["settings"]["allow_all"])
        self.assertFalse(state["settings"]["proxy_enabled"])
        self.assertEqual(state["config"], {"path": self.config, "exists": True, "in_use": True})
        self.assertEqual(state["relay"]["run"], self.relay.service.relay_id)
        json.dumps(state)

    async def test_change_refused_while_listening(self) -> None:
        refused = await self.refusal(self.backend.change_settings({"port": 4000}))
        self.assertEqual((refused.status, refused.code), (409, "listening"))
        self.assertIn("stop listening first", str(refused.message))
        self.assertEqual(self.saved()["allow"], ("127.0.0.1",))

    async def test_new_port_saved_and_used(self) -> None:
        """Stop, change the port, start: the new port serves, the old one is refused, the file keeps its comments."""
        await self.backend.stop_listening()
        self.assertEqual(self.backend.state()["addresses"], [])
        new_port = free_port()
        state = await self.backend.change_settings({"port": new_port})
        self.assertEqual(state["settings"]["port"], new_port)
        self.assertEqual(self.saved()["listen"], (f"tcp:{new_port}:interface=127.0.0.1",))
        with open(self.config, encoding="utf-8") as f:
            text = f.read()
        for comment in ("# The hospital's relay: ask the IT desk before changing it.", "# Who may send"):
            self.assertIn(comment, text)
        started = await self.backend.start_listening()
        self.assertTrue(started["check"]["ok"])
        report = await test_connection(reactor, relay=RelayAddress("127.0.0.1", new_port))
        self.assertTrue(report.ok, report.describe())
        await self.assert_refused(self.port)
        changed = self.relay.records("settings-reloaded")
        self.assertEqual(
            changed[-1]["description"],
            f"Settings changed from the console and saved to {self.config}: listen",
        )
        # The console's journal shows it in the reader's language.
        page = await self.backend.journal_page(None, 10, ["settings-reloaded"], "", [])
        self.assertEqual(
            page["records"][0]["description"].render("fr"),
            f"Paramètres modifiés depuis la console et enregistrés dans {self.config} : listen",
        )

    async def test_listen_at_start_saved_as_a_flag(self) -> None:
        """The original's "Lancer l'écoute à l'exécution": saved as no-listen-at-start, the default leaves no key."""
        await self.backend.stop_listening()
        state = await self.backend.change_settings({"listen_at_start": False})
        self.assertFalse(state["settings"]["listen_at_start"])
        self.assertFalse(self.relay.service.settings.listen_at_start)
        self.assertIs(self.saved()["no-listen-at-start"], True)
        await self.backend.change_settings({"listen_at_start": True})
        self.assertNotIn("no-listen-at-start", self.saved())
        refused = await self.refusal(self.backend.change_settings({"listen_at_start": "no"}))
        self.assertEqual(list(refused.fields), ["listen_at_start"])

    async def test_invalid_values_name_their_field_and_change_nothing(self) -> None:
        await self.backend.stop_listening()
        with open(self.config, "rb") as f:
            before = f.read()
        cases = [
            ({"port": 0}, "port"),
            ({"port": 70000}, "port"),
            ({"port": "3358"}, "port"),
            ({"listen_address": "192.0.2.77"}, "listen_address"),
            ({"allow_all": False, "allow": ["10.1.2.3/99"]}, "allow"),
            ({"allow_all": False, "allow": []}, "allow"),
            ({"proxy_enabled": True, "proxy_host": "", "proxy_port": 3128}, "proxy_host"),
            ({"proxy_enabled": True, "proxy_host": "proxy.example", "proxy_port": 0}, "proxy_port"),
            ({"proxy_enabled": True, "proxy_host": "p", "proxy_port": 3128, "proxy_auth": True, "proxy_user": "", "proxy_password": "pw"}, "proxy_user"),
            ({"proxy_enabled": True, "proxy_host": "p", "proxy_port": 3128, "proxy_auth": True, "proxy_user": "u"}, "proxy_password"),
        ]
        for changes, field in cases:
            refused = await self.refusal(self.backend.change_settings(changes))
            self.assertEqual((refused.status, refused.code), (400, "invalid"), changes)
            self.assertEqual(list(refused.fields), [field], changes)
        refused = await self.refusal(self.backend.change_settings({"allow_all": False, "allow": ["10.1.2.300"]}))
        self.assertEqual(
            refused.fields["allow"].render("fr"),
            "10.1.2.300 n'est ni une adresse ni un réseau (par ex. 10.1.2.3, 10.1.0.0/16, fd00::/8).",
        )
        refused = await self.refusal(self.backend.change_settings({"proxy_password_set": True}))
        self.assertEqual(refused.status, 400)
        self.assertIn("proxy_password_set", str(refused.message))
        with open(self.config, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(self.relay.service.settings.allow, ("127.0.0.1",))

    async def test_proxy_password_kept_apart(self) -> None:
        """The password goes to a 0600 file the settings name; never to the page, the file or the log."""
        secret = "s3cret-Pa55"
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        await self.backend.stop_listening()
        state = await self.backend.change_settings(
            {
                "proxy_enabled": True,
                "proxy_host": "proxy.example",
                "proxy_port": 3128,
                "proxy_auth": True,
                "proxy_user": "dim",
                "proxy_password": secret,
            }
        )
        self.assertTrue(state["settings"]["proxy_password_set"])
        self.assertNotIn(secret, json.dumps(state))
        saved = self.saved()
        self.assertEqual(saved["proxy"], "http://proxy.example:3128")
        self.assertEqual(saved["proxy-user"], "dim")
        password_file = saved["proxy-password-file"]
        assert isinstance(password_file, str)
        self.assertEqual(stat.S_IMODE(os.stat(password_file).st_mode), 0o600)
        with open(password_file, encoding="utf-8") as f:
            self.assertEqual(f.readline().rstrip("\n"), secret)
        with open(self.config, encoding="utf-8") as f:
            self.assertNotIn(secret, f.read())
        self.assertEqual(self.relay.service.settings.proxy, ProxyConfig("proxy.example", 3128, "dim", secret))
        self.assertNotIn(secret, repr(events))
        with open(self.relay.journal.path, encoding="utf-8") as f:
            self.assertNotIn(secret, f.read())

        # Off again: the keys go, and the password file written for them too.
        state = await self.backend.change_settings({"proxy_enabled": False})
        self.assertFalse(state["settings"]["proxy_enabled"])
        self.assertNotIn("proxy", self.saved())
        self.assertFalse(os.path.exists(password_file))
        self.assertIsNone(self.relay.service.settings.proxy)

    async def test_unsaved_changes_nothing(self) -> None:
        """A settings file that cannot be written: 500, and the relay's settings stay."""
        await self.backend.stop_listening()
        self.backend = RelayConsoleBackend(
            reactor,
            self.relay.service,
            ConsoleFiles(os.path.join(self.config, "not-a-folder", "relay.ini"), config_in_use=False),
            globalLogPublisher,
        )
        refused = await self.refusal(self.backend.change_settings({"port": free_port()}))
        self.assertEqual((refused.status, refused.code), (500, "not-saved"))
        self.assertEqual(self.relay.service.settings.listen, (f"tcp:{self.port}:interface=127.0.0.1",))

    async def test_start_refusals(self) -> None:
        """A start that cannot listen or reach e-PMSI says why, in the relay's words, and nothing listens."""
        refused = await self.refusal(self.backend.start_listening())
        self.assertEqual((refused.status, refused.code), (409, "listening"))
        await self.backend.stop_listening()
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        await self.backend.change_settings({"port": taken.getsockname()[1]})
        refused = await self.refusal(self.backend.start_listening())
        self.assertEqual((refused.status, refused.code), (502, "start-failed"))
        self.assertIn("Listening not started: cannot listen on tcp:", str(refused.message))
        self.assertIn("in use", str(refused.message))
        self.assertFalse(self.backend.state()["listening"])

    async def test_start_refused_when_epmsi_cannot_be_reached(self) -> None:
        await self.backend.stop_listening()
        from dataclasses import replace

        unreachable = f"https://127.0.0.1:{free_port()}"
        self.relay.service.change_settings(replace(self.relay.service.settings, epmsi=unreachable))
        refused = await self.refusal(self.backend.start_listening())
        self.assertEqual((refused.status, refused.code), (502, "start-failed"))
        self.assertIn("the test of e-PMSI failed", str(refused.message))
        self.assertIn(unreachable, str(refused.message))
        self.assertIn("n'a pas démarré", refused.message.render("fr"))
        check = await self.backend.test_epmsi()
        self.assertFalse(check["ok"])
        self.assertEqual(check["step"], "epmsi-unreachable")

    async def test_test_epmsi(self) -> None:
        check = await self.backend.test_epmsi()
        self.assertTrue(check["ok"])
        self.assertEqual(check["url"], self.sandbox.url)
        self.assertTrue(check["address"].startswith("127.0.0.1:"))
        self.assertIsInstance(check["elapsed_ms"], int)
        self.assertIn(check["address"], str(check["message"]))

    async def test_watch_journal_and_state(self) -> None:
        """Live: each journal record as written, and the state after each start or stop."""
        seen: list[tuple[str, dict[str, object]]] = []
        stop = self.backend.watch(lambda kind, data: seen.append((kind, data)))
        report = await test_connection(reactor, relay=RelayAddress("127.0.0.1", self.port))
        self.assertTrue(report.ok)
        self.assertTrue(await poll_until(reactor, lambda: any(d.get("type") == "connection-closed" for _, d in seen)))
        journaled = [d for kind, d in seen if kind == "journal"]
        self.assertEqual(journaled[0]["type"], "connection-opened")
        self.assertEqual(journaled[0]["client"].split(":")[0], "127.0.0.1")
        # Each reader sees the description and the reason's label in their language; the codes stay.
        [closed] = [d for d in journaled if d["type"] == "connection-closed"]
        self.assertEqual(closed["reason"], "closed-by-client")
        self.assertEqual(rendered(closed["reason_text"], "fr"), "fermée par le client")
        self.assertRegex(rendered(closed["description"], "fr"), r"^Id de connexion : \d+, fermée par le client ; \d+ octets reçus, \d+ envoyés, en \d+,\d+ s$")
        self.assertRegex(rendered(closed["description"], "en"), r"^Connection id: \d+, closed-by-client; \d+ bytes received")
        await self.backend.stop_listening()
        states = [d for kind, d in seen if kind == "state"]
        self.assertEqual(states[-1]["listening"], False)
        stop()
        count = len(seen)
        await self.backend.start_listening()
        self.assertEqual(len(seen), count)

    async def test_journal_and_connections_from_disk(self) -> None:
        report = await test_connection(reactor, relay=RelayAddress("127.0.0.1", self.port))
        self.assertTrue(report.ok)
        self.assertTrue(await poll_until(reactor, lambda: bool(self.relay.records("connection-closed"))))
        [row] = await self.backend.connections(10)
        self.assertEqual(row["state"], "closed")
        self.assertEqual(row["kind"], "e-pop")
        self.assertEqual(rendered(row["outcome_text"], "fr"), "fermée par le client")
        page = await self.backend.journal_page(None, 100, [], "", [row["id"]])
        self.assertEqual(page["records"][0]["type"], "connection-closed")
        self.assertIn("fermée par le client", rendered(page["records"][0]["description"], "fr"))
        self.assertEqual({r["id"] for r in page["records"]}, {row["id"]})
        refused = await self.refusal(self.backend.journal_page("not a cursor", 10, [], "", []))
        self.assertEqual(refused.status, 400)


class ListenStringTests(SynchronousTestCase):
    def test_address_and_port(self) -> None:
        self.assertEqual(listen_address_and_port("tcp:3358"), ("0.0.0.0", 3358))
        self.assertEqual(listen_address_and_port("tcp:3358:interface=10.1.2.3"), ("10.1.2.3", 3358))
        self.assertEqual(listen_address_and_port("tcp:port=3400:interface=10.1.2.3"), ("10.1.2.3", 3400))
        self.assertEqual(listen_address_and_port("tcp6:3358:interface=fd00\\:\\:3"), ("fd00::3", 3358))
        self.assertEqual(listen_address_and_port("tcp6:3358"), ("::", 3358))
        self.assertEqual(listen_address_and_port("haproxy:tcp:3358:interface=10.1.2.3"), ("10.1.2.3", 3358))
        self.assertIsNone(listen_address_and_port("unix:/run/epop.sock"))
        self.assertIsNone(listen_address_and_port("ssl:3358:privateKey=k.pem"))

