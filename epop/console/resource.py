"""
The console's web pages and JSON API (the routes of C{docs/console.md}).

Every request first passes the door (L{ConsoleAccess}): its C{Host} must
be one of the console's names, the API needs a session, and a change
(POST) needs the page's own C{Origin}, JSON and the session's CSRF token.
Answers carry headers that keep them out of caches and frames, and any
L{Text} in them is rendered in the request's language.  A refusal from
the backend (L{ConsoleRefusal}) becomes its status and message; anything
else is logged with its traceback and the page only learns "internal".
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from epop.console.access import SESSION_COOKIE, ConsoleAccess, Session
from epop.console.backend import ConsoleRefusal, IConsoleBackend
from epop.console.events import EventHub, EventsResource
from epop.console.rendering import json_bytes
from epop.messages import LANGUAGES, Text, log_format

STATIC = os.path.join(os.path.dirname(__file__), "static")
#: The page's files and their types: nothing else is served from there.
STATIC_FILES = {
    "index.html": b"text/html; charset=utf-8",
    "console.js": b"text/javascript; charset=utf-8",
    "console.css": b"text/css; charset=utf-8",
}
#: The largest JSON body a POST may carry.
MAX_BODY = 64 * 1024
#: The language cookie the page's switch sets.
LANGUAGE_COOKIE = b"epop_lang"

SECURITY_HEADERS = {
    b"Cache-Control": b"no-store",
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    # Not no-referrer: a browser then sends "Origin: null" with the sign-in
    # form, which the Origin check must refuse.  No page links elsewhere.
    b"Referrer-Policy": b"same-origin",
    b"Content-Security-Policy": b"default-src 'self'; frame-ancestors 'none'",
}

#: The answer to a request naming another host than the console's (DNS
#: rebinding, or a browser given another name for the relay machine).
FOREIGN_HOST = (
    b"Forbidden: the console answers only at its own address, the one the relay's log gives "
    b"(or 127.0.0.1 / localhost on any port, through an SSH tunnel).\n"
)

#: Limits of the list routes: (default, maximum).
JOURNAL_LIMIT = (100, 500)
CONNECTIONS_LIMIT = (200, 1000)


def request_language(request: Request) -> str:
    """C{?lang=}, else the C{epop_lang} cookie, else C{Accept-Language}, else English."""
    for value in (request.args.get(b"lang", [b""])[0], request.getCookie(LANGUAGE_COOKIE) or b""):
        language = value.decode("ascii", "replace").strip().lower()
        if language in LANGUAGES:
            return language
    accepted = (_header(request, b"Accept-Language") or b"").decode("ascii", "replace")
    for part in accepted.split(","):
        language = part.split(";")[0].strip().lower().split("-")[0]
        if language in LANGUAGES:
            return language
    return "en"


class _Answer(Exception):
    """An answer decided before the route ran (401, 403, 413...)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _invalid(message: Text) -> ConsoleRefusal:
    return ConsoleRefusal(400, "invalid", message)


def _limit(request: Request, bounds: tuple[int, int]) -> int:
    default, maximum = bounds
    raw = request.args.get(b"limit", [None])[0]
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise _invalid(Text("limit must be a whole number from 1 to {maximum}", maximum=maximum))
    return min(value, maximum)


def _texts(args: dict[bytes, list[bytes]], name: bytes) -> list[str]:
    return [v.decode("utf-8", "replace") for v in args.get(name, [])]


