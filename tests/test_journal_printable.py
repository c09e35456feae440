"""
Whatever a journal holds (escape sequences from a PROXY header, a newline
that forges a log line, a right-to-left override), every viewer shows it
and never obeys it: the relay's log lines and the journal's
C{description}, C{epop journal} (table, C{--follow}, C{--json}) and C{epop
connections} (table, C{--json}).
"""

from __future__ import annotations

import io
import json
import os
import unicodedata
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import LogEvent, Logger, LogLevel, textFileLogObserver
from twisted.trial.unittest import SynchronousTestCase

from epop import cli
from epop.journal.connections import connection_summaries, connections_table
from epop.journal.events import emit, journal_record
from epop.journal.observer import JournalObserver
from epop.journal.reader import JournalFollower
from epop.journal.table import journal_row
from epop.journal.writer import encode_record
from epop.testing import MemoryJournalWriter
from epop.printable import printable, safe_json
from tests.support import ShutdownClock

RUN = "3c1c3f5238c2"

#: The characters the brief names, written out here rather than taken from
#: the code under test: bidirectional marks, embeddings, overrides, isolates.
BIDI = {"\u061c", "\u200e", "\u200f", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}


def dangerous(char: str) -> bool:
    """A character a terminal acts on: control (C0, DEL, C1), line/paragraph separator, bidi control, surrogate."""
    return unicodedata.category(char) in ("Cc", "Zl", "Zp", "Cs") or char in BIDI


def dangerous_in(text: str) -> list[str]:
    return sorted({f"U+{ord(c):04X}" for c in text if dangerous(c)})


#: A PROXY header's worth of junk: ANSI codes, a forged log line, a JSON
#: break-out, a right-to-left override, C1 controls, DEL and a lone surrogate.
JUNK = (
    "10.1.4.27:51234\x1b[2J\x1b]0;owned\x07\r\n"
    '2026-11-25T20:26:50+0000 [epop.relay.protocol.RelayProtocol#info] FAKE-LOG-LINE"},{'
    "\u202egpj.exe\u2066\u2028\u2029\x85\x9b31m\x7f\ud800\u200f\u061c"
)

#: Other people's tests share the machine: no health check on speed, no deadline.
patient = settings(suppress_health_check=list(HealthCheck), deadline=None)

#: Any string at all, surrogates and controls included.
any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40) | st.sampled_from(
    [JUNK, "\x1b", "\n", "\u202e", "\ud800"]
)


def _at(n: float) -> str:
    return f"2026-11-25T10:00:{n:06.3f}Z"


def _records(client: str, path: str, reason: str, run: str = RUN, kind: str = "connection-opened") -> list[dict[str, Any]]:
    base = {"run": run, "connection": 1, "client": client}
    upload = {"kind": "upload", "method": "POST", "path": path, "length": 309}
    return [
        {"time": _at(0), "type": "listening-opened", "run": run, "address": client, "port": 3358, "description": client},
        {"time": _at(1), "type": kind, **base, "description": client},
        {"time": _at(2), "type": "object-instantiated", **base, **upload, "description": path},
        {"time": _at(3), "type": "object-released", **base, **upload, "integrity": "ok", "status": 200, "outcome": reason, "error": reason, "duration": 0.1, "description": path},
        {"time": _at(4), "type": "connection-closed", **base, "duration": 0.3, "bytes_in": 628, "bytes_out": 551, "reason": reason, "description": reason},
        {"time": _at(5), "type": "object-released", **base, "kind": reason, "outcome": None, "description": reason},
    ]


class PrintableTests(SynchronousTestCase):
    def test_each_dangerous_character_is_shown_escaped(self) -> None:
        """Controls, DEL, C1, separators and bidi controls are written out as \\x.. or \\u....; accents stay."""
        self.assertEqual(printable("a\x1b[31mb"), "a\\x1b[31mb")
        self.assertEqual(printable("line\nFAKE\r\t"), "line\\nFAKE\\r\\t")
        self.assertEqual(printable("\x00\x7f\x85\x9f"), "\\x00\\x7f\\x85\\x9f")
        self.assertEqual(printable("\u202egpj.exe\u2066\u2069\u200e\u200f\u061c"), "\\u202egpj.exe\\u2066\\u2069\\u200e\\u200f\\u061c")
        self.assertEqual(printable("\u2028\u2029\ud800"), "\\u2028\\u2029\\ud800")
        self.assertEqual(printable("Écoute réseau 10.1.4.27:51234 /a b"), "Écoute réseau 10.1.4.27:51234 /a b")

    @patient
    @given(any_text)
    def test_printable_of_any_string_is_safe(self, text: str) -> None:
        """No dangerous character survives printable(), and the result can always be encoded to UTF-8."""
        shown = printable(text)
        self.assertEqual(dangerous_in(shown), [])
        shown.encode("utf-8")

    @patient
    @given(st.dictionaries(any_text, any_text, max_size=4))
    def test_safe_json_round_trips_and_is_safe(self, value: dict[str, str]) -> None:
        """safe_json is one line of valid JSON, with no dangerous character, that reads back as the same value."""
        line = safe_json(value)
        self.assertEqual(dangerous_in(line), [])
        self.assertEqual(json.loads(line), value)
        line.encode("utf-8")


