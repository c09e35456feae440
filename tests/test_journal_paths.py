"""
Paths in the journal and the relay's log: no query string, no fragment,
and no path parameters (C{;jsessionid=...}), whatever the workstation
asked for.
"""

from __future__ import annotations

import io
import os
from typing import Any

from twisted.internet import reactor
from twisted.logger import LogEvent, Logger, textFileLogObserver
from twisted.trial.unittest import SynchronousTestCase, TestCase

from epop.workstation.client import send_file
from epop.journal.events import emit, journal_record, strip_query
from tests.relaying import start_relay
from tests.support import make_trustme_sandbox, poll_until

SESSION = "9F8E7D6C5B4A39281706F5E4D3C2B1A0"


class StripTests(SynchronousTestCase):
    def test_parameters_of_every_segment_are_cut(self) -> None:
        """`;` parameters go from each segment, the query and fragment from the first ? or #."""
        cases = {
            "/syriusUpload.do": "/syriusUpload.do",
            "/syriusUpload.do;jsessionid=" + SESSION: "/syriusUpload.do",
            "/a;x=1/b;jsessionid=2": "/a/b",
            "/a;x=1;y=2/b/c;z": "/a/b/c",
            "/a;x=/b?q=1;jsessionid=3": "/a/b",
            "/a/b;x=1#frag;y": "/a/b",
            ";x=1/b": "/b",
            "/a/": "/a/",
            "/": "/",
            "": "",
            "/é%3Bx/b": "/é%3Bx/b",
        }
        for given, expected in cases.items():
            self.assertEqual(strip_query(given), expected, given)

    def test_emit_cuts_the_path_for_the_log_and_the_journal(self) -> None:
        """A path with parameters given to emit() reaches neither the twistd log text nor the journal line."""
        events: list[LogEvent] = []
        log = Logger(observer=events.append)
        emit(
            log,
            "3c1c3f5238c2",
            "object-instantiated",
            "Object instantiated: {kind} {method} {path} ({length} bytes)",
            kind="upload",
            method="POST",
            path=f"/ws;v=2/syriusUpload.do;jsessionid={SESSION}?userPwd=secret",
            length=309,
            connection=1,
            client="10.1.4.27:51234",
        )
        [event] = events
        out = io.StringIO()
        textFileLogObserver(out)(event)
        self.assertIn("Object instantiated: upload POST /ws/syriusUpload.do (309 bytes)", out.getvalue())
        record = journal_record(event, event["log_time"])
        self.assertEqual(record["path"], "/ws/syriusUpload.do")
        self.assertEqual(record["description"], "Object instantiated: upload POST /ws/syriusUpload.do (309 bytes)")
        for text in (out.getvalue(), repr(record)):
            self.assertNotIn(SESSION, text)
            self.assertNotIn("jsessionid", text)

    def test_journal_record_cuts_an_event_logged_another_way(self) -> None:
        """An event that did not go through emit() still has its path field cut when journaled."""
        event: dict[str, Any] = {
            "log_time": 0.0,
            "log_format": "x",
            "epop_event": "object-released",
            "epop_relay": "3c1c3f5238c2",
            "path": f"/a;jsessionid={SESSION}/b",
        }
        self.assertEqual(journal_record(event, event["log_time"])["path"], "/a/b")


class RelayPathTests(TestCase):
    async def test_a_session_id_in_the_path_never_reaches_the_journal_file(self) -> None:
        """A real upload to PATH;jsessionid=...?... is journaled with the bare path, in its fields and descriptions."""
        sandbox = make_trustme_sandbox(self, reactor)
        path = os.path.abspath(self.mktemp())
        relay = start_relay(self, reactor, sandbox.url, sandbox.ca_path, file_journal=True, journal=path)
        upload = self.mktemp()
        with open(upload, "wb") as f:
            f.write(b"RSS\n" * 10)
        await send_file(
            reactor,
            upload,
            to=f"/syriusUpload.do;jsessionid={SESSION}?userPwd=secret",
            relay=relay.endpoint,
        )
        self.assertTrue(await poll_until(reactor, lambda: "connection-closed" in relay.types()))
        with open(path, "rb") as f:
            content = f.read()
        self.assertNotIn(SESSION.encode(), content)
        self.assertNotIn(b"jsessionid", content)
        released = relay.records("object-released")
        self.assertEqual([r["path"] for r in released], ["/syriusUpload.do"])
        self.assertIn("POST /syriusUpload.do:", released[0]["description"])
