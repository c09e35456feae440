"""
Reading the journal back: filters, --since, rotated files, torn lines,
following across a rotation, the connections of a live relay, and the
French and English tables of C{epop journal} and C{epop connections}.
"""

from __future__ import annotations

import io
import json
import os
from datetime import datetime, timedelta, timezone
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop import cli
from epop.workstation.client import send_file
from epop.journal.events import EVENT_TYPES
from epop.journal.writer import RotatingJournalWriter, encode_record
from epop.journal.connections import connection_summaries, connections_table
from epop.journal.filters import JournalFilter, parse_connection, parse_since
from epop.journal.reader import JournalFollower, Problem, journal_files, read_file, read_journal
from epop.journal.table import describe_record, journal_table, type_name
from epop.messages import reason_of
from tests.relaying import HELLO, raw_connect, start_relay
from tests.support import ShutdownClock, make_trustme_sandbox, poll_until

RUN_A = "3c1c3f5238c2"
RUN_B = "1da46e10bf43"
NOW = datetime(2026, 11, 25, 12, tzinfo=timezone.utc).timestamp()
PARIS_WINTER = timezone(timedelta(hours=1))


def _at(seconds: float) -> str:
    when = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _session(run: str, number: int, start: float, client: str = "10.1.4.27:51234") -> list[dict[str, Any]]:
    """The five records of one upload on one connection, as the relay writes them."""
    base = {"run": run, "connection": number, "client": client}
    upload = {"kind": "upload", "method": "POST", "path": "/syriusUpload.do", "length": 309}
    return [
        {"time": _at(start), "type": "connection-opened", **base, "description": f"Connection {number} opened from {client}"},
        {"time": _at(start + 0.1), "type": "object-instantiated", **base, **upload, "description": "Object instantiated: upload POST /syriusUpload.do (309 bytes)"},
        {"time": _at(start + 0.2), "type": "object-released", **base, **upload, "integrity": "ok", "status": 200, "outcome": "completed", "duration": 0.1, "description": "Object released: upload POST /syriusUpload.do: completed"},
        {"time": _at(start + 0.3), "type": "connection-closed", **base, "duration": 0.3, "bytes_in": 628, "bytes_out": 551, "reason": "closed-by-client", "description": f"Connection {number} from {client} closed: closed-by-client"},
    ]


def _listening(run: str, at: float, kind: str = "listening-opened") -> dict[str, Any]:
    return {"time": _at(at), "type": kind, "run": run, "address": "0.0.0.0:3358", "port": 3358, "description": "e-POP relay listening on 0.0.0.0:3358"}


def _write(path: str, records: list[dict[str, Any]], tail: bytes = b"") -> None:
    with open(path, "ab") as f:
        for record in records:
            f.write(encode_record(record))
        f.write(tail)


class ReadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())

    def test_torn_last_line_skipped_others_reported(self) -> None:
        """An unterminated or unparsable last line is skipped silently; a bad line before it is reported and reading goes on."""
        records = _session(RUN_A, 1, NOW)
        _write(self.path, records[:2], b"not json\n")
        _write(self.path, records[2:], b'{"time":"2026-11-25T12:00:01.000Z","ty')
        problems: list[Problem] = []
        self.assertEqual([r["type"] for r in read_file(self.path, problems.append)], [r["type"] for r in records])
        self.assertEqual(problems, [Problem(self.path, 3)])
        with open(self.path, "ab") as f:
            f.write(b"pe\n")  # now terminated, still not a record, still last
        problems.clear()
        self.assertEqual(len(list(read_file(self.path, problems.append))), 4)
        self.assertEqual(problems, [Problem(self.path, 3)])

    def test_records_without_type_or_time_are_not_records(self) -> None:
        """A JSON line that is not an object with a type and a time is reported like any bad line."""
        _write(self.path, [], b'[1]\n{"type":"connection-opened"}\n{"type":"x","time":"yesterday"}\n')
        _write(self.path, _session(RUN_A, 1, NOW)[:1])
        problems: list[Problem] = []
        self.assertEqual(len(list(read_file(self.path, problems.append))), 1)
        self.assertEqual([p.line for p in problems], [1, 2, 3])

    def test_filters(self) -> None:
        """--connection (ID or RUN:ID, repeatable), --type (repeatable) and --since select events as the manual's window did."""
        records = [_listening(RUN_A, NOW - 100), *_session(RUN_A, 1, NOW - 50), *_session(RUN_A, 2, NOW - 40)]
        records += [_listening(RUN_B, NOW - 30), *_session(RUN_B, 1, NOW - 20)]

        def select(**kwargs: Any) -> list[tuple[str, Any, str]]:
            wanted = JournalFilter(**kwargs)
            return [(r["run"], r.get("connection"), r["type"]) for r in records if wanted.matches(r)]

        self.assertEqual(len(select()), len(records))
        both_ones = select(connections=[(None, 1)])
        self.assertEqual({(run, n) for run, n, _ in both_ones}, {(RUN_A, 1), (RUN_B, 1)})
        self.assertEqual(len(both_ones), 8)
        self.assertEqual({(run, n) for run, n, _ in select(connections=[parse_connection("1da4:1")])}, {(RUN_B, 1)})
        self.assertEqual(
            {(run, n) for run, n, _ in select(connections=[parse_connection(f"{RUN_A}:1"), parse_connection("2")])},
            {(RUN_A, 1), (RUN_A, 2)},
        )
        self.assertEqual(
            select(types=["connection-closed", "listening-opened"], connections=[(RUN_B, 1)]),
            [(RUN_B, 1, "connection-closed")],
        )
        since = datetime.fromtimestamp(NOW - 35, tz=timezone.utc)
        self.assertEqual(
            [t for _, _, t in select(since=since, types=["listening-opened", "connection-opened"])],
            ["listening-opened", "connection-opened"],
        )

    def test_parse_connection(self) -> None:
        """--connection takes a number or RUN:NUMBER, and says so otherwise."""
        self.assertEqual(parse_connection("4"), (None, 4))
        self.assertEqual(parse_connection("3C1C:4"), ("3c1c", 4))
        for bad in ("", "four", ":4", "3c1c:", "4.5"):
            error = self.assertRaises(ValueError, parse_connection, bad)
            self.assertIn("--connection", str(error))

    def test_parse_since(self) -> None:
        """--since takes ISO dates and times (local unless said), today, yesterday, and durations back from now."""
        now = datetime(2026, 11, 25, 0, 30, tzinfo=timezone.utc).timestamp()  # 01:30 in Paris
        tz = PARIS_WINTER
        self.assertEqual(parse_since("today", now, tz), datetime(2026, 11, 25, tzinfo=tz))
        self.assertEqual(parse_since("yesterday", now, tz), datetime(2026, 11, 24, tzinfo=tz))
        for today in ("aujourd'hui", "Aujourd\u2019hui"):
            self.assertEqual(parse_since(today, now, tz), datetime(2026, 11, 25, tzinfo=tz))
        self.assertEqual(parse_since("hier", now, tz), datetime(2026, 11, 24, tzinfo=tz))
        self.assertEqual(parse_since("30m", now, tz).timestamp(), now - 1800)
        self.assertEqual(parse_since("1h", now, tz).timestamp(), now - 3600)
        self.assertEqual(parse_since("2d", now, tz).timestamp(), now - 2 * 86400)
        for days in ("2j", "2J"):  # jours, as a French reader writes them
            self.assertEqual(parse_since(days, now, tz).timestamp(), now - 2 * 86400)
        self.assertEqual(parse_since("2026-11-20", now, tz), datetime(2026, 11, 20, tzinfo=tz))
        self.assertEqual(parse_since("2026-11-20T08:30", now, tz), datetime(2026, 11, 20, 8, 30, tzinfo=tz))
        self.assertEqual(parse_since("2026-11-20 08:30:00Z", now, tz), datetime(2026, 11, 20, 8, 30, tzinfo=timezone.utc))
        for bad in ("", "soon", "1w", "25/11/2026"):
            error = self.assertRaises(ValueError, parse_since, bad, now, tz)
            self.assertIn("--since", str(error))
        error = self.assertRaises(ValueError, parse_since, "demain", now, tz)
        self.assertIn("aujourd'hui, hier, ou une durée", reason_of(error).render("fr"))

    def test_since_reads_rotated_files_in_order(self) -> None:
        """With --since, the rotated files recent enough are read first, oldest first, then the current file; without it only the current one."""
        days = [NOW - 2 * 86400, NOW - 86400, NOW]
        for name, start in zip([".2026-11-23", ".2026-11-24", ""], days, strict=True):
            _write(self.path + name, [*_session(RUN_A, int(start) % 1000, start)])
            os.utime(self.path + name, (start + 1, start + 1))
        since = datetime.fromtimestamp(NOW - 86400 - 60, tz=timezone.utc)
        self.assertEqual(journal_files(self.path, since), [self.path + ".2026-11-24", self.path])
        self.assertEqual(journal_files(self.path), [self.path])
        wanted = JournalFilter(since=datetime.fromtimestamp(0, tz=timezone.utc))
        everything = [r for r in read_journal(self.path, wanted.since) if wanted.matches(r)]
        times = [r["time"] for r in everything]
        self.assertEqual(len(everything), 12)
        self.assertEqual(times, sorted(times))
        self.assertEqual(len(list(read_journal(self.path))), 4)

    def test_size_rotated_files_are_read_oldest_first(self) -> None:
        """Size-rotated files are read from the highest number (oldest) down to .1, then the current file."""
        for index, name in enumerate([".3", ".2", ".1", ""]):
            _write(self.path + name, _session(RUN_A, index + 1, NOW + index))
        since = datetime.fromtimestamp(0, tz=timezone.utc)
        self.assertEqual([r["connection"] for r in read_journal(self.path, since)][::4], [1, 2, 3, 4])

    def test_every_type_has_a_name_in_both_languages(self) -> None:
        """Each event type shows under a readable name: the manual's in French, plain English otherwise."""
        french = {
            "listening-opened": "Ouverture de l'écoute du réseau",
            "listening-closed": "Fermeture de l'écoute du réseau",
            "connection-opened": "Ouverture de connexion",
            "connection-closed": "Fermeture de connexion",
            "object-instantiated": "Instanciation d'objet",
            "object-released": "Libération d'objet",
        }
        english = {
            "listening-opened": "Listening opened",
            "listening-closed": "Listening closed",
            "connection-opened": "Connection opened",
            "connection-closed": "Connection closed",
            "object-instantiated": "Object instantiated",
            "object-released": "Object released",
        }
        for event_type, name in french.items():
            self.assertEqual(type_name(event_type, "fr"), name)
            self.assertEqual(type_name(event_type, "en"), english[event_type])
        for event_type in EVENT_TYPES:
            self.assertNotEqual(type_name(event_type, "fr"), event_type)
            self.assertNotEqual(type_name(event_type, "en"), event_type)
        # A refused reload is one too: the type names the event, not its outcome.
        self.assertEqual(
            (type_name("settings-reloaded", "en"), type_name("settings-reloaded", "fr")),
            ("Settings reload", "Rechargement des paramètres"),
        )

    def test_tables_in_french_and_english(self) -> None:
        """The journal table has the manual's columns: French headers, dd/mm/yyyy dates and 'Id de connexion' in French; ISO-like in English."""
        records = [_listening(RUN_A, NOW), *_session(RUN_A, 2, NOW + 59)]
        french = journal_table(records, "fr", PARIS_WINTER)
        self.assertEqual(french[0].split(), ["IP", "du", "client", "Date", "Type", "Description"])
        self.assertRegex(french[1], r"^-+  -+  -+  -+$")
        self.assertIn("25/11/2026 13:00:00  Ouverture de l'écoute du réseau  Écoute du réseau sur 0.0.0.0:3358 (lancement 3c1c3f5238c2)", french[2])
        self.assertTrue(french[2].startswith(" " * 15))
        self.assertEqual(
            french[3],
            "10.1.4.27        25/11/2026 13:00:59  Ouverture de connexion           Id de connexion : 2, depuis 10.1.4.27:51234",
        )
        self.assertIn("Type de l'objet instancié : upload POST /syriusUpload.do (309 octets)", french[4])
        self.assertIn("Libération d'objet               Type de l'objet libéré : upload POST /syriusUpload.do : terminée, e-PMSI a répondu 200", french[5])
        self.assertIn("Fermeture de connexion", french[6])
        english = journal_table(records, "en", PARIS_WINTER)
        self.assertEqual(english[0].split(), ["Client", "IP", "Date", "Type", "Description"])
        self.assertEqual(
            english[3],
            "10.1.4.27        2026-11-25 13:00:59  Connection opened    Connection id: 2, from 10.1.4.27:51234",
        )
        self.assertIn("Connection closed    Connection id: 2, closed-by-client; 628 bytes received, 551 sent, in 0.300 s", english[6])

    def test_unknown_fields_fall_back_to_the_description(self) -> None:
        """A record without the expected fields (another version) shows its own description."""
        record = {"time": _at(NOW), "type": "object-released", "run": RUN_A, "description": "Something else"}
        self.assertEqual(describe_record(record, "fr"), "Something else")
        ipv6 = {**_session(RUN_A, 1, NOW)[0], "client": "[fd00::27]:51234"}
        self.assertTrue(journal_table([ipv6], "en")[2].startswith("fd00::27 "))

    def test_connections_table(self) -> None:
        """Connections: id (RUN:ID once several runs), client, opened, closed or 'open', duration, bytes, outcome; killed runs' connections are 'lost'."""
        records = [_listening(RUN_A, NOW), *_session(RUN_A, 1, NOW + 1), *_session(RUN_A, 2, NOW + 2)[:2]]
        records += [_listening(RUN_B, NOW + 10), *_session(RUN_B, 1, NOW + 11)[:1]]
        summaries = connection_summaries(records, NOW + 71)
        self.assertEqual(
            [(s.run, s.connection, s.state, s.operations) for s in summaries],
            [(RUN_A, 1, "closed", 1), (RUN_A, 2, "lost", 1), (RUN_B, 1, "open", 0)],
        )
        self.assertEqual(summaries[2].duration, 60.0)
        english = connections_table(summaries, "en", timezone.utc)
        self.assertEqual(english[0].split(), ["Connection", "Client", "Opened", "Closed", "Duration", "Bytes", "in", "Bytes", "out", "Outcome"])
        self.assertEqual(
            english[2].split(),
            [f"{RUN_A}:1", "10.1.4.27:51234", "2026-11-25", "12:00:01", "2026-11-25", "12:00:01", "0.300", "s", "628", "551", "closed-by-client"],
        )
        self.assertIn("never closed: the relay stopped", english[3])
        self.assertRegex(english[4], rf"^{RUN_B}:1 +10\.1\.4\.27:51234 +2026-11-25 12:00:11 +open +0:01:00$")
        french = connections_table(summaries[:1], "fr", timezone.utc)
        self.assertEqual(french[0].split()[:4], ["Connexion", "Client", "Ouverte", "le"])
        self.assertRegex(french[2], r"^1 +10\.1\.4\.27:51234 +25/11/2026 12:00:01 +25/11/2026 12:00:01 ")
        self.assertTrue(french[2].endswith("fermée par le client"), french[2])


    def test_tunnel_users_in_the_views(self) -> None:
        """A tunnel's user, known from its first record on: a User column and a JSON key only when one is known."""
        records = [_listening(RUN_A, NOW), *_session(RUN_A, 1, NOW + 1)]
        tunnel = {"run": RUN_A, "connection": 2, "client": "10.1.4.28:40000"}
        records += [
            {"time": _at(NOW + 2), "type": "connection-opened", **tunnel, "description": "d"},
            {"time": _at(NOW + 2), "type": "object-instantiated", **tunnel, "kind": "tunnel", "destination": "www.epmsi.atih.sante.fr:443", "user": "zoé", "description": "d"},
        ]
        summaries = connection_summaries(records, NOW + 3)
        self.assertEqual([s.user for s in summaries], [None, "zoé"])
        self.assertNotIn("user", summaries[0].to_json())
        self.assertEqual(list(summaries[1].to_json())[:4], ["run", "connection", "client", "user"])
        english = connections_table(summaries, "en", timezone.utc)
        self.assertEqual(english[0].split()[:3], ["Connection", "Client", "User"])
        self.assertRegex(english[2], r"^1 +10\.1\.4\.27:51234 {2,}2026-11-25 12:00:01 ")
        self.assertRegex(english[3], r"^2 +10\.1\.4\.28:40000 +zoé +2026-11-25 12:00:02 +open ")
        self.assertNotIn("User", connections_table(summaries[:1], "en", timezone.utc)[0])
        [made] = journal_table(records[-1:], "fr", timezone.utc)[2:]
        self.assertTrue(made.endswith("Type de l'objet instancié : tunnel vers www.epmsi.atih.sante.fr:443, utilisateur zoé"), made)


class FollowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.path = os.path.join(self.folder, "epop-journal.jsonl")
        self.clock = Clock()
        self.clock.advance(NOW)
        self.seen: list[dict[str, Any]] = []
        self.problems: list[Problem] = []

    def follower(self) -> JournalFollower:
        follower = JournalFollower(
            self.path, self.seen.append, self.clock, interval=0.5, on_problem=self.problems.append
        )
        follower.start()
        self.addCleanup(follower.stop)
        return follower

    def test_follow_across_rotations(self) -> None:
        """New events are delivered once each, in order, while the writer rotates the file under the follower."""
        writer = RotatingJournalWriter(self.path, "daily", keep=2, clock=self.clock)
        self.addCleanup(writer.close)
        for record in _session(RUN_A, 1, NOW):
            writer.write(record)
        self.follower()
        self.assertEqual([r["type"] for r in self.seen], ["connection-opened", "object-instantiated", "object-released", "connection-closed"])
        self.clock.advance(86400)
        writer.write(_session(RUN_A, 2, NOW)[0])  # rotates, then writes in the new file
        self.clock.advance(86400)
        for record in _session(RUN_A, 3, NOW)[:2]:
            writer.write(record)  # rotates again before the follower looked
        self.clock.advance(0.5)
        self.clock.advance(0.5)
        self.assertEqual(len(os.listdir(self.folder)), 3)
        self.assertEqual(
            [(r["connection"], r["type"]) for r in self.seen[4:]],
            [(2, "connection-opened"), (3, "connection-opened"), (3, "object-instantiated")],
        )
        for record in _session(RUN_A, 3, NOW)[2:]:
            writer.write(record)
        self.clock.advance(0.5)
        self.assertEqual([r["connection"] for r in self.seen].count(3), 4)
        self.assertEqual(self.problems, [])

    def test_follow_like_the_writer_by_size(self) -> None:
        """Size rotation (rename to .1, shift, new file) is followed too, with nothing lost or repeated."""
        writer = RotatingJournalWriter(self.path, "600", keep=3, clock=self.clock)
        self.addCleanup(writer.close)
        self.follower()
        sent = []
        for number in range(1, 6):
            for record in _session(RUN_A, number, NOW):
                writer.write(record)
                sent.append((number, record["type"]))
                self.clock.advance(0.5)
        self.assertTrue(os.path.exists(self.path + ".3"))
        self.assertEqual([(r["connection"], r["type"]) for r in self.seen], sent)

    def test_partial_line_waits_for_its_newline(self) -> None:
        """A line being written is delivered only once complete; a bad complete line is reported and following goes on."""
        first, second = _session(RUN_A, 1, NOW)[:2]
        line = encode_record(first)
        _write(self.path, [], line[:30])
        self.follower()
        self.assertEqual(self.seen, [])
        _write(self.path, [], line[30:] + b"garbage\n")
        self.clock.advance(0.5)
        self.assertEqual(self.seen, [first])
        self.assertEqual(self.problems, [Problem(self.path, 2)])
        _write(self.path, [second])
        self.clock.advance(0.5)
        self.assertEqual(self.seen, [first, second])

    def test_truncation_and_late_file(self) -> None:
        """A journal that does not exist yet is waited for; one truncated in place (copytruncate) is read again from its start."""
        follower = self.follower()
        self.assertTrue(follower.waiting)
        records = _session(RUN_A, 1, NOW)
        _write(self.path, records)
        self.clock.advance(0.5)
        self.assertFalse(follower.waiting)
        self.assertEqual(len(self.seen), 4)
        with open(self.path, "r+b") as f:
            f.truncate(0)
        self.clock.advance(0.5)
        _write(self.path, records[:1])
        self.clock.advance(0.5)
        self.assertEqual(len(self.seen), 5)
        self.assertEqual(self.seen[-1], records[0])

    def test_cli_follow(self) -> None:
        """`epop journal --follow` prints the header and the events, then new matching ones as they come, and never ends on its own."""
        _write(self.path, _session(RUN_A, 1, NOW))
        fake = ShutdownClock()
        fake.advance(NOW)
        stdout, stderr = io.BytesIO(), io.StringIO()
        d = cli.run(
            fake,
            ["--lang", "en", "journal", self.path, "--follow", "--type", "connection-opened"],
            stdout=stdout,
            stderr=stderr,
            environ={"EPOP_CONFIG": self.mktemp()},
        )
        lines = stdout.getvalue().decode().splitlines()
        self.assertEqual(lines[0].split(), ["Client", "IP", "Date", "Type", "Description"])
        self.assertEqual(len(lines), 3)
        self.assertIn("Connection id: 1, from 10.1.4.27:51234", lines[2])
        _write(self.path, _session(RUN_A, 2, NOW + 5))
        fake.advance(0.5)
        lines = stdout.getvalue().decode().splitlines()
        self.assertEqual(len(lines), 4)
        self.assertIn("Connection id: 2", lines[3])
        self.assertNoResult(d)
        [(phase, event, stop)] = fake.triggers
        self.assertEqual((phase, event), ("before", "shutdown"))
        stop()
        self.assertEqual(fake.getDelayedCalls(), [])
        self.assertEqual(stderr.getvalue(), "")


class CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.environ = {"EPOP_CONFIG": os.path.abspath(self.mktemp())}

    def run_epop(self, *argv: str) -> tuple[int, str, str]:
        stdout, stderr = io.BytesIO(), io.StringIO()
        d = cli.run(reactor, list(argv), stdout=stdout, stderr=stderr, environ=self.environ)
        return self.successResultOf(d), stdout.getvalue().decode(), stderr.getvalue()

    def test_journal_command(self) -> None:
        """`epop journal` prints the table, --json the raw records, and warns about bad lines on stderr."""
        records = [_listening(RUN_A, NOW), *_session(RUN_A, 1, NOW + 1)]
        _write(self.path, records[:2], b"{oops\n")
        _write(self.path, records[2:])
        code, out, err = self.run_epop("--lang", "fr", "journal", self.path)
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["IP", "du", "client", "Date", "Type", "Description"])
        self.assertEqual(len(lines), 2 + 5)
        self.assertRegex(lines[3], r"^10\.1\.4\.27 +\d\d/\d\d/2026 \d\d:\d\d:\d\d  Ouverture de connexion ")
        self.assertEqual(err, f"{self.path}, ligne 3 : pas un enregistrement du journal, ignorée\n")
        code, out, err = self.run_epop("journal", self.path, "--json", "--connection", "1", "--type", "connection-closed")
        self.assertEqual([json.loads(line) for line in out.splitlines()], [records[-1]])

    def test_connections_since_reads_rotated_files(self) -> None:
        """`epop connections` reads the current file; with --since, the rotated ones too, with RUN:ID once runs differ."""
        _write(self.path + ".1", [_listening(RUN_A, NOW), *_session(RUN_A, 1, NOW + 1)])
        _write(self.path, [_listening(RUN_B, NOW + 10), *_session(RUN_B, 1, NOW + 11)])
        code, out, _ = self.run_epop("connections", self.path)
        self.assertEqual([line.split()[0] for line in out.splitlines()[2:]], ["1"])
        code, out, _ = self.run_epop("connections", self.path, "--since", "2000-01-01")
        self.assertEqual([line.split()[0] for line in out.splitlines()[2:]], [f"{RUN_A}:1", f"{RUN_B}:1"])
        code, _, err = self.run_epop("connections", self.path, "--since", "never")
        self.assertEqual(code, 2)
        self.assertIn("--since never", err)

    def test_journal_usage_errors(self) -> None:
        """A bad --type, --connection or --since, or no journal at the path, is a usage error (exit 2)."""
        for args in (["--type", "opened"], ["--connection", "x"], ["--since", "soon"]):
            code, _, err = self.run_epop("journal", self.path, *args)
            self.assertEqual(code, 2, args)
            self.assertIn(args[0], err)
        code, out, err = self.run_epop("journal", self.path)
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(
            err,
            f"epop: no journal at {os.path.abspath(self.path)}: give the relay's journal file (its --journal), "
            "e.g. epop journal /var/lib/epop/journal.jsonl\n",
        )
        code, out, err = self.run_epop("--lang", "fr", "connections", self.path)
        self.assertEqual(code, 2)
        self.assertIn(f"epop: pas de journal à {os.path.abspath(self.path)} : ", err)

    def test_rotated_files_hinted_without_since(self) -> None:
        """Without --since only the current file is read: its rotated files are named, with how to read them."""
        _write(self.path + ".2", [_listening(RUN_A, NOW - 200), *_session(RUN_A, 1, NOW - 199)])
        _write(self.path + ".1", [*_session(RUN_A, 2, NOW - 100)])
        _write(self.path, [*_session(RUN_A, 3, NOW - 10)])
        hint = (f"(older events are in 2 rotated file(s): {os.path.basename(self.path)}.2, "
                f"{os.path.basename(self.path)}.1; --since reads them too, e.g. epop {{}} {self.path} --since 2d)\n")
        for command in ("journal", "connections"):
            code, out, err = self.run_epop(command, self.path)
            self.assertEqual((code, err), (0, hint.format(command)))
            code, out, err = self.run_epop(command, self.path, "--since", "1h")
            self.assertEqual(code, 0)
            self.assertNotIn("older events", err)
        code, out, err = self.run_epop("--lang", "fr", "journal", self.path)
        self.assertIn("(des événements plus anciens sont dans 2 fichier(s) archivé(s) : ", err)
        for n in range(3, 6):
            _write(self.path + f".{n}", [*_session(RUN_A, 10 + n, NOW - 100 * n)])
        code, out, err = self.run_epop("journal", self.path)
        name = os.path.basename(self.path)
        self.assertIn(f"in 5 rotated file(s): {name}.5, ..., {name}.1;", err)

    def test_no_hint_without_rotated_files(self) -> None:
        """A journal that was never rotated gets no hint."""
        _write(self.path, [_listening(RUN_A, NOW), *_session(RUN_A, 1, NOW + 1)])
        code, out, err = self.run_epop("journal", self.path)
        self.assertEqual((code, err), (0, ""))