class RelayLogTests(SynchronousTestCase):
    """The text of a journal event, in the twistd log and in the journal's description."""

    def emitted(self, **fields: Any) -> tuple[LogEvent, str]:
        events: list[LogEvent] = []
        log = Logger(namespace="epop.relay.protocol.RelayProtocol", observer=events.append)
        emit(log, RUN, "connection-closed", "Connection {connection} from {client} closed: {reason}", **fields)
        [event] = events
        out = io.StringIO()
        textFileLogObserver(out)(event)
        return event, out.getvalue()

    def test_junk_client_is_escaped_in_the_log_and_kept_in_the_field(self) -> None:
        """A forged line in a client address shows as one twistd log line with \\x1b and \\n; the journal field keeps the exact value."""
        event, text = self.emitted(connection=4, client=JUNK, reason="closed-by-client")
        self.assertEqual(text.count("\n"), 1, text)
        self.assertEqual(dangerous_in(text[:-1]), [])
        self.assertIn("\\x1b[2J", text)
        self.assertIn("\\u202egpj.exe", text)
        self.assertIn("Connection 4 from 10.1.4.27:51234\\x1b[2J", text)
        record = journal_record(event, event["log_time"])
        self.assertEqual(record["client"], JUNK)
        self.assertEqual(dangerous_in(record["description"]), [])
        self.assertEqual(record["description"], text.split("] ", 1)[1].rstrip("\n"))
        line = encode_record(record)
        self.assertEqual(line.count(b"\n"), 1)
        self.assertEqual(dangerous_in(line[:-1].decode("utf-8")), [])
        self.assertEqual(json.loads(line)["client"], JUNK)

    @patient
    @given(any_text, any_text)
    def test_any_client_and_reason_give_a_safe_log_line(self, client: str, reason: str) -> None:
        """Whatever the client and reason, the log line and the description hold no dangerous character."""
        event, text = self.emitted(connection=1, client=client, reason=reason)
        self.assertEqual(dangerous_in(text[:-1]), [])
        self.assertTrue(text.endswith("\n"))
        self.assertEqual(dangerous_in(journal_record(event, event["log_time"])["description"]), [])

    def test_numbers_keep_their_format_and_fields_their_values(self) -> None:
        """Numbers are formatted as before; the event's own fields are unchanged for other observers."""
        events: list[LogEvent] = []
        log = Logger(observer=events.append)
        emit(log, RUN, "object-released", "{kind}: {duration:.2f} s, {n} {missing}", level=LogLevel.warn, kind="up\nload", duration=1.2345, n=None)
        [event] = events
        self.assertEqual(event["kind"], "up\nload")
        self.assertEqual(event["duration"], 1.2345)
        writer = MemoryJournalWriter()
        JournalObserver(writer, RUN, Clock())(event)
        self.assertTrue(writer.records[0]["description"].startswith("Unable to format event"))
        emit(log, RUN, "object-released", "{kind}: {duration:.2f} s, {n}", kind="up\nload", duration=1.2345, n=None)
        JournalObserver(writer, RUN, Clock())(events[1])
        self.assertEqual(writer.records[1]["description"], "up\\nload: 1.23 s, None")


