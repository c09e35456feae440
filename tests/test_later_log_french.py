"""
The lines the relay logs while it runs (the journal's rotation and
troubles, C{--tunnel-users} reloads, refused PROXY headers, "Start with the
machine", the console's refusals) and the sandbox's retention follow the
language it was started in, as its start-up lines do
(L{tests.test_french_log}): the format string is the catalog's, the
event's fields keep their keys and, but for the reasons for a person,
their values.
"""

from __future__ import annotations

import base64
import errno
import os
import shutil
from dataclasses import replace
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop.console.backend import ConsoleRefusal
from epop.console.relay_backend import ConsoleFiles, RelayConsoleBackend
from epop.journal.writer import RotatingJournalWriter
from epop.console.access import MAX_WRONG_PASSWORDS
from epop.relay.start_with_machine import set_enabled
from epop.relay.tunnel_users import TunnelUsers
from epop.sandbox.retention import Keep
from epop.sandbox.service import SandboxService
from tests.console_fakes import LiveConsole
from tests.relaying import exchange, raw_connect, start_relay
from tests.support import free_port, make_trusting_client, make_trustme_sandbox, poll_until
from tests.test_drain import start_relay_process
from tests.test_french_log import FRENCH
from tests.test_journal_trouble import _record
from tests.test_start_with_machine import FakeSystemctl
from tests.test_tunnel_users import _Threads, bcrypt_line, write_users

#: "Is a directory" and "Not a directory" as the French catalog says them.
IS_A_DIRECTORY = "C'est un dossier"
NOT_A_DIRECTORY = "Ce n'est pas un dossier"


class _Logged:
    """The log events of one namespace (or its children) while a test runs, as twistd writes them."""

    def __init__(self, testcase: SynchronousTestCase, namespace: str) -> None:
        self.namespace = namespace
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def mine(self) -> list[LogEvent]:
        return [e for e in self.events if e.get("log_namespace", "").startswith(self.namespace)]

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.mine()]


class JournalWriterTests(SynchronousTestCase):
    """A rotating journal on a real folder, timed by a Clock, in a French relay."""

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.path = os.path.join(self.folder, "epop-journal.jsonl")
        self.log = _Logged(self, "epop.journal.writer")

    def writer(self, rotate: str, keep: int = 3) -> RotatingJournalWriter:
        writer = RotatingJournalWriter(self.path, rotate, keep, Clock(), language="fr")
        self.addCleanup(writer.close)
        return writer

    def test_rotated(self) -> None:
        """A size rotation is said in French; its fields are the paths, as in English."""
        writer = self.writer("300")
        writer.write(_record(1))
        writer.write(_record(2))
        self.assertEqual(self.log.lines(), [f"Journal archivé : {self.path} est maintenant {self.path}.1"])
        [event] = self.log.mine()
        self.assertEqual((event["path"], event["target"]), (self.path, self.path + ".1"))

    def test_rotation_and_deletion_refused(self) -> None:
        """
        An old journal that cannot be deleted, and a rotation that cannot
        be made (a folder in the way): both said in French, with the
        system's reason in French too.
        """
        os.makedirs(os.path.join(self.path + ".1", "in-the-way"))
        writer = self.writer("300", keep=1)
        writer.write(_record(1))
        writer.write(_record(2))
        self.assertEqual(
            self.log.lines(),
            [
                f"Impossible de supprimer l'ancien journal {self.path}.1 : {IS_A_DIRECTORY}",
                f"Impossible d'archiver le journal {self.path} : {IS_A_DIRECTORY} ; l'écriture continue dans ce fichier",
            ],
        )

    def test_deleted_then_unwritable_then_written(self) -> None:
        """A journal deleted by hand, then its folder gone and back: each change said in French."""
        writer = self.writer("daily")
        writer.write(_record(1))
        os.remove(self.path)
        writer.write(_record(2))
        shutil.rmtree(self.folder)
        writer.write(_record(3))
        os.makedirs(self.folder)
        writer.write(_record(4))
        self.assertEqual(
            self.log.lines(),
            [
                f"Journal {self.path} déplacé ou supprimé alors que le relais l'avait ouvert : il est rouvert, "
                "recréé si besoin",
                f"Journal {self.path} déplacé ou supprimé alors que le relais l'avait ouvert : il est rouvert, "
                "recréé si besoin",
                f"journal : impossible d'écrire dans {self.path} : Aucun fichier ou dossier de ce nom ; le relais "
                "continue sans son journal jusqu'à ce que l'écriture fonctionne de nouveau",
                f"journal : l'écriture dans {self.path} fonctionne de nouveau ; 1 événement(s) n'ont pas pu être "
                "écrits et y manquent",
            ],
        )
        self.assertEqual(
            [e["log_level"] for e in self.log.mine()], [LogLevel.info, LogLevel.info, LogLevel.critical, LogLevel.warn]
        )
        self.assertEqual(self.log.mine()[2]["errno"], errno.ENOENT)


