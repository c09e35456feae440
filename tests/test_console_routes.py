"""
The console's routes over real HTTP against a fake backend: each answer's
JSON, the checks every change (POST) passes, errors in the reader's
language, and the headers every answer carries.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import LogLevel
from twisted.trial.unittest import TestCase

from epop.console.backend import ConsoleRefusal
from epop.console.resource import SECURITY_HEADERS
from epop.messages import Text
from tests.console_fakes import LiveConsole, check


class GetRoutesTests(TestCase):
    async def test_state(self) -> None:
        """The backend's STATE, plus this session's CSRF token."""
        console = LiveConsole(self)
        cookie, csrf = await console.sign_in()
        state = await console.get_json("/api/state", cookie)
        self.assertEqual(state, {**console.backend.state(), "csrf": csrf})
        self.assertEqual(len(csrf), 43)

    async def test_texts(self) -> None:
        from epop.console.texts import page_texts

        console = LiveConsole(self)
        cookie, _ = await console.sign_in()
        for lang in ("fr", "en"):
            self.assertEqual(
                await console.get_json(f"/api/texts?lang={lang}", cookie),
                {"lang": lang, "texts": page_texts(lang)},
            )

    async def test_interfaces(self) -> None:
        console = LiveConsole(self)
        cookie, _ = await console.sign_in()
        self.assertEqual(
            await console.get_json("/api/interfaces", cookie),
            {"interfaces": console.backend.interfaces()},
        )

    async def test_journal(self) -> None:
        """Query parameters reach journal_page as given; limit defaults to 100 and stops at 500."""
        console = LiveConsole(self)
        cookie, _ = await console.sign_in()
        page = await console.get_json("/api/journal?limit=2", cookie)
        self.assertEqual([r["id"] for r in page["records"]], ["R1:5", "R1:4"])
        self.assertEqual(page["next"], "R1:4")
        await console.get_json(
            "/api/journal?before=R1:4&limit=9999&type=a&type=b&text=x%20y&connection=R1:1&connection=R1:2", cookie
        )
        await console.get_json("/api/journal", cookie)
        calls = [args for name, args in console.backend.calls if name == "journal_page"]
        self.assertEqual(calls[1], ("R1:4", 500, ["a", "b"], "x y", ["R1:1", "R1:2"]))
        self.assertEqual(calls[2], (None, 100, [], "", []))

    async def test_bad_limit(self) -> None:
        """A limit that is not a positive number is 400, in the request's language."""
        console = LiveConsole(self)
        cookie, _ = await console.sign_in()
        response = await console.request(
            "GET", "/api/connections?limit=zero&lang=fr", headers={"Cookie": f"epop_console={cookie}"}
        )
        self.assertEqual(response.code, 400)
        self.assertEqual(
            await response.json(),
            {"error": "invalid", "message": "limit doit être un nombre entier de 1 à 1000", "fields": {}},
        )

    async def test_connections(self) -> None:
        console = LiveConsole(self)
        cookie, _ = await console.sign_in()
        found = await console.get_json("/api/connections?limit=2", cookie)
        self.assertEqual(found, {"connections": console.backend.connections(2)})
        await console.get_json("/api/connections?limit=5000", cookie)
        await console.get_json("/api/connections", cookie)
        limits = [args[0] for name, args in console.backend.calls if name == "connections"]
        self.assertEqual(limits, [2, 2, 1000, 200])

    async def test_unknown(self) -> None:
        console = LiveConsole(self)
        cookie, _ = await console.sign_in()
        response = await console.request("GET", "/api/nothing", headers={"Cookie": f"epop_console={cookie}"})
        self.assertEqual(response.code, 404)
        self.assertEqual(await response.json(), {"error": "not-found"})
        response = await console.request("GET", "/api/test-epmsi", headers={"Cookie": f"epop_console={cookie}"})
        self.assertEqual(response.code, 405)
        await response.content()