class ConsoleResource(Resource):
    """
    The whole console site: it routes by itself, so that the door's checks
    run once, first, for every path.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, backend: IConsoleBackend, access: ConsoleAccess, hub: EventHub) -> None:
        super().__init__()
        self.backend = backend
        self.access = access
        self.hub = hub
        self.events = EventsResource(hub, request_language)
        self._get: dict[str, Callable[[Request, Session], Any]] = {
            "state": self._state,
            "texts": self._texts,
            "interfaces": lambda r, s: maybeDeferred(self.backend.interfaces).addCallback(
                lambda found: {"interfaces": found}
            ),
            "journal": self._journal,
            "connections": self._connections,
        }
        self._post: dict[str, Callable[[Request, Session, dict[str, Any]], Any]] = {
            "listening": self._listening,
            "settings": lambda r, s, body: maybeDeferred(
                self.backend.change_settings, body
            ).addCallback(lambda state: {"state": state}),
            "proxy-import": lambda r, s, body: maybeDeferred(self.backend.import_proxy),
            "test-epmsi": lambda r, s, body: maybeDeferred(self.backend.test_epmsi),
            "start-with-machine": self._start_with_machine,
        }

    # Routing

    def render(self, request: Request) -> Any:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        if not self.access.host_allowed(_header(request, b"Host")):
            return self._page(request, 403, FOREIGN_HOST)
        path = request.path.decode("ascii", "replace")
        method = request.method
        if path == "/" and method in (b"GET", b"HEAD"):
            return self._root(request)
        if path == "/sign-in" and method == b"POST":
            return self._sign_in(request)
        if path.startswith("/static/") and method in (b"GET", b"HEAD"):
            return self._static(request, path[len("/static/") :])
        if path.startswith("/api/"):
            return self._api(request, path[len("/api/") :])
        return self._page(request, 404, b"Not found.\n")

    def _page(
        self, request: Request, status: int, body: bytes, content_type: bytes = b"text/plain"
    ) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", content_type + b"; charset=utf-8")
        return body

    def _forbidden(self, request: Request) -> bytes:
        return self._page(request, 403, b"Forbidden.\n")

    # Pages

    def _root(self, request: Request) -> bytes:
        token = request.args.get(b"token", [None])[0]
        if token is not None:
            session = self.access.exchange_token(token)
            if session is not None:
                return self._signed_in(request, session)
            if self._session(request) is not None:
                # An old address, in a browser already signed in: just the console.
                request.setResponseCode(303)
                request.setHeader(b"Location", b"/")
                return b""
            self._log_refusal(Text("Console: a wrong or used token was refused"))
            language = request_language(request)
            # Quoted as the relay's log writes it, in the relay's language.
            opening = log_format(Text("Console: open {url} in a browser"), self.access.language)
            text = Text(
                "This address was already used, or is wrong: each address opens the console "
                "once. The relay's log has a new one (its last line starting with "
                "\"{start}\").",
                start=opening.partition(" {url}")[0],
            ).render(language)
            return self._page(request, 403, _simple_page(language, text).encode("utf-8"), b"text/html")
        if self._session(request) is not None:
            return self._static(request, "index.html")
        if self.access.has_password:
            return self._page(request, 200, self._sign_in_form(request_language(request)), b"text/html")
        language = request_language(request)
        text = Text(
            "Open the console with the address in the relay's log (it works once).",
        ).render(language)
        return self._page(request, 403, _simple_page(language, text).encode("utf-8"), b"text/html")

    def _log_refusal(self, line: Text) -> None:
        """A refused sign-in, for the administrator: in the relay's language, not the browser's."""
        self.log.warn(log_format(line, self.access.language))

    def _signed_in(self, request: Request, session: Session) -> bytes:
        request.addCookie(SESSION_COOKIE, session.id.encode("ascii"), **self.access.cookie_attributes())
        request.setResponseCode(303)
        request.setHeader(b"Location", b"/")
        return b""

    def _sign_in_form(self, language: str, problem: Text | None = None) -> bytes:
        label = Text("Console password").render(language)
        button = Text("Sign in").render(language)
        said = "" if problem is None else f'<p class="error">{_escape(problem.render(language))}</p>'
        form = (
            f'{said}<form method="post" action="/sign-in">'
            f'<label>{_escape(label)} <input type="password" name="password" autofocus></label> '
            f'<button type="submit">{_escape(button)}</button></form>'
        )
        return _simple_page(language, form, html=True).encode("utf-8")

    def _sign_in(self, request: Request) -> bytes:
        if (
            not self.access.has_password
            or not self.access.origin_allowed(_header(request, b"Origin"), _header(request, b"Host"))
            or _content_type(request) != b"application/x-www-form-urlencoded"
        ):
            return self._forbidden(request)
        body = self._body(request)
        if body is None:
            return self._page(request, 413, b"Too large.\n")
        if self.access.guessing_blocked():
            self._log_refusal(Text("Console: too many wrong passwords; sign-in refused for a minute"))
            return self._page(request, 429, b"Too many wrong passwords: try again in a minute, or open the console with the "
                b"address in the relay's log, which still works.\n")
        password = parse_qs(body, keep_blank_values=True).get(b"password", [None])[0]
        session = self.access.sign_in(password)
        if session is None:
            self._log_refusal(Text("Console: a wrong password was refused"))
            page = self._sign_in_form(request_language(request), Text("Wrong password."))
            return self._page(request, 403, page, b"text/html")
        return self._signed_in(request, session)

    def _static(self, request: Request, name: str) -> bytes:
        content_type = STATIC_FILES.get(name)
        if content_type is None:
            return self._page(request, 404, b"Not found.\n")
        with open(os.path.join(STATIC, name), "rb") as f:
            body = f.read()
        request.setHeader(b"Content-Type", content_type)
        return body

    # JSON API

    def _session(self, request: Request) -> Session | None:
        return self.access.session(request.getCookie(SESSION_COOKIE))

    def _body(self, request: Request) -> bytes | None:
        """The request's body, or C{None} when larger than L{MAX_BODY}."""
        content = request.content
        if content is None:
            return b""
        content.seek(0, os.SEEK_END)
        if content.tell() > MAX_BODY:
            return None
        content.seek(0)
        return content.read()

    def _api(self, request: Request, route: str) -> Any:
        language = request_language(request)
        try:
            session = self._session(request)
            if session is None:
                raise _Answer(401, {"error": "signed-out"})
            if request.method in (b"GET", b"HEAD") and route == "events":
                return self.events.render(request)
            if request.method in (b"GET", b"HEAD") and route in self._get:
                result = maybeDeferred(self._get[route], request, session)
            elif request.method == b"POST" and route in self._post:
                body = self._checked_body(request, session)
                result = maybeDeferred(self._post[route], request, session, body)
            elif route in self._get or route in self._post or route == "events":
                request.setHeader(b"Allow", b"POST" if route in self._post else b"GET")
                raise _Answer(405, {"error": "method"})
            else:
                raise _Answer(404, {"error": "not-found"})
        except Exception:
            result = fail()
        finished = []
        request.notifyFinish().addBoth(finished.append)
        result.addCallbacks(
            lambda value: (200, value), lambda failure: self._error(failure, request)
        ).addCallback(lambda answer: self._send(request, finished, language, *answer))
        return NOT_DONE_YET

    def _checked_body(self, request: Request, session: Session) -> dict[str, Any]:
        if (
            _content_type(request) != b"application/json"
            or not self.access.csrf_allowed(session, _header(request, b"X-CSRF-Token"))
            or not self.access.origin_allowed(_header(request, b"Origin"), _header(request, b"Host"))
        ):
            raise _Answer(403, {"error": "forbidden"})
        body = self._body(request)
        if body is None:
            raise _Answer(413, {"error": "too-large"})
        try:
            value = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise _invalid(Text("The request's body is not valid JSON.")) from None
        if not isinstance(value, dict):
            raise _invalid(Text("The request's body must be a JSON object."))
        return value

    def _error(self, failure: Failure, request: Request) -> tuple[int, dict[str, Any]]:
        error = failure.value
        if isinstance(error, _Answer):
            return error.status, error.body
        if isinstance(error, ConsoleRefusal):
            return error.status, {"error": error.code, "message": error.message, "fields": error.fields}
        self.log.failure(
            "Console: {method} {path} failed",
            failure,
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("ascii", "replace"),
        )
        return 500, {"error": "internal"}

    def _send(self, request: Request, finished: list[object], language: str, status: int, value: Any) -> None:
        if finished:  # the browser went away meanwhile
            return
        try:
            body = json_bytes(value, language)
        except Exception:
            self.log.failure("Console: an answer could not be written as JSON")
            status, body = 500, b'{"error":"internal"}'
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.write(body)
        request.finish()

    # Routes

    def _state(self, request: Request, session: Session) -> Deferred[dict[str, Any]]:
        return maybeDeferred(self.backend.state).addCallback(
            lambda state: {**state, "csrf": session.csrf}
        )

    def _texts(self, request: Request, session: Session) -> dict[str, Any]:
        from epop.console.texts import page_texts

        language = request_language(request)
        return {"lang": language, "texts": page_texts(language)}

    def _journal(self, request: Request, session: Session) -> Any:
        args = request.args
        before = args.get(b"before", [None])[0]
        return maybeDeferred(
            self.backend.journal_page,
            None if before is None else before.decode("utf-8", "replace"),
            _limit(request, JOURNAL_LIMIT),
            _texts(args, b"type"),
            (_texts(args, b"text") or [""])[0],
            _texts(args, b"connection"),
        )

    def _connections(self, request: Request, session: Session) -> Any:
        return maybeDeferred(self.backend.connections, _limit(request, CONNECTIONS_LIMIT)).addCallback(
            lambda found: {"connections": found}
        )

    def _listening(self, request: Request, session: Session, body: dict[str, Any]) -> Deferred[Any]:
        wanted = body.get("listening")
        if not isinstance(wanted, bool):
            raise ConsoleRefusal(
                400, "invalid", Text("Say whether to listen: true or false."),
                {"listening": Text("true or false")},
            )
        if wanted:
            started = maybeDeferred(self.backend.start_listening)
        else:
            started = maybeDeferred(self.backend.stop_listening).addCallback(lambda _: {})
        return started.addCallback(self._with_state)

    def _with_state(self, result: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return maybeDeferred(self.backend.state).addCallback(
            lambda state: {"state": state, **({"check": result["check"]} if "check" in result else {})}
        )

    def _start_with_machine(self, request: Request, session: Session, body: dict[str, Any]) -> Any:
        enabled = body.get("enabled")
        if not isinstance(enabled, bool):
            raise ConsoleRefusal(
                400, "invalid", Text("Say whether the relay starts with the machine: true or false."),
                {"enabled": Text("true or false")},
            )
        return maybeDeferred(self.backend.set_start_with_machine, enabled)


def _header(request: Request, name: bytes) -> bytes | None:
    """The first value of header C{name}, as sent."""
    values = request.requestHeaders.getRawHeaders(name)
    return values[0] if values else None


def _content_type(request: Request) -> bytes:
    """The body's media type, without parameters, in lower case."""
    return (_header(request, b"Content-Type") or b"").split(b";")[0].strip().lower()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _simple_page(language: str, content: str, html: bool = False) -> str:
    """A small page in the console's style, without script."""
    body = content if html else f"<p>{_escape(content)}</p>"
    return (
        f'<!DOCTYPE html>\n<html lang="{language}"><head><meta charset="utf-8">'
        '<title>e-POP</title><link rel="stylesheet" href="/static/console.css"></head>'
        f"<body><h1>e-POP</h1>{body}</body></html>\n"
    )

