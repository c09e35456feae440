"""
The C{epop} command in French, run in-process as a person runs it: once
with C{--lang fr}, once with C{LANG=fr_FR.UTF-8}; C{--json} keeps the
journal's English codes.
"""

from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.test_cli import run_epop
from tests.test_journal_reader import NOW, RUN_A, _listening, _session, _write
from tests.relaying import start_relay
from tests.support import make_trustme_sandbox, write_random_file

#: The two ways to ask for French: the option, and the locale.
FRENCH = ((("--lang", "fr"), {}), ((), {"LANG": "fr_FR.UTF-8"}))


class FrenchTests(TestCase):
    def setUp(self) -> None:
        self.config_path = os.path.abspath(self.mktemp())

    async def in_french(self, *argv: str) -> list[tuple[int, bytes, str]]:
        """Run C{epop ARGV} asked for French both ways; each one's status, output and error."""
        return [
            await run_epop(self.config_path, *option, *argv, environ=environ)
            for option, environ in FRENCH
        ]

    async def test_usage_errors(self) -> None:
        """A folder, a missing file, a bad option value, an unknown option: each said in French, with the help hint."""
        folder = os.path.abspath(self.mktemp())
        os.mkdir(folder)
        missing = os.path.join(folder, "absent.txt")
        cases = [
            (("send", folder, "--relay", "127.0.0.1"), f"epop: {folder} est un dossier : donnez le fichier à envoyer\n"),
            (("send", missing, "--relay", "127.0.0.1"), f"epop: {missing} : fichier introuvable\n"),
            (("sandbox", "--port", "x"), "epop: --port : attendu un numéro de port de 0 à 65535, et non 'x'\n"),
            (("sandbox", "--keep", "lots"), "epop: --keep : attendu un nombre de fichiers reçus (20), une taille (500M, 2G) ou 'all', et non 'lots'\n"),
            (("journal", "--nope"), "epop: option --nope inconnue\n"),
            (("send", __file__, "--relay", "127.0.0.1", "--direct"), "epop: choisissez : --relay HÔTE[:PORT] ou --direct, pas les deux\n"),
        ]
        for argv, said in cases:
            for code, out, err in await self.in_french(*argv):
                self.assertEqual((code, out), (2, b""), (argv, err))
                self.assertEqual(err, said + f"Essayez 'epop {argv[0]} --help'.\n")

    async def test_refused_before_the_command(self) -> None:
        """An option epop does not know, before the command: refused in the language --lang asks for, however the parser stops."""
        cases = [
            (("--lang", "fr", "--bogus"), "epop: option --bogus inconnue\nEssayez 'epop --help'.\n"),
            (("--lang=fr", "--bogus"), "epop: option --bogus inconnue\nEssayez 'epop --help'.\n"),
            (("--lang", "fr", "--relay", "x", "test"), "epop: option --relay inconnue\nEssayez 'epop --help'.\n"),
            (("--lang", "en", "--bogus"), "epop: option --bogus not recognized\nTry 'epop --help'.\n"),
        ]
        for argv, said in cases:
            for environ in ({"LANG": "C.UTF-8"}, {"LANG": "fr_FR.UTF-8"}):
                code, out, err = await run_epop(self.config_path, *argv, environ=environ)
                self.assertEqual((code, out, err), (2, b"", said), (argv, environ))

    async def test_lang_after_the_command(self) -> None:
        """--lang after the command is not taken for an unknown option: the error says where it goes, in the language asked."""
        cases = [
            (("test", "--lang", "en"), {"LANG": "fr_FR.UTF-8"},
             "epop: --lang goes before the command: epop --lang en test ...\nTry 'epop test --help'.\n"),
            (("config", "set", "--lang=fr", "relay", "x"), {"LANG": "C.UTF-8"},
             "epop: --lang se place avant la commande : epop --lang fr config set ...\n"
             "Essayez 'epop config set --help'.\n"),
            (("--lang", "fr", "journal", "--lang", "de"), {"LANG": "C.UTF-8"},
             "epop: --lang se place avant la commande : epop --lang fr|en journal ...\n"
             "Essayez 'epop journal --help'.\n"),
        ]
        for argv, environ, said in cases:
            code, out, err = await run_epop(self.config_path, *argv, environ=environ)
            self.assertEqual((code, out, err), (2, b"", said), argv)

    async def test_since_as_the_help_says(self) -> None:
        """
        Each form the French help of --since shows (tests.test_help) is taken
        by journal and connections, days as 2j too; "il y a 30m" is not.
        """
        journal = os.path.abspath(self.mktemp())
        _write(journal, [_listening(RUN_A, NOW), *_session(RUN_A, 1, NOW + 1)])
        shown = ("2026-11-25", "2026-11-25T08:30", "aujourd'hui", "today", "hier", "yesterday", "30m", "1h", "2j", "2d")
        for command in ("journal", "connections"):
            for since in shown:
                for code, _, err in await self.in_french(command, journal, "--since", since):
                    self.assertEqual(code, 0, (command, since, err))
                    self.assertNotIn("--since", err)
            for code, _, err in await self.in_french(command, journal, "--since", "il y a 30m"):
                self.assertEqual(code, 2)
                self.assertIn("une durée telle que 30m, 1h, 2j (ou 2d)", err)

    async def test_settings(self) -> None:
        """config set confirms in French; a setting's and a settings file's mistakes are French, with the line."""
        for code, out, err in await self.in_french("config", "set", "relay", "10.1.2.3"):
            self.assertEqual((code, out, err), (0, b"", f"Enregistré dans {self.config_path}.\n"))
        for code, _, err in await self.in_french("config", "set", "mode", "sideways"):
            self.assertEqual(code, 2)
            self.assertIn("epop: mode doit valoir 'relay' ou 'direct' (reçu 'sideways')\n", err)
        with open(self.config_path, "w") as f:
            f.write("[epop]\nrelay 10.1.2.3\n")
        for code, _, err in await self.in_french("config", "show"):
            self.assertEqual(code, 2)
            self.assertIn(f"epop: {self.config_path}, ligne 2 : attendu 'clé = valeur', reçu 'relay 10.1.2.3'\n", err)

    async def test_system_refusals(self) -> None:
        """A file that is not there, for the journal, a setting or a form field: said in French, a usage error."""
        missing = os.path.abspath(self.mktemp())
        cases = [
            (("journal", missing), 2, f"epop: pas de journal à {missing} : indiquez le fichier journal du relais "
                                      "(son --journal), par exemple epop journal /var/lib/epop/journal.jsonl\n"),
            (("connections", missing), 2, f"epop: pas de journal à {missing} : indiquez le fichier journal du "
                                          "relais (son --journal), par exemple epop connections /var/lib/epop/journal.jsonl\n"),
            (("config", "set", "relay-ca", missing), 2,
             f"relay-ca : impossible de lire {missing} : Aucun fichier ou dossier de ce nom"),
            (("send", __file__, "--relay", "127.0.0.1", "-F", f"userPwd=<{missing}"), 2,
             f"impossible de lire {missing} : Aucun fichier ou dossier de ce nom"),
        ]
        for argv, status, said in cases:
            for code, _, err in await self.in_french(*argv):
                self.assertEqual(code, status, (argv, err))
                self.assertIn(said, err)
                self.assertNotIn("No such file", err)

    async def test_journal_and_connections(self) -> None:
        """The journal's outcomes and reasons are French labels in the tables; --json keeps the codes."""
        journal = os.path.abspath(self.mktemp())
        _write(journal, [_listening(RUN_A, NOW), *_session(RUN_A, 1, NOW + 1)])
        for code, out, err in await self.in_french("connections", journal):
            self.assertEqual((code, err), (0, ""))
            header, _, row = out.decode().splitlines()
            self.assertEqual(header.split()[:3], ["Connexion", "Client", "Ouverte"])
            self.assertTrue(row.endswith("fermée par le client"), row)
        for code, out, err in await self.in_french("journal", journal):
            self.assertEqual((code, err), (0, ""))
            self.assertIn("upload POST /syriusUpload.do : terminée, e-PMSI a répondu 200", out.decode())
            self.assertIn("fermée par le client ; 628 octets reçus", out.decode())
        for code, out, _ in await self.in_french("connections", "--json", journal):
            self.assertEqual(json.loads(out)["reason"], "closed-by-client")
        for code, out, _ in await self.in_french("journal", "--json", journal):
            self.assertEqual([json.loads(line).get("outcome") for line in out.splitlines()][3], "completed")

    async def test_english_unchanged(self) -> None:
        """Without French asked for, the same commands say what they said before."""
        code, _, err = await run_epop(self.config_path, "sandbox", "--port", "x", environ={"LANG": "C.UTF-8"})
        self.assertEqual(err, "epop: --port: expected a port number from 0 to 65535, not 'x'\nTry 'epop sandbox --help'.\n")
        code, _, err = await run_epop(self.config_path, "config", "set", "relay", "10.1.2.3")
        self.assertEqual(err, f"Saved in {self.config_path}.\n")
        journal = os.path.abspath(self.mktemp())
        _write(journal, [_listening(RUN_A, NOW), *_session(RUN_A, 1, NOW + 1)])
        code, out, _ = await run_epop(self.config_path, "connections", journal)
        self.assertTrue(out.decode().splitlines()[2].endswith("closed-by-client"))

    async def test_send_summary(self) -> None:
        """A file sent through a real relay to the sandbox: the closing line is French, its size in octets."""
        sandbox = make_trustme_sandbox(self, reactor)
        relay = start_relay(self, reactor, sandbox.url, sandbox.ca_path)
        path = os.path.abspath(self.mktemp())
        write_random_file(path, 100)
        for code, out, err in await self.in_french("send", path, "--relay", str(relay.endpoint)):
            self.assertEqual(code, 0, err)
            self.assertIn(f"{path} (100 octets)", err)
            self.assertIn("e-PMSI a répondu 200", err)