class LiveRelayTests(TestCase):
    """`epop connections` on the journal of a relay that is running."""

    async def test_connections_of_a_live_relay(self) -> None:
        """One finished upload and one connection still open are listed from the journal the relay is writing."""
        sandbox = make_trustme_sandbox(self, reactor)
        path = os.path.abspath(self.mktemp())
        relay = start_relay(self, reactor, sandbox.url, sandbox.ca_path, file_journal=True, journal=path)
        upload = self.mktemp()
        with open(upload, "wb") as f:
            f.write(b"RSS\n" * 1000)
        reply = await send_file(reactor, upload, to="/syriusUpload.do", relay=relay.endpoint)
        self.assertEqual(reply.status, 200)
        self.assertTrue(await poll_until(reactor, lambda: "connection-closed" in relay.types()))
        waiting = await raw_connect(self, reactor, relay.port)
        waiting.transport.write(HELLO)
        self.assertTrue(await poll_until(reactor, lambda: relay.types().count("connection-opened") == 2))

        stdout, stderr = io.BytesIO(), io.StringIO()
        code = await cli.run(reactor, ["--lang", "en", "connections", path], stdout=stdout, stderr=stderr, environ={"EPOP_CONFIG": self.mktemp()})
        self.assertEqual(code, 0, stderr.getvalue())
        lines = stdout.getvalue().decode().splitlines()
        self.assertEqual(len(lines), 4, lines)
        closed, still_open = lines[2], lines[3]
        self.assertRegex(closed, r"^1 +127\.0\.0\.1:\d+ +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +[\d.]+ s +\d+ +\d+ +closed-by-client$")
        self.assertRegex(still_open, r"^2 +127\.0\.0\.1:\d+ +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +open +[\d.]+ s$")

        stdout = io.BytesIO()
        await cli.run(reactor, ["connections", path, "--json"], stdout=stdout, stderr=stderr, environ={"EPOP_CONFIG": self.mktemp()})
        summaries = [json.loads(line) for line in stdout.getvalue().splitlines()]
        self.assertEqual([(s["connection"], s["state"], s["reason"]) for s in summaries], [(1, "closed", "closed-by-client"), (2, "open", None)])
        self.assertGreater(summaries[0]["bytes_in"], 4000)
        self.assertEqual(summaries[1]["closed"], None)
        run = summaries[0]["run"]
        self.assertEqual({s["run"] for s in summaries}, {run})

        stdout = io.BytesIO()
        await cli.run(reactor, ["journal", path, "--connection", f"{run}:2", "--json"], stdout=stdout, stderr=stderr, environ={"EPOP_CONFIG": self.mktemp()})
        self.assertEqual([json.loads(line)["type"] for line in stdout.getvalue().splitlines()], ["connection-opened"])