class PostRoutesTests(TestCase):
    async def test_listening(self) -> None:
        """Stop, then start: each answers the new STATE; a start adds its CHECK, rendered."""
        console = LiveConsole(self)
        cookie, csrf = await console.sign_in()
        stopped = await (await console.post("/api/listening", cookie, csrf, {"listening": False})).json()
        self.assertEqual(stopped, {"state": console.backend.state()})
        self.assertFalse(stopped["state"]["listening"])
        response = await console.post("/api/listening?lang=fr", cookie, csrf, {"listening": True})
        started = await response.json()
        self.assertEqual(response.code, 200)
        self.assertTrue(started["state"]["listening"])
        self.assertEqual(started["check"], {**check(), "message": "e-PMSI answered"})

    async def test_already_listening(self) -> None:
        """A ConsoleRefusal is its status, code and message."""
        console = LiveConsole(self)
        cookie, csrf = await console.sign_in()
        response = await console.post("/api/listening", cookie, csrf, {"listening": True})
        self.assertEqual(response.code, 409)
        self.assertEqual(
            await response.json(),
            {"error": "listening", "message": "The relay is already listening.", "fields": {}},
        )

    async def test_refusal_in_french(self) -> None:
        """A 400 refusal's message and each field's, in French with ?lang=fr."""
        console = LiveConsole(self)
        console.backend.listening = False
        console.backend.refusals["change_settings"] = ConsoleRefusal(
            400, "invalid", Text("Say whether to listen: true or false."), {"port": Text("true or false")}
        )
        cookie, csrf = await console.sign_in()
        response = await console.post("/api/settings?lang=fr", cookie, csrf, {"port": "x"})
        self.assertEqual(response.code, 400)
        self.assertEqual(
            await response.json(),
            {
                "error": "invalid",
                "message": "Indiquez s'il faut écouter : true ou false.",
                "fields": {"port": "true ou false"},
            },
        )

    async def test_settings(self) -> None:
        console = LiveConsole(self)
        console.backend.listening = False
        cookie, csrf = await console.sign_in()
        response = await console.post("/api/settings", cookie, csrf, {"port": 3400, "proxy_password": "pw"})
        answer = await response.json()
        self.assertEqual(response.code, 200)
        self.assertEqual(answer["state"]["settings"]["port"], 3400)
        self.assertNotIn("proxy_password", answer["state"]["settings"])
        self.assertIn(("change_settings", ({"port": 3400, "proxy_password": "pw"},)), console.backend.calls)

    async def test_other_posts(self) -> None:
        console = LiveConsole(self)
        cookie, csrf = await console.sign_in()
        imported = await (await console.post("/api/proxy-import", cookie, csrf)).json()
        self.assertEqual(imported["host"], "proxy.example")
        tested = await (await console.post("/api/test-epmsi?lang=en", cookie, csrf)).json()
        self.assertEqual(tested["message"], "e-PMSI answered")
        swm = await (await console.post("/api/start-with-machine", cookie, csrf, {"enabled": True})).json()
        self.assertEqual((swm["enabled"], swm["changed"]), (True, True))
        bad = await console.post("/api/start-with-machine", cookie, csrf, {"enabled": "yes"})
        self.assertEqual(bad.code, 400)
        self.assertEqual((await bad.json())["fields"], {"enabled": "true or false"})

    async def test_slow_answer(self) -> None:
        """A Deferred from the backend is waited for."""
        console = LiveConsole(self)
        console.backend.pending = Deferred()
        cookie, csrf = await console.sign_in()
        answered = console.post("/api/test-epmsi", cookie, csrf)
        from twisted.internet.defer import ensureDeferred

        answered = ensureDeferred(answered)
        from tests.support import poll_until

        self.assertTrue(await poll_until(console.reactor, lambda: ("test_epmsi", ()) in console.backend.calls))
        console.backend.pending.callback(check(ok=False))
        response = await answered
        self.assertEqual((await response.json())["step"], "connect")

    async def test_internal_error(self) -> None:
        """Any other exception is 500 {"error": "internal"}, logged with its traceback, never shown."""
        console = LiveConsole(self)
        console.backend.refusals["import_proxy"] = RuntimeError("secret detail")
        cookie, csrf = await console.sign_in()
        response = await console.post("/api/proxy-import", cookie, csrf)
        self.assertEqual(response.code, 500)
        body = await response.content()
        self.assertEqual(body, b'{"error":"internal"}')
        [failed] = [e for e in console.events if e.get("log_failure") is not None]
        self.assertEqual(failed["log_level"], LogLevel.critical)
        self.assertIsInstance(failed["log_failure"].value, RuntimeError)
        self.flushLoggedErrors(RuntimeError)

    async def test_answer_not_json(self) -> None:
        """A backend answer JSON cannot hold is 500 {"error": "internal"} too, logged."""
        console = LiveConsole(self)
        console.backend.interfaces = lambda: [object()]  # type: ignore[method-assign]
        cookie, _ = await console.sign_in()
        response = await console.request("GET", "/api/interfaces", headers={"Cookie": f"epop_console={cookie}"})
        self.assertEqual((response.code, await response.content()), (500, b'{"error":"internal"}'))
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)