class TunnelUsersTests(SynchronousTestCase):
    """C{--tunnel-users} read again after a change, by a French relay."""

    def setUp(self) -> None:
        self.path = write_users(self, bcrypt_line("alice", "secret"), bcrypt_line("bob", "other"))
        self.threads = _Threads()
        self.users = TunnelUsers(self.path, Clock(), self.threads, language="fr")
        self.log = _Logged(self, "epop.relay.tunnel_users")

    def check(self) -> None:
        self.users.check("alice", "secret")
        self.threads.run()

    def test_bad_file_kept_users(self) -> None:
        """A file that no longer reads: the refusal and its reason in French, the count as a field."""
        Path(self.path).write_text("alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n")
        self.check()
        self.assertEqual(
            self.log.lines(),
            [
                f"--tunnel-users {self.path} : {self.path}, ligne 1 : utilisateur 'alice' : seules les entrées "
                "bcrypt sont acceptées (htpasswd -B) ; le relais garde ses utilisateurs (2)"
            ],
        )
        self.assertEqual(self.log.mine()[0]["count"], 2)

    def test_read_again(self) -> None:
        """A changed file that reads: said in French, with the new count."""
        Path(self.path).write_text(bcrypt_line("carol", "c") + "\n")
        self.check()
        self.assertEqual(self.log.lines(), [f"--tunnel-users : {self.path} relu : 1 utilisateur(s)"])


class ProxyHeaderTests(TestCase):
    """A French relay listening with C{haproxy:}, over real loopback."""

    async def test_cut_header(self) -> None:
        """The refusal in French, its problem too; the journal's error stays English."""
        sandbox = make_trustme_sandbox(self, reactor)
        relay = start_relay(
            self, reactor, sandbox.url, sandbox.ca_path, listen=("haproxy:tcp:0:interface=127.0.0.1",), language="fr"
        )
        log = _Logged(self, "epop.relay.proxy_header")
        client = await raw_connect(self, reactor, relay.port)
        client.transport.write(b"PROXY TCP4 10.1.2.3 ")
        reactor.callLater(0, client.transport.loseConnection)
        await client.closed
        self.assertTrue(await poll_until(reactor, lambda: "connection-closed" in relay.types()))
        [closed] = relay.records("connection-closed")
        self.assertEqual(closed["error"], "the connection ended inside its PROXY header")
        [line] = log.lines()
        self.assertRegex(
            line,
            r"^Connexion de 127\.0\.0\.1:\d+ refusée : bad-proxy-header : la connexion s'est terminée au milieu "
            r"de son en-tête PROXY ; elle commençait par « PROXY TCP4 10\.1\.2\.3  »$",
        )
        self.assertEqual(log.mine()[0]["code"], "bad-proxy-header")


