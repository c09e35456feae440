"""
A real C{twistd -n epop} logs its start-up lines for the administrator in
the locale's language, with the same fields; its journal stays English.
"""

from __future__ import annotations

import os
import re

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.relaying import HELLO, raw_connect
from tests.support import free_port, poll_until
from tests.test_drain import RelayProcess, start_relay_process

FRENCH = {"LANG": "fr_FR.UTF-8", "LC_ALL": "", "LC_MESSAGES": ""}
ENGLISH = {"LANG": "C.UTF-8", "LC_ALL": "", "LC_MESSAGES": ""}


class StartLinesTests(TestCase):
    async def start(self, environ: dict[str, str]) -> tuple[RelayProcess, int, int]:
        """A relay with its own authority and a console; once it has said where the console is."""
        port, console = free_port(), free_port()
        tls = os.path.abspath(self.mktemp())
        relay = await start_relay_process(
            self, port, "--console", f"tcp:{console}:interface=127.0.0.1",
            "--tls-cert", "auto", "--tls-dir", tls, environ=environ,
        )
        said = await poll_until(reactor, lambda: relay.ended.called or "?token=" in relay.text(), 300, 0.1)
        self.assertTrue(said and not relay.ended.called, relay.text())
        return relay, port, console

    def fingerprint(self, text: str) -> str:
        found = re.search(r"(SHA256 (?:[0-9A-F]{2}:){31}[0-9A-F]{2})\b", text)
        assert found is not None, text
        return found.group(1)

    async def test_french(self) -> None:
        relay, port, console = await self.start(FRENCH)
        text = relay.text()
        self.assertIn(f"Relais e-POP à l'écoute sur 127.0.0.1:{port} (point d'écoute tcp:{port}", text)
        self.assertRegex(text, rf"Console : ouvrez http://\S+:{console}/\?token=\S+ dans un navigateur sur cette machine")
        self.assertIn("Autorité de certification du relais créée : ", text)
        self.assertIn(f"a l'empreinte {self.fingerprint(text)} ; c'est celle que les postes confirment", text)
        self.assertIn(
            "Aussi proxy HTTPS sur le(s) même(s) port(s), tunnels vers www.epmsi.atih.sante.fr:443, ", text
        )
        self.assertIn(f"les navigateurs prennent leurs réglages à http://127.0.0.1:{port}/proxy.pac (ou /wpad.dat)", text)
        self.assertNotIn("e-POP relay listening", text)
        self.assertNotIn("Console: open", text)
        # A connection's lines too, with its reason's label.
        client = await raw_connect(self, reactor, port)
        client.transport.write(HELLO)
        client.transport.loseConnection()
        closed = "Fin de la connexion 1 de 127.0.0.1:"
        self.assertTrue(await poll_until(reactor, lambda: closed in relay.text(), 200, 0.05), relay.text())
        self.assertRegex(relay.text(), r"Fin de la connexion 1 de 127\.0\.0\.1:\d+ : fermée par le client")
        self.assertIn("Connexion 1 ouverte depuis 127.0.0.1:", relay.text())
        self.assertNotIn("Connection 1", relay.text())
        self.assertNotIn("Starting factory", relay.text())
        self.assertTrue(await poll_until(reactor, lambda: any(r["type"] == "connection-closed" for r in relay.records())))
        [record] = [r for r in relay.records() if r["type"] == "connection-closed"]
        self.assertEqual(record["reason"], "closed-by-client")
        self.assertEqual(record["description"], f"Connection 1 from {record['client']} closed: closed-by-client")
        # The journal, read by tools and shown by the console in each reader's language, stays English.
        opened = [r for r in relay.records() if r["type"] == "listening-opened"]
        self.assertEqual(len(opened), 1, opened)
        self.assertTrue(opened[0]["description"].startswith(f"e-POP relay listening on 127.0.0.1:{port}"), opened)

    async def test_english_unchanged(self) -> None:
        relay, port, console = await self.start(ENGLISH)
        text = relay.text()
        self.assertIn(
            f"e-POP relay listening on 127.0.0.1:{port} (endpoint tcp:{port}:interface=127.0.0.1); "
            "workstations use this address and port",
            text,
        )
        self.assertRegex(text, rf"Console: open http://\S+:{console}/\?token=\S+ in a browser on this machine")
        self.assertIn("Made the relay's certificate authority ", text)
        self.assertIn(
            f"has the fingerprint {self.fingerprint(text)}; this is the one workstations confirm (epop trust)", text
        )
        self.assertIn(
            f"for every allowed client; browsers take their settings from http://127.0.0.1:{port}/proxy.pac "
            "(or /wpad.dat)",
            text,
        )
        self.assertNotIn("Relais e-POP", text)


class SandboxStartTests(TestCase):
    async def start(self, environ: dict[str, str]) -> tuple[str, int]:
        """C{epop sandbox} on a free port: what it printed once it said where its CA is; then stopped."""
        from tests.test_cli_interrupt import epop_command

        port = free_port()
        folder = os.path.abspath(self.mktemp())
        sandbox = RelayProcess(os.path.join(folder, "no-journal"))
        [program, *first] = epop_command()
        sandbox.process = reactor.spawnProcess(
            sandbox, program, [program, *first, "sandbox", "--port", str(port), "--directory", folder],
            env={**os.environ, **environ},
        )
        self.addCleanup(sandbox.stop)
        said = await poll_until(reactor, lambda: sandbox.ended.called or "--ca-file" in sandbox.text(), 300, 0.1)
        self.assertTrue(said and not sandbox.ended.called, sandbox.text())
        return sandbox.text(), port

    async def test_french(self) -> None:
        text, port = await self.start(FRENCH)
        self.assertIn(f"Bac à sable e-PMSI à l'écoute sur https://127.0.0.1:{port} ; les envois sont rangés dans ", text)
        self.assertIn("(en gardant au plus 500 Mio d'envois) ; son certificat d'autorité est ", text)
        self.assertIn("(à donner à --ca-file)", text)

    async def test_english_unchanged(self) -> None:
        text, port = await self.start(ENGLISH)
        self.assertIn(f"e-PMSI sandbox listening on https://127.0.0.1:{port}; uploads are stored in ", text)
        self.assertIn("(keeping at most 500 MiB of uploads); its CA certificate is ", text)