class PostChecksTests(TestCase):
    """Every change needs the session, JSON, the CSRF token and the console's Origin."""

    async def assertForbidden(self, response: object) -> None:
        self.assertEqual(response.code, 403)  # type: ignore[attr-defined]
        self.assertEqual(await response.json(), {"error": "forbidden"})  # type: ignore[attr-defined]

    async def test_checks(self) -> None:
        console = LiveConsole(self)
        cookie, csrf = await console.sign_in()
        body = {"listening": False}
        await self.assertForbidden(await console.post("/api/listening", cookie, None, body))
        await self.assertForbidden(await console.post("/api/listening", cookie, "A" * 43, body))
        await self.assertForbidden(await console.post("/api/listening", cookie, csrf, body, headers={"Origin": None}))
        await self.assertForbidden(
            await console.post("/api/listening", cookie, csrf, body, headers={"Origin": "http://evil.example"})
        )
        await self.assertForbidden(
            await console.post(
                "/api/listening", cookie, csrf, body, headers={"Origin": f"http://localhost:{console.port}"}
            )
        )
        await self.assertForbidden(
            await console.post("/api/listening", cookie, csrf, body, headers={"Content-Type": "text/plain"})
        )
        await self.assertForbidden(
            await console.post(
                "/api/listening", cookie, csrf, body,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        )
        signed_out = await console.post("/api/listening", None, csrf, body)
        self.assertEqual(signed_out.code, 401)
        await signed_out.content()
        self.assertNotIn("stop_listening", [name for name, _ in console.backend.calls])
        # Host localhost:PORT with its own Origin is the console's too.
        allowed = await console.post(
            "/api/listening", cookie, csrf, body,
            headers={"Host": f"localhost:{console.port}", "Origin": f"http://localhost:{console.port}"},
        )
        self.assertEqual(allowed.code, 200)
        await allowed.content()

    async def test_other_sessions_csrf(self) -> None:
        """One session's CSRF token does not work for another."""
        console = LiveConsole(self)
        cookie, _ = await console.sign_in()
        _, other_csrf = await console.sign_in()
        await self.assertForbidden(await console.post("/api/listening", cookie, other_csrf, {"listening": False}))

    async def test_body(self) -> None:
        """Over 64 KiB is 413; bad JSON, or JSON that is not an object, 400."""
        console = LiveConsole(self)
        cookie, csrf = await console.sign_in()
        large = await console.post("/api/settings", cookie, csrf, raw=b'{"a": "' + b"x" * 65536 + b'"}')
        self.assertEqual(large.code, 413)
        await large.content()
        bad = await console.post("/api/settings?lang=fr", cookie, csrf, raw=b"{nope")
        self.assertEqual(bad.code, 400)
        self.assertEqual((await bad.json())["message"], "Le corps de la requête n'est pas du JSON valide.")
        listed = await console.post("/api/settings", cookie, csrf, raw=b"[1]")
        self.assertEqual(listed.code, 400)
        self.assertEqual((await listed.json())["error"], "invalid")
        self.assertNotIn("change_settings", [name for name, _ in console.backend.calls])


class PagesTests(TestCase):
    async def test_headers_everywhere(self) -> None:
        """Every answer, refusals included, has the security headers."""
        console = LiveConsole(self)
        cookie, _ = await console.sign_in()
        for path, headers in [
            ("/", {"Cookie": f"epop_console={cookie}"}),
            ("/static/console.js", {}),
            ("/api/state", {"Cookie": f"epop_console={cookie}"}),
            ("/api/state", {}),
            ("/nothing", {}),
            ("/", {"Host": "evil.example"}),
        ]:
            response = await console.request("GET", path, headers=headers)
            await response.content()
            for name, value in SECURITY_HEADERS.items():
                self.assertEqual(response.headers.getRawHeaders(name), [value], (path, name))

    async def test_static(self) -> None:
        """The page's three files, with their types; no other name, no way out of the folder."""
        console = LiveConsole(self)
        for name, kind in [("console.js", b"text/javascript"), ("console.css", b"text/css")]:
            response = await console.request("GET", "/static/" + name)
            self.assertEqual(response.code, 200)
            self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), [kind + b"; charset=utf-8"])
            await response.content()
        for name in ["index.htm", "..%2F__init__.py", "../resource.py", "backend.py", ""]:
            response = await console.request("GET", "/static/" + name)
            self.assertEqual(response.code, 404, name)
            await response.content()
        unsigned = await console.request("GET", "/static/index.html")
        self.assertEqual(unsigned.code, 200)  # the page holds no secret; its data needs a session
        self.assertEqual(unsigned.headers.getRawHeaders(b"Content-Type"), [b"text/html; charset=utf-8"])
        await unsigned.content()


class LanguageTests(TestCase):
    async def test_choice(self) -> None:
        """?lang=, else the epop_lang cookie, else Accept-Language (first of fr/en), else English."""
        console = LiveConsole(self)
        cookie, _ = await console.sign_in()

        async def language(query: str, lang_cookie: str | None, accept: str | None) -> str:
            headers = {"Cookie": f"epop_console={cookie}" + (f"; epop_lang={lang_cookie}" if lang_cookie else "")}
            if accept:
                headers["Accept-Language"] = accept
            response = await console.request("GET", "/api/texts" + query, headers=headers)
            return (await response.json())["lang"]

        self.assertEqual(await language("?lang=fr", "en", "en"), "fr")
        self.assertEqual(await language("?lang=de", "fr", "en"), "fr")
        self.assertEqual(await language("", None, "de-DE, fr-FR;q=0.8, en;q=0.5"), "fr")
        self.assertEqual(await language("", None, "en-GB,fr"), "en")
        self.assertEqual(await language("", None, "de"), "en")
        self.assertEqual(await language("", None, None), "en")