class RelayTests(TestCase):
    """A French relay hands its language to its journal's writer and to its users file."""

    async def test_rotation_and_users_reload(self) -> None:
        """The journal rotated, and a users file broken while the relay runs: both lines in French."""
        sandbox = make_trustme_sandbox(self, reactor)
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        journal = os.path.join(folder, "journal.jsonl")
        users = write_users(self, bcrypt_line("alice", "secret"))
        relay = start_relay(
            self, reactor, sandbox.url, sandbox.ca_path,
            file_journal=True, journal=journal, journal_rotate="300", tunnel_users=users, language="fr",
        )
        log = _Logged(self, "epop.")
        Path(users).write_text("alice\n")
        target = sandbox.url[len("https://"):]
        credentials = base64.b64encode(b"alice:wrong").decode("ascii")
        request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {credentials}\r\n\r\n"
        answer = await exchange(reactor, relay.port, request.encode())
        self.assertTrue(answer.startswith(b"HTTP/1.1 407 "), answer)
        self.assertTrue(await poll_until(reactor, lambda: os.path.exists(journal + ".1")))
        lines = log.lines()
        self.assertIn(f"Journal archivé : {journal} est maintenant {journal}.1", lines)
        self.assertIn(
            f"--tunnel-users {users} : {users}, ligne 1 : attendu UTILISATEUR:EMPREINTE, comme l'écrit htpasswd -B "
            f"(htpasswd -B {users} UTILISATEUR) ; le relais garde ses utilisateurs (1)",
            lines,
        )


class StartWithMachineTests(TestCase):
    """The console's "Start with the machine" box, with a real (stand-in) systemctl, for a French relay."""

    def setUp(self) -> None:
        self.root = self.mktemp()
        os.makedirs(self.root)
        self.fake = FakeSystemctl(self.mktemp(), "disabled")
        self.log = _Logged(self, "epop.relay.start_with_machine")

    async def test_enabled_then_refused(self) -> None:
        """Enabled, then a disable systemctl refuses: both said in French; the verb field stays English."""
        await set_enabled(reactor, "epop.service", True, self.fake.path, language="fr", systemd_root=self.root)
        self.fake.touch("denied")
        await set_enabled(reactor, "epop.service", False, self.fake.path, language="fr", systemd_root=self.root)
        self.assertEqual(
            self.log.lines(),
            [
                "Démarrer avec la machine : epop.service activé",
                # systemctl's own line stays as it wrote it.
                "Démarrer avec la machine : impossible de désactiver epop.service : Failed to disable unit: "
                "Access denied",
            ],
        )
        self.assertEqual([e["verb"] for e in self.log.mine()], ["enable", "disable"])


class SandboxRetentionTests(TestCase):
    """C{epop --lang fr sandbox --keep 1}: a real sandbox over HTTPS deleting old uploads."""

    async def test_old_uploads_deleted(self) -> None:
        service = SandboxService(reactor, FilePath(self.mktemp()), port=0, keep=Keep(uploads=1), language="fr")
        service.startService()
        self.addCleanup(service.stopService)
        assert service.certificates is not None and service.url is not None
        client = make_trusting_client(reactor, service.certificates.ca_path.getContent())
        log = _Logged(self, "epop.sandbox.retention")
        ids = []
        for data in (b"first", b"second"):
            answer = await client.post(service.url + "/syriusUpload.do", data=data)
            self.assertEqual(answer.code, 200)
            ids.append((await answer.json())["upload"])
        self.assertEqual(
            log.lines(), [f"1 ancien(s) envoi(s) supprimé(s) pour garder les 1 envoi(s) les plus récents : {ids[0]}"]
        )

    async def test_uploads_received_and_rejected(self) -> None:
        """Each upload's line in the sandbox's language; a rejection quotes the answer as the client got it."""
        service = SandboxService(reactor, FilePath(self.mktemp()), port=0, language="fr")
        service.startService()
        self.addCleanup(service.stopService)
        assert service.certificates is not None and service.url is not None
        client = make_trusting_client(reactor, service.certificates.ca_path.getContent())
        log = _Logged(self, "epop.sandbox.site")
        answer = await client.post(service.url + "/syriusUpload.do", data=b"12345")
        self.assertEqual(answer.code, 200)
        upload = (await answer.json())["upload"]
        answer = await client.post(
            service.url + "/syriusUpload.do", data=b"x", headers={b"Content-Type": [b"multipart/form-data"]}
        )
        self.assertEqual(answer.code, 400)
        await answer.content()
        self.assertEqual(
            log.lines(),
            [
                f"Envoi {upload} reçu : 1 fichier(s), 5 octets",
                "Envoi refusé avec 400 : multipart/form-data without boundary",
            ],
        )


