"""
What a running relay logs for its administrator (C{twistd epop --lang}):
each connection's lines in the relay's language, while its journal records
stay what they are in English, field for field and word for word.
"""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from epop.epmsi.origin import tls_policy
from epop.epmsi.upstream import Upstream
from epop.journal.table import outcome_label
from epop.wire import FrameType, encode_message
from tests.relaying import HELLO, RunningRelay, exchange, raw_connect, start_relay
from tests.support import make_trustme_sandbox, poll_until

#: Fields that differ from one run to the next, whatever the language (the
#: check's answer says how long it took: C{bytes_out} too).
_VARYING = ("time", "run", "duration", "client", "epmsi_address", "address", "port", "description", "bytes_out")


class ConnectionLinesTests(TestCase):
    async def serve_three(self, language: str) -> tuple[RunningRelay, list[str]]:
        """
        A relay in C{language} serves an e-PMSI check, a refused tunnel, and,
        after its allowlist changes, a client it no longer allows; returns it
        and its lines as the twistd log shows them.
        """
        sandbox = make_trustme_sandbox(self, reactor)
        relay = start_relay(self, reactor, sandbox.url, sandbox.ca_path, language=language)
        events: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("epop_relay") == relay.service.relay_id:
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

        def closed(count: int) -> bool:
            return len(relay.records("connection-closed")) >= count

        client = await raw_connect(self, reactor, relay.port)
        client.transport.write(HELLO + encode_message(FrameType.CHECK, {}))
        self.assertTrue(await poll_until(reactor, lambda: bool(client.messages(FrameType.CHECK_RESULT)), 200))
        client.transport.loseConnection()
        self.assertTrue(await poll_until(reactor, lambda: closed(1)))
        await exchange(reactor, relay.port, b"CONNECT elsewhere.example:443 HTTP/1.1\r\n\r\n")
        self.assertTrue(await poll_until(reactor, lambda: closed(2)))
        relay.service.set_allowlist(["10.9.9.9"], source="relay.ini")
        await exchange(reactor, relay.port, HELLO)
        self.assertTrue(await poll_until(reactor, lambda: closed(3)))
        return relay, [formatEvent(event) for event in events]

    def comparable(self, relay: RunningRelay) -> list[dict[str, Any]]:
        """The journal's records without what changes from run to run."""
        found = []
        for record in relay.journal.records:
            client = record.get("client")
            kept = {key: value for key, value in record.items() if key not in _VARYING}
            kept["description"] = record["description"].replace(str(client), "CLIENT")
            if "port" in record:
                kept["description"] = kept["description"].replace(str(record["port"]), "PORT")
            found.append(kept)
        return found

    async def test_french_lines_english_journal(self) -> None:
        """Under --lang fr, each connection's lines are French; its records are the English relay's."""
        english, english_lines = await self.serve_three("en")
        french, lines = await self.serve_three("fr")
        text = "\n".join(lines)
        for said in [
            "Connexion 1 ouverte depuis 127.0.0.1:",
            "Objet instancié : test",
            "Objet libéré : test : " + outcome_label("completed").render("fr"),
            " : " + outcome_label("closed-by-client").render("fr"),
            "Fin de la connexion 2 de 127.0.0.1:",
            " vers elsewhere.example:443 : " + outcome_label("destination-not-allowed").render("fr"),
            "Paramètres rechargés depuis relay.ini : postes autorisés : 10.9.9.9",
            " : client non autorisé",
        ]:
            self.assertIn(said, text)
        for english_word in ["Connection ", "Object ", "Settings ", "closed-by-client", "not-authorized"]:
            self.assertNotIn(english_word, text)
        # The journal keeps the codes and the English words.
        self.assertEqual(self.comparable(french), self.comparable(english))
        closed = french.records("connection-closed")
        self.assertEqual([r["reason"] for r in closed], ["closed-by-client", "destination-not-allowed", "not-authorized"])
        self.assertTrue(closed[2]["description"].endswith(" closed: not-authorized"), closed[2])
        self.assertIn("Connection 1 opened from 127.0.0.1:", "\n".join(english_lines))
        self.assertIn(" to elsewhere.example:443 closed: destination-not-allowed", "\n".join(english_lines))


class QuietFactoriesTests(TestCase):
    async def test_no_starting_factory(self) -> None:
        """
        Neither the sandbox's start nor an e-PMSI check or upload writes
        "Starting factory <... object at 0x...>" in the log: internal names
        an administrator cannot use.
        """
        lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        sandbox = make_trustme_sandbox(self, reactor)
        upstream = Upstream(reactor, sandbox.url, tls_policy(sandbox.ca_path))
        self.addCleanup(upstream.close)
        result = await upstream.check()
        self.assertTrue(result.ok, result.describe())
        response = await upstream.request("GET", "/", [], None)
        await treq.content(response)
        self.assertTrue(lines)
        self.assertEqual([line for line in lines if "Starting factory" in line], [])
