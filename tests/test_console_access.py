"""
Who gets into the console: the one-time URL, the session cookie, the
names it answers to, the password; over real HTTP on loopback.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from epop.console.resource import FOREIGN_HOST
from epop.console.access import (
    MAX_SESSIONS,
    SESSION_IDLE,
    ConsoleAccess,
    host_names,
    load_console_password,
)
from tests.console_fakes import LiveConsole, _cookie


class TokenTests(TestCase):
    """The URL in the log opens the console once."""

    async def test_token_exchanged_for_cookie(self) -> None:
        """The logged URL answers 303 to / with an HttpOnly, SameSite=Strict session cookie on /."""
        console = LiveConsole(self)
        [url] = console.logged_urls()
        self.assertRegex(url, rf"^http://127\.0\.0\.1:{console.port}/\?token=[A-Za-z0-9_-]{{43}}$")
        response = await console.client.get(url, allow_redirects=False)
        self.assertEqual(response.code, 303)
        self.assertEqual(response.headers.getRawHeaders(b"Location"), [b"/"])
        [header] = response.headers.getRawHeaders(b"Set-Cookie")
        attributes = [a.strip().lower() for a in header.decode().split(";")[1:]]
        self.assertEqual(sorted(attributes), ["httponly", "path=/", "samesite=strict"])
        page = await console.request("GET", "/", headers={"Cookie": f"epop_console={_cookie(response)}"})
        self.assertEqual(page.code, 200)
        self.assertIn(b"/static/console.js", await page.content())

    async def test_token_single_use(self) -> None:
        """A used token is refused, and the log then holds a new URL that works."""
        console = LiveConsole(self)
        first = console.logged_urls()[0]
        used = await console.client.get(first, allow_redirects=False)
        self.assertEqual(used.code, 303)
        again = await console.client.get(first, allow_redirects=False)
        self.assertEqual(again.code, 403)
        self.assertNotIn(b"Set-Cookie", dict(again.headers.getAllRawHeaders()))
        self.assertIn(b"already used, or is wrong", await again.content())
        # The same old address in the browser that used it: the console, no error.
        cookie = used.headers.getRawHeaders(b"Set-Cookie")[0].split(b";")[0]
        signed_in = await console.client.get(first, headers={b"Cookie": [cookie]}, allow_redirects=False)
        self.assertEqual((signed_in.code, signed_in.headers.getRawHeaders(b"Location")), (303, [b"/"]))
        newest = console.logged_urls()[-1]
        self.assertNotEqual(newest, first)
        fresh = await console.client.get(newest, allow_redirects=False)
        self.assertEqual(fresh.code, 303)

    async def test_used_token_page_quotes_the_log(self) -> None:
        """The page says where the new address is as the relay's log writes it, in the relay's language."""
        for relay_language, browser_language, said in (
            ("en", "fr", "qui commence par « Console: open »"),
            ("fr", "en", "starting with &quot;Console : ouvrez&quot;"),
        ):
            console = LiveConsole(self, language=relay_language)
            first = console.logged_urls()[0]
            await (await console.client.get(first, allow_redirects=False)).content()
            again = await console.client.get(
                first, headers={b"Accept-Language": [browser_language.encode()]}, allow_redirects=False
            )
            self.assertEqual(again.code, 403)
            self.assertIn(said, (await again.content()).decode())

    async def test_wrong_token(self) -> None:
        """A wrong token is 403, sets no cookie, and leaves the logged one working."""
        console = LiveConsole(self)
        wrong = await console.request("GET", "/?token=" + "A" * 43)
        self.assertEqual(wrong.code, 403)
        self.assertEqual(wrong.headers.getRawHeaders(b"Set-Cookie"), None)
        right = await console.client.get(console.logged_urls()[-1], allow_redirects=False)
        self.assertEqual(right.code, 303)

    async def test_no_session(self) -> None:
        """Without a session, / is a 403 page that says where the URL is, and the API 401."""
        console = LiveConsole(self)
        page = await console.request("GET", "/")
        self.assertEqual(page.code, 403)
        self.assertIn(b"relay's log", await page.content())
        api = await console.request("GET", "/api/state")
        self.assertEqual(api.code, 401)
        self.assertEqual(await api.json(), {"error": "signed-out"})
        forged = await console.request("GET", "/api/state", headers={"Cookie": "epop_console=forged"})
        self.assertEqual(forged.code, 401)


class HostTests(TestCase):
    """The console answers only to its own names (no DNS rebinding)."""

    async def test_foreign_host(self) -> None:
        """Host evil.example:PORT (a rebinding name pointing here) is 403, even with a valid session and token."""
        console = LiveConsole(self)
        cookie, _ = await console.sign_in()
        for path, headers in [
            ("/api/state", {"Cookie": f"epop_console={cookie}"}),
            ("/", {"Cookie": f"epop_console={cookie}"}),
            ("/static/console.js", {}),
            ("/?token=" + console.service.access.token, {}),
        ]:
            headers = {**headers, "Host": f"evil.example:{console.port}"}
            response = await console.request("GET", path, headers=headers)
            self.assertEqual(response.code, 403, path)
            self.assertEqual(await response.content(), FOREIGN_HOST)
            self.assertEqual(response.headers.getRawHeaders(b"X-Frame-Options"), [b"DENY"])
        # The token was not used up by the refused request.
        self.assertEqual(len(console.logged_urls()), 2)

    async def test_own_names(self) -> None:
        """
        localhost and 127.0.0.1 are the loopback console's, on any port (an
        SSH tunnel may bring it to another local port); other names are not.
        """
        console = LiveConsole(self)
        for host, code in [
            (f"localhost:{console.port}", 200),
            (f"127.0.0.1:{console.port}", 200),
            (f"127.0.0.1:{console.port + 1}", 200),
            ("localhost:8080", 200),
            ("127.0.0.1", 403),
            (f"relay-machine:{console.port}", 403),
            ("127.0.0.1.evil.example:8080", 403),
        ]:
            response = await console.request("GET", "/static/console.css", headers={"Host": host})
            self.assertEqual(response.code, code, host)
            await response.content()

    def test_names_of_addresses(self) -> None:
        """Loopback adds localhost; ::1 is bracketed; a Unix socket is localhost; a wildcard lists this machine."""
        self.assertEqual(host_names("127.0.0.1"), ["127.0.0.1", "localhost"])
        self.assertEqual(host_names("::1"), ["[::1]", "localhost"])
        self.assertEqual(host_names("10.1.2.3"), ["10.1.2.3"])
        self.assertEqual(host_names(""), ["localhost"])
        import socket

        everything = host_names("0.0.0.0")
        self.assertIn(socket.gethostname().lower(), everything)
        self.assertIn("localhost", everything)

    def test_network_console_on_its_own_port_only(self) -> None:
        """A console on a network address answers on its port only, and not to loopback names."""
        access = ConsoleAccess(Clock())
        access.listening_on("10.1.2.3", 3359, secure=True)
        self.assertTrue(access.host_allowed(b"10.1.2.3:3359"))
        self.assertFalse(access.host_allowed(b"10.1.2.3:8080"))
        self.assertFalse(access.host_allowed(b"localhost:3359"))
        self.assertFalse(access.host_allowed(b"127.0.0.1:8080"))

    def test_allowed_hosts(self) -> None:
        access = ConsoleAccess(Clock())
        access.listening_on("::1", 3359, secure=True)
        self.assertEqual(access.allowed_hosts(), ["[::1]:3359", "localhost:3359"])
        self.assertEqual(access.url()[: len("https://[::1]:3359/?token=")], "https://[::1]:3359/?token=")
        self.assertTrue(access.origin_allowed(b"https://localhost:3359", b"localhost:3359"))
        self.assertFalse(access.origin_allowed(b"http://localhost:3359", b"localhost:3359"))
        self.assertFalse(access.origin_allowed(b"https://[::1]:3359", b"localhost:3359"))


class SessionTests(TestCase):
    """Sessions live in memory, a bounded number, and end when idle."""

    def test_idle_expiry(self) -> None:
        clock = Clock()
        access = ConsoleAccess(clock)
        session = access.exchange_token(access.token)
        assert session is not None
        clock.advance(SESSION_IDLE - 1)
        self.assertIs(access.session(session.id.encode()), session)
        clock.advance(SESSION_IDLE - 1)
        self.assertIs(access.session(session.id.encode()), session, "use keeps it alive")
        clock.advance(SESSION_IDLE + 1)
        self.assertIsNone(access.session(session.id.encode()))

    def test_bounded(self) -> None:
        """Past MAX_SESSIONS the least recently used is dropped."""
        access = ConsoleAccess(Clock(), password="secret")
        sessions = [access.sign_in("secret") for _ in range(MAX_SESSIONS)]
        first = sessions[0]
        assert first is not None
        self.assertIsNotNone(access.session(first.id.encode()))  # used: now the newest
        access.sign_in("secret")
        self.assertIsNotNone(access.session(first.id.encode()))
        second = sessions[1]
        assert second is not None
        self.assertIsNone(access.session(second.id.encode()))
        self.assertEqual(len(list(access.sessions())), MAX_SESSIONS)

    def test_tokens_are_random(self) -> None:
        access = ConsoleAccess(Clock())
        one = access.exchange_token(access.token)
        two = access.exchange_token(access.token)
        assert one is not None and two is not None
        self.assertNotEqual(one.id, two.id)
        self.assertNotEqual(one.csrf, two.csrf)
        self.assertEqual(len(access.token), 43)


class PasswordTests(TestCase):
    """With --console-password-file, a password signs in."""

    async def test_sign_in(self) -> None:
        """/ offers a form; the right password gets a cookie, a wrong one 403; the log never holds it."""
        console = LiveConsole(self, password="correct horse")
        form = await console.request("GET", "/")
        self.assertEqual(form.code, 200)
        self.assertIn(b'action="/sign-in"', await form.content())
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": console.origin}
        wrong = await console.request("POST", "/sign-in", headers=headers, data=b"password=nope")
        self.assertEqual(wrong.code, 403)
        right = await console.request("POST", "/sign-in", headers=headers, data=b"password=correct+horse")
        self.assertEqual(right.code, 303)
        cookie = _cookie(right)
        state = await console.get_json("/api/state", cookie)
        self.assertIn("csrf", state)
        self.assertNotIn("correct horse", repr(console.events))

    async def test_sign_in_origin(self) -> None:
        """A sign-in posted from another site, or with no Origin, is 403 even with the right password."""
        console = LiveConsole(self, password="pw")
        for origin in ["http://evil.example", None]:
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            if origin:
                headers["Origin"] = origin
            response = await console.request("POST", "/sign-in", headers=headers, data=b"password=pw")
            self.assertEqual(response.code, 403, origin)
            self.assertIsNone(response.headers.getRawHeaders(b"Set-Cookie"))

    async def test_no_password_no_sign_in(self) -> None:
        """Without a password file, /sign-in signs no one in."""
        console = LiveConsole(self)
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": console.origin}
        response = await console.request("POST", "/sign-in", headers=headers, data=b"password=")
        self.assertEqual(response.code, 403)

    async def test_guessing(self) -> None:
        """After 10 wrong passwords in a minute even the right one is 429, until the minute passes."""
        from epop.console import access

        clock = Clock()
        console = LiveConsole(self, password="pw")
        console.service.access._clock = clock
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": console.origin}

        async def sign_in(password: bytes) -> int:
            response = await console.request("POST", "/sign-in", headers=headers, data=b"password=" + password)
            await response.content()
            return response.code

        codes = [await sign_in(b"guess%d" % n) for n in range(access.MAX_WRONG_PASSWORDS)]
        self.assertEqual(codes, [403] * access.MAX_WRONG_PASSWORDS)
        self.assertEqual(await sign_in(b"pw"), 429)
        clock.advance(access.GUESS_WINDOW + 1)
        self.assertEqual(await sign_in(b"pw"), 303)

    def test_password_file(self) -> None:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("s3cret\r\nsecond line\n")
        self.assertEqual(load_console_password(path), "s3cret")

    def test_password_file_refused(self) -> None:
        """An unreadable or empty file is refused, naming it."""
        missing = self.mktemp()
        with self.assertRaises(ValueError) as raised:
            load_console_password(missing)
        self.assertIn("cannot read the console password file given", str(raised.exception))
        empty = self.mktemp()
        with open(empty, "w") as f:
            f.write("\n")
        with self.assertRaises(ValueError) as raised:
            load_console_password(empty)
        self.assertIn("empty first line", str(raised.exception))
