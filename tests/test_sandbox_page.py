"""
The sandbox's page at C{/} lists its latest receipts and what it was told,
read back from its upload folder: uploads go through the real sandbox over
TLS with a trustme CA, and the page is fetched the same way.
"""

from __future__ import annotations

import hashlib
import io
import json
from html.parser import HTMLParser
from typing import Any

from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from epop.sandbox.receipts import FILES_SHOWN, MASK, RECEIPTS_SHOWN
from epop.sandbox.retention import Keep
from epop.sandbox.uploads import MAX_KEPT_VALUE, RECEIPT_NAME
from tests.support import TestSandbox, make_trustme_sandbox, running_reactor

#: The fields of e-PMSI's form, with a password among them.
FIELDS = {
    "userId": "alice",
    "userPwd": "s3cret-Pwd!",
    "year": "2026",
    "period": "M10",
    "finess": "123456789",
}


class _PageReader(HTMLParser):
    """The page as a person reads it: its rules, its receipts' rows, what it would load or run."""

    def __init__(self) -> None:
        super().__init__()
        self.forms = 0
        self.active: list[str] = []
        self.rules: list[str] = []
        self.rows: list[list[str]] = []
        self.summary: list[str] = []
        self._section: str | None = None
        self._cell: list[str] | None = None
        self._item: list[str] | None = None
        self._paragraph: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script" or any(name.startswith("on") for name in attributes):
            self.active.append(tag)
        for name in ("src", "href"):
            if attributes.get(name):
                self.active.append(f"{tag} {name}")
        if tag == "br" and self._cell is not None:
            self._cell.append("\n")
        elif tag == "form":
            self.forms += 1
        elif tag in ("ul", "table") and attributes.get("id") in ("rules", "receipts"):
            self._section = attributes["id"]
        elif tag == "li" and self._section == "rules":
            self._item = []
        elif tag == "tbody" and self._section == "receipts":
            self._section = "receipt rows"
        elif tag == "tr" and self._section == "receipt rows":
            self.rows.append([])
        elif tag == "td" and self._section == "receipt rows":
            self._cell = []
        elif tag == "p":
            self._paragraph = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("ul", "table"):
            self._section = None
        elif tag == "li" and self._item is not None:
            self.rules.append("".join(self._item))
            self._item = None
        elif tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "p" and self._paragraph is not None:
            self.summary.append("".join(self._paragraph))
            self._paragraph = None

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        for part in (self._cell, self._item, self._paragraph):
            if part is not None:
                part.append(data)