class ViewerTests(SynchronousTestCase):
    """`epop journal` and `epop connections` on a journal that holds junk."""

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.environ = {"EPOP_CONFIG": os.path.abspath(self.mktemp())}

    def write(self, records: list[dict[str, Any]], raw: bool = False) -> None:
        with open(self.path, "wb") as f:
            for record in records:
                if raw:
                    # As an older relay (or a hand) wrote it: controls as JSON
                    # escapes, the rest raw.
                    f.write(json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n")
                else:
                    f.write(encode_record(record))

    def run_epop(self, *argv: str) -> tuple[int, str, str]:
        stdout, stderr = io.BytesIO(), io.StringIO()
        d = cli.run(reactor, list(argv), stdout=stdout, stderr=stderr, environ=self.environ)
        return self.successResultOf(d), stdout.getvalue().decode("utf-8"), stderr.getvalue()

    def check_all_viewers(self, records: list[dict[str, Any]]) -> None:
        for language in ("en", "fr"):
            for command in (["journal"], ["journal", "--json"], ["connections"], ["connections", "--json"]):
                code, out, err = self.run_epop("--lang", language, *command, self.path)
                self.assertEqual(code, 0, (command, err))
                self.assertEqual(dangerous_in(out.replace("\n", "")), [], command)
                self.assertEqual(dangerous_in(err.replace("\n", "")), [], command)
                if command == ["journal"]:
                    self.assertEqual(len(out.splitlines()), 2 + len(records), out)
                if command == ["journal", "--json"]:
                    self.assertEqual([json.loads(line) for line in out.splitlines()], records)
                if command == ["connections", "--json"]:
                    [summary] = [json.loads(line) for line in out.splitlines()]
                    self.assertEqual(summary["client"], records[1]["client"])

    def test_forged_line_and_escape_codes_are_shown_not_obeyed(self) -> None:
        """The PROXY-header junk of a client, a path and a reason shows as \\x1b, \\n, \\u202e in every viewer, one row per event."""
        records = _records(JUNK, "/syriusUpload.do;\x1b[31m\u202e", "closed-by-client\nFAKE-LOG-LINE")
        for raw in (False, True):
            self.write(records, raw)
            self.check_all_viewers(records)
        code, out, _ = self.run_epop("journal", self.path)
        self.assertNotIn("\x1b", out)
        self.assertIn("10.1.4.27:51234\\x1b[2J", out)
        self.assertIn("\\u202egpj.exe", out)
        self.assertNotIn("\nFAKE-LOG-LINE", out)
        self.assertNotIn("\n2026-11-25T20:26:50+0000 [epop.relay.protocol.RelayProtocol#info] FAKE", out)
        code, out, _ = self.run_epop("connections", self.path)
        self.assertEqual(len(out.splitlines()), 3, out)
        self.assertIn("closed-by-client\\nFAKE-LOG-LINE", out)

    def test_forged_user_and_destination_are_shown_not_obeyed(self) -> None:
        """A user name and a destination holding junk (a forged file) show escaped in every viewer, one row per event."""
        records = _records("10.1.4.27:51234", "/p", "closed-by-client")
        records[2] = {**records[2], "kind": "tunnel", "destination": JUNK, "user": JUNK}
        records[4] = {**records[4], "destination": JUNK, "user": JUNK}
        self.write(records)
        self.check_all_viewers(records)
        code, out, _ = self.run_epop("journal", self.path)
        self.assertIn(", user 10.1.4.27:51234\\x1b[2J", out)
        self.assertIn(", to 10.1.4.27:51234\\x1b[2J", out)
        self.assertIn("Instantiated object: tunnel to 10.1.4.27:51234\\x1b[2J", out)
        code, out, _ = self.run_epop("connections", self.path)
        self.assertEqual(len(out.splitlines()), 3, out)
        self.assertIn(" 10.1.4.27:51234\\x1b[2J", out.splitlines()[2])
        code, out, _ = self.run_epop("connections", "--json", self.path)
        self.assertEqual(json.loads(out)["user"], JUNK)

    @settings(max_examples=30, suppress_health_check=list(HealthCheck), deadline=None)
    @given(any_text, any_text, any_text, any_text)
    def test_any_journal_gives_safe_output(self, client: str, path: str, reason: str, run: str) -> None:
        """Whatever strings the journal's fields hold, no viewer prints a dangerous character."""
        records = _records(client, path, reason, run or RUN, kind="connection-opened")
        self.write(records)
        self.check_all_viewers(records)

    @patient
    @given(any_text, any_text)
    def test_follow_rows_are_safe(self, client: str, kind: str) -> None:
        """A row of `epop journal --follow` and of the connections table is safe for any client and type."""
        record = {"time": _at(1), "type": kind, "run": RUN, "connection": 1, "client": client, "description": kind}
        for language in ("en", "fr"):
            self.assertEqual(dangerous_in(journal_row(record, language)), [])
            table = connections_table(connection_summaries([record], 0.0), language)
            self.assertEqual(dangerous_in("".join(table)), [])

    def test_cli_follow_and_its_json(self) -> None:
        """`epop journal --follow` (table and --json) prints junk that arrives while it follows as one safe line per event."""
        self.write(_records("10.1.4.27:51234", "/p", "closed-by-client"))
        for extra in ([], ["--json"]):
            fake = ShutdownClock()
            stdout, stderr = io.BytesIO(), io.StringIO()
            d = cli.run(fake, ["journal", self.path, "--follow", *extra], stdout=stdout, stderr=stderr, environ=self.environ)
            before = len(stdout.getvalue().decode().splitlines())
            junk = _records(JUNK, "/p;\x1b[31m", "closed-by-client\nFAKE-LOG-LINE", run="1da46e10bf43")
            with open(self.path, "ab") as f:
                for record in junk:
                    f.write(encode_record(record))
            fake.advance(0.5)
            out = stdout.getvalue().decode("utf-8")
            self.assertEqual(len(out.splitlines()), before + len(junk), out)
            self.assertEqual(dangerous_in(out.replace("\n", "")), [])
            if extra:
                self.assertEqual([json.loads(line) for line in out.splitlines()[-len(junk):]], junk)
            else:
                self.assertIn("10.1.4.27:51234\\x1b[2J", out)
            self.assertNoResult(d)
            for _, _, stop in fake.triggers:
                stop()
            self.assertEqual(stderr.getvalue(), "")

    def test_follower_reads_the_junk_it_is_given(self) -> None:
        """The follower hands on records with their exact values; only printing escapes them."""
        records = _records(JUNK, "/p", "r")
        self.write(records)
        got: list[dict[str, Any]] = []
        follower = JournalFollower(self.path, got.append, Clock())
        follower.poll()
        follower.stop()
        self.assertEqual(got, records)