class ConsoleTests(TestCase):
    """The console's lines follow the relay's language, not the browser's."""

    async def test_sign_in_refusals(self) -> None:
        """A wrong token and a wrong password from an English browser: the pages in English, the log in French."""
        console = LiveConsole(self, password="right", language="fr")
        log = _Logged(self, "epop.console.resource")
        english = {"Accept-Language": "en", "Content-Type": "application/x-www-form-urlencoded", "Origin": console.origin}
        response = await console.request("GET", "/?token=wrong", headers={"Accept-Language": "en"})
        self.assertEqual(response.code, 403)
        self.assertIn("This address was already used", (await response.text()))
        response = await console.request("POST", "/sign-in", headers=english, data=b"password=wrong")
        self.assertEqual(response.code, 403)
        self.assertIn("Wrong password.", await response.text())
        self.assertEqual(
            log.lines(),
            [
                "Console : une adresse fausse ou déjà utilisée a été refusée",
                "Console : un mot de passe incorrect a été refusé",
            ],
        )

    async def test_too_many_wrong_passwords(self) -> None:
        """Sign-in blocked after too many wrong passwords: said in French."""
        console = LiveConsole(self, password="right", language="fr")
        log = _Logged(self, "epop.console.resource")
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": console.origin}
        for _ in range(MAX_WRONG_PASSWORDS + 1):
            response = await console.request("POST", "/sign-in", headers=headers, data=b"password=wrong")
            await response.content()
        self.assertEqual(response.code, 429)
        self.assertEqual(
            log.lines()[-1], "Console : trop de mots de passe incorrects ; connexion refusée pendant une minute"
        )

    async def test_backend_refusals(self) -> None:
        """Settings that cannot be saved, and a start the relay refuses, on a real French relay."""
        sandbox = make_trustme_sandbox(self, reactor)
        relay = start_relay(self, reactor, sandbox.url, sandbox.ca_path, language="fr")
        log = _Logged(self, "epop.console.relay_backend")
        # A settings file inside a file: it cannot be written.
        config = os.path.join(sandbox.ca_path, "relay.ini")
        backend = RelayConsoleBackend(reactor, relay.service, ConsoleFiles(config, config_in_use=False), globalLogPublisher)
        await backend.stop_listening()
        with self.assertRaises(ConsoleRefusal):
            await backend.change_settings({"port": free_port()})
        unreachable = f"https://127.0.0.1:{free_port()}"
        relay.service.change_settings(replace(relay.service.settings, epmsi=unreachable))
        with self.assertRaises(ConsoleRefusal):
            await backend.start_listening()
        [unsaved, refused] = log.lines()
        self.assertEqual(unsaved, f"Console : paramètres non enregistrés dans {config} : {NOT_A_DIRECTORY}")
        self.assertTrue(
            refused.startswith("Console : L'écoute n'a pas démarré : le test de e-PMSI a échoué : "), refused
        )
        self.assertIn(unreachable, refused)


class TwistdTests(TestCase):
    """A real C{twistd -n epop} in French."""

    async def test_refused_proxy_header(self) -> None:
        """A workstation that skips the load balancer: the relay's log says so in French."""
        port, balanced = free_port(), free_port()
        relay = await start_relay_process(
            self, port, "--listen", f"haproxy:tcp:{balanced}:interface=127.0.0.1", environ=FRENCH
        )
        client = await raw_connect(self, reactor, balanced)
        client.transport.write(b"EPOP\r\n")
        await client.closed
        said = await poll_until(reactor, lambda: "refusée : no-proxy-header" in relay.text(), 300, 0.1)
        self.assertTrue(said, relay.text())
        self.assertRegex(relay.text(), r"Connexion de 127\.0\.0\.1:\d+ refusée : no-proxy-header : ")
        self.assertNotIn("Refused a connection", relay.text())