class SandboxPageTests(TestCase):
    """GET / shows the form, the sandbox's rules, and its newest receipts first."""

    def setUp(self) -> None:
        self.reactor = running_reactor()
        self.sandbox: TestSandbox = make_trustme_sandbox(self, self.reactor)

    async def upload(
        self,
        filename: str,
        content: bytes,
        fields: dict[str, str] = FIELDS,
        sandbox: TestSandbox | None = None,
    ) -> dict[str, Any]:
        """Post one file with e-PMSI's fields, as C{epop send} does; returns the receipt."""
        sandbox = sandbox or self.sandbox
        response = await sandbox.client(self.reactor).post(
            sandbox.url + "/syriusUpload.do",
            data=fields,
            files={"theFile": (filename, "application/octet-stream", io.BytesIO(content))},
        )
        self.assertEqual(response.code, 200)
        return dict(await response.json())

    async def page(self, sandbox: TestSandbox | None = None) -> tuple[str, _PageReader]:
        text, reader, _ = await self.page_in(None, sandbox)
        return text, reader

    async def page_in(
        self, accept_language: str | None, sandbox: TestSandbox | None = None
    ) -> tuple[str, _PageReader, list[bytes]]:
        """The page asked for with C{Accept-Language} (none: no such header), and its C{Vary}."""
        sandbox = sandbox or self.sandbox
        headers = {} if accept_language is None else {b"Accept-Language": [accept_language.encode()]}
        response = await sandbox.client(self.reactor).get(sandbox.url + "/", headers=headers)
        self.assertEqual(response.code, 200)
        text = (await response.content()).decode("utf-8")
        reader = _PageReader()
        reader.feed(text)
        reader.close()
        self.assertEqual(reader.forms, 1)
        self.assertEqual(reader.active, [], "the page loads or runs something")
        return text, reader, response.headers.getRawHeaders(b"Vary", [])

    async def test_french_when_the_browser_prefers_it(self) -> None:
        """The page speaks French to a browser preferring French, and says it varies with the language."""
        await self.upload("rss.zip", b"PK")
        text, page, vary = await self.page_in("fr-FR,fr;q=0.9")
        self.assertIn(b"Accept-Language", vary)
        self.assertIn('<html lang="fr">', text)
        self.assertIn("<title>Bac à sable e-PMSI : envoi</title>", text)
        self.assertIn("<h2>Comment il répond</h2>", text)
        self.assertIn("<h2>Derniers accusés de réception</h2>", text)
        self.assertIn("<th>Taille (octets)</th>", text)
        self.assertIn(">Envoyer</button>", text)
        self.assertIn("Les 1 plus récents des 1 envoi(s) gardés, le plus récent d&#x27;abord.", text)
        self.assertIn("Chaque envoi complet est rangé et reçoit un accusé de réception (pas de --reject).", page.rules)
        self.assertNotIn("Latest receipts", text)

    async def test_english_otherwise(self) -> None:
        """Without French first (or no Accept-Language at all), the page is English as before."""
        for accept_language in (None, "en-GB,en;q=0.9,fr;q=0.8", "de-DE"):
            text, page, vary = await self.page_in(accept_language)
            self.assertIn(b"Accept-Language", vary)
            self.assertIn('<html lang="en">', text)
            self.assertIn("<title>e-PMSI sandbox: upload</title>", text)
            self.assertIn("No upload yet.", page.summary)
            self.assertIn(
                "Every complete upload is stored and answered with a receipt (no --reject).", page.rules
            )

    async def test_no_upload_yet(self) -> None:
        """Before any upload the page says so, and lists no receipt."""
        _, page = await self.page()
        self.assertIn("No upload yet.", page.summary)
        self.assertEqual(page.rows, [])

    async def test_newest_first(self) -> None:
        """Each upload's time, request, file name, size, SHA-256 and fields are listed, newest first."""
        receipts = [
            await self.upload(f"rss-{n}.zip", b"PK rss %d" % n * (n + 1)) for n in range(3)
        ]
        _, page = await self.page()
        self.assertIn("The 3 newest of 3 upload(s) kept, newest first.", page.summary)
        self.assertEqual([row[1] for row in page.rows], [r["upload"] for r in reversed(receipts)])
        newest, content = page.rows[0], b"PK rss 2" * 3
        self.assertRegex(newest[0], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
        self.assertEqual(
            newest[2:6],
            ["POST /syriusUpload.do", "rss-2.zip", f"{len(content):,}", hashlib.sha256(content).hexdigest()],
        )
        # In the order they were sent.
        self.assertEqual(
            newest[6].split("\n"),
            [f"{name} = {MASK if name == 'userPwd' else FIELDS[name]}" for name in receipts[-1]["fields"]],
        )

    async def test_passwords_masked(self) -> None:
        """A password field's value is masked on the page and never kept on disk, whatever its exact name."""
        secrets = {"userPwd": "s3cret-Pwd!", "proxy_password": "pr0xy-Pass", "apiToken": "t0ken-value"}
        receipt = await self.upload("rss.zip", b"PK", {"userId": "alice", **secrets})
        text, page = await self.page()
        [row] = page.rows
        for name in secrets:
            self.assertIn(f"{name} = {MASK}", row[6])
        self.assertIn("userId = alice", row[6])
        kept = self.sandbox.upload_directory.child(receipt["upload"]).child(RECEIPT_NAME).getContent()
        for value in secrets.values():
            self.assertNotIn(value, text)
            self.assertNotIn(value.encode("utf-8"), kept)

    async def test_hostile_names_escaped(self) -> None:
        """Markup in a file name, a field or a path is shown as text: the page runs nothing."""
        hostile = "<script>alert('x')</script>"
        await self.upload("a&b'c.zip", b"PK", {"userId": hostile, "year": '"><img src=x onerror=alert(1)>'})
        # A receipt whose file name was never sanitised (written by hand).
        folder = self.sandbox.upload_directory.child("29991231T235959-000001")
        folder.makedirs()
        folder.child(RECEIPT_NAME).setContent(
            json.dumps(
                {
                    "upload": folder.basename(),
                    "received": "2999-12-31T23:59:59+00:00",
                    "method": "POST",
                    "path": "/<b>bold</b>",
                    "files": [{"field": "theFile", "filename": hostile, "size": 1, "sha256": "<i>"}],
                    "fields": [{"name": hostile, "value": hostile}],
                }
            ).encode("utf-8")
        )
        text, page = await self.page()
        self.assertNotIn("<script", text)
        self.assertNotIn("<img", text)
        self.assertNotIn("<b>", text)
        handmade, uploaded = page.rows
        self.assertEqual(handmade[2:6], ["POST /<b>bold</b>", hostile, "1", "<i>"])
        self.assertEqual(handmade[6], f"{hostile} = {hostile}")
        self.assertEqual(uploaded[3], "a&b'c.zip")
        self.assertIn(f"userId = {hostile}", uploaded[6])

    async def test_at_most_the_newest(self) -> None:
        """However many uploads are kept, the page lists the newest few only."""
        receipts = [await self.upload(f"f{n}.txt", b"%d" % n) for n in range(RECEIPTS_SHOWN + 3)]
        _, page = await self.page()
        self.assertEqual(
            [row[1] for row in page.rows],
            [r["upload"] for r in reversed(receipts)][:RECEIPTS_SHOWN],
        )
        self.assertIn(
            f"The {RECEIPTS_SHOWN} newest of {RECEIPTS_SHOWN + 3} upload(s) kept, newest first.",
            page.summary,
        )

    async def test_many_files_in_one_upload(self) -> None:
        """An upload of many files lists the first few and counts the rest."""
        response = await self.sandbox.client(self.reactor).post(
            self.sandbox.url + "/syriusUpload.do",
            files=[("theFile", (f"f{n:02d}.txt", "text/plain", io.BytesIO(b"x"))) for n in range(FILES_SHOWN + 5)],
        )
        self.assertEqual(response.code, 200)
        await response.content()
        _, page = await self.page()
        self.assertEqual(len(page.rows), FILES_SHOWN + 1)
        self.assertEqual(page.rows[0][3], "f00.txt")
        self.assertEqual(page.rows[0][6], "no form field")
        self.assertEqual(page.rows[-1], ["and 5 more file(s)"])
        _, page, _ = await self.page_in("fr")
        self.assertEqual(page.rows[0][6], "aucun champ")

    async def test_sizes_grouped_in_the_readers_language(self) -> None:
        """A size's thousands are separated by commas in English, by narrow no-break spaces in French."""
        await self.upload("rss.zip", b"x" * 1234567)
        _, page = await self.page()
        self.assertEqual(page.rows[0][4], "1,234,567")
        _, page, _ = await self.page_in("fr")
        self.assertEqual(page.rows[0][4], "1\u202f234\u202f567")

    async def test_long_value_cut(self) -> None:
        """A long field value is kept and shown cut, marked as such."""
        await self.upload("rss.zip", b"PK", {"finess": "9" * (MAX_KEPT_VALUE + 50)})
        _, page = await self.page()
        self.assertEqual(page.rows[0][6], "finess = " + "9" * MAX_KEPT_VALUE + "…")

    async def test_survives_a_restart(self) -> None:
        """A new sandbox over the same folder lists the uploads the first one received."""
        receipt = await self.upload("rss.zip", b"PK rss")
        await self.sandbox.port.stopListening()
        await self.sandbox.site.close_connections()
        restarted = make_trustme_sandbox(
            self, self.reactor, upload_directory=self.sandbox.upload_directory
        )
        _, page = await self.page(restarted)
        [row] = page.rows
        self.assertEqual(row[1], receipt["upload"])
        self.assertEqual(row[3:6], ["rss.zip", "6", hashlib.sha256(b"PK rss").hexdigest()])
        self.assertIn(f"userPwd = {MASK}", row[6])

    async def test_upload_without_receipt(self) -> None:
        """An upload folder without a receipt (older sandbox) shows its files' names and sizes."""
        folder: FilePath = self.sandbox.upload_directory.child("20260101T000000-000001")
        folder.makedirs()
        folder.child("rss.zip").setContent(b"12345")
        _, page = await self.page()
        self.assertEqual(
            page.rows,
            [
                [
                    "2026-01-01 00:00:00 UTC",
                    "20260101T000000-000001",
                    "not recorded",
                    "rss.zip",
                    "5",
                    "not recorded",
                    "not recorded",
                ]
            ],
        )

    async def test_unreadable_receipt(self) -> None:
        """A damaged receipt is named as such (in the reader's language), and the folder's files are listed instead."""
        folder: FilePath = self.sandbox.upload_directory.child("20260101T000000-000001")
        folder.makedirs()
        folder.child("rss.zip").setContent(b"12345")
        folder.child(RECEIPT_NAME).setContent(b'{"files": [')
        _, page = await self.page()
        [row] = page.rows
        self.assertEqual(row[1], "20260101T000000-000001\nits receipt is not valid JSON")
        self.assertEqual(row[3:5], ["rss.zip", "5"])
        _, page, _ = await self.page_in("fr")
        [row] = page.rows
        self.assertEqual(row[1], "20260101T000000-000001\nson accusé de réception n'est pas du JSON valide")
        folder.child(RECEIPT_NAME).setContent(b'{"files": null}')
        _, page, _ = await self.page_in("fr")
        self.assertEqual(page.rows[0][1], "20260101T000000-000001\nson accusé de réception ne liste aucun fichier")

    async def test_rules(self) -> None:
        """The page says which paths it refuses (--reject) and what it keeps (--keep)."""
        _, page = await self.page()
        self.assertIn(
            "Every complete upload is stored and answered with a receipt (no --reject).", page.rules
        )
        self.sandbox.site.reject = {"/syriusUpload.do": 403, "/other": 503}
        self.sandbox.site.keep = Keep(uploads=20)
        _, page = await self.page()
        self.assertEqual(
            page.rules,
            [
                "Uploads to /other are refused with 503 (--reject /other=503); nothing is stored.",
                "Uploads to /syriusUpload.do are refused with 403 (--reject /syriusUpload.do=403); nothing is stored.",
                "It keeps the newest 20 upload(s), deleting the oldest first (--keep).",
            ],
        )
