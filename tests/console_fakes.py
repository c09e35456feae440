"""
An in-memory console backend: the relay's answers as the web layer sees
them, with a state the tests can read and change, and every call recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from epop.console.backend import ConsoleRefusal, IConsoleBackend
from epop.messages import Text

Listener = Callable[[str, dict[str, Any]], None]


def check(ok: bool = True) -> dict[str, Any]:
    """A CHECK, its message a L{Text} as the real backend gives it."""
    return {
        "ok": ok,
        "url": "https://e-pmsi.example/",
        "address": "192.0.2.10:443" if ok else None,
        "proxy": None,
        "elapsed_ms": 12,
        "step": None if ok else "connect",
        "message": Text("e-PMSI answered") if ok else Text("e-PMSI could not be reached"),
    }


@implementer(IConsoleBackend)
class FakeConsoleBackend:
    """
    Every IConsoleBackend method over plain data.  C{refusals} maps a
    method's name to the L{ConsoleRefusal} it raises next; C{calls} holds
    (name, arguments) in order.
    """

    def __init__(self) -> None:
        self.listening = True
        self.settings: dict[str, Any] = {
            "listen": ["tcp:3358"],
            "listen_address": "0.0.0.0",
            "port": 3358,
            "allow_all": True,
            "allow": [],
            "proxy_enabled": False,
            "proxy_host": "",
            "proxy_port": None,
            "proxy_auth": False,
            "proxy_user": "",
            "proxy_password_set": False,
        }
        self.swm: dict[str, Any] = {
            "available": True,
            "unit": "epop.service",
            "enabled": False,
            "state": "disabled",
            "command": "sudo systemctl enable epop.service",
        }
        self.records: list[dict[str, Any]] = [
            {"time": f"2026-12-04T06:00:{n:02d}Z", "type": "session-opened", "run": "R1",
             "connection": n, "client": "10.1.2.3:5100", "description": f"line {n}", "id": f"R1:{n}"}
            for n in range(1, 6)
        ]
        self.refusals: dict[str, Exception] = {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.listeners: list[Listener] = []
        self.pending: Deferred[Any] | None = None

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        refusal = self.refusals.pop(name, None)
        if refusal is not None:
            raise refusal

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            listener(kind, data)

    def state(self) -> dict[str, Any]:
        self._call("state")
        return {
            "listening": self.listening,
            "addresses": ["10.1.2.3:3358"] if self.listening else [],
            "settings": dict(self.settings),
            "editable": not self.listening,
            "config": {"path": "/etc/epop/relay.ini", "exists": True},
            "start_with_machine": dict(self.swm),
            "relay": {"run": "R1", "version": "1.0"},
            "overridden": [],
        }

    def interfaces(self) -> list[dict[str, Any]]:
        self._call("interfaces")
        return [
            {"interface": "all", "address": "0.0.0.0", "listen": "tcp:3358"},
            {"interface": "eth0", "address": "10.1.2.3", "listen": "tcp:3358:interface=10.1.2.3"},
        ]

    def start_listening(self) -> Deferred[dict[str, Any]]:
        try:
            self._call("start_listening")
        except ConsoleRefusal as e:
            return fail(e)
        if self.listening:
            return fail(ConsoleRefusal(409, "listening", Text("The relay is already listening.")))
        self.listening = True
        self._emit("state", self.state())
        return succeed({"check": check()})

    def stop_listening(self) -> Deferred[None]:
        self._call("stop_listening")
        self.listening = False
        self._emit("state", self.state())
        return succeed(None)

    def change_settings(self, changes: dict[str, Any]) -> Deferred[dict[str, Any]]:
        self._call("change_settings", changes)
        if self.listening:
            raise ConsoleRefusal(409, "listening", Text("Stop listening before changing the settings."))
        bad = {
            key: Text("unknown setting")
            for key in changes
            if key not in self.settings and key != "proxy_password"
        }
        if bad:
            raise ConsoleRefusal(400, "invalid", Text("Some settings are not valid."), bad)
        self.settings.update({k: v for k, v in changes.items() if k != "proxy_password"})
        if changes.get("proxy_password"):
            self.settings["proxy_password_set"] = True
        return succeed(self.state())

    def import_proxy(self) -> Deferred[dict[str, Any]]:
        self._call("import_proxy")
        return succeed({"found": True, "host": "proxy.example", "port": 8080, "source": "environment"})

    def test_epmsi(self) -> Deferred[dict[str, Any]]:
        self._call("test_epmsi")
        if self.pending is not None:
            return self.pending
        return succeed(check())

    def set_start_with_machine(self, enabled: bool) -> Deferred[dict[str, Any]]:
        self._call("set_start_with_machine", enabled)
        self.swm.update(enabled=enabled, state="enabled" if enabled else "disabled")
        return succeed({**self.swm, "changed": True})

    def journal_page(
        self, before: str | None, limit: int, types: list[str], text: str, connections: list[str]
    ) -> dict[str, Any]:
        self._call("journal_page", before, limit, types, text, connections)
        found = [
            r for r in reversed(self.records)
            if (not types or r["type"] in types)
            and text in r["description"]
            and (not connections or r["id"] in connections)
        ]
        if before is not None:
            found = [r for r in found if r["id"] < before]
        page = found[:limit]
        return {"records": page, "next": page[-1]["id"] if len(found) > limit else None}

    def connections(self, limit: int) -> list[dict[str, Any]]:
        self._call("connections", limit)
        rows = [
            {"id": f"R1:{n}", "run": "R1", "connection": n, "client": "10.1.2.3:5100",
             "kind": "e-pop", "opened": "2026-12-04T06:00:00Z", "closed": None,
             "bytes_in": None, "bytes_out": None, "outcome": None, "state": "open", "user": None}
            for n in range(3, 0, -1)
        ]
        return rows[:limit]

    def watch(self, listener: Listener) -> Callable[[], None]:
        self.calls.append(("watch", ()))
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)


class LiveConsole:
    """
    A real console listening on C{127.0.0.1}, port 0, over a fake backend,
    for one test; the log events it writes (in the relay's C{language}) are
    kept in C{events}.  Cleanups stop it.
    """

    def __init__(
        self,
        testcase: Any,
        backend: FakeConsoleBackend | None = None,
        *,
        endpoint: str = "tcp:0:interface=127.0.0.1",
        password: str | None = None,
        tls: Any = None,
        ca_pem: bytes | None = None,
        language: str = "en",
        served_as_on_the_network: bool = False,
    ) -> None:
        from twisted.internet import reactor
        from twisted.logger import globalLogPublisher

        from epop.console.service import ConsoleSettings, make_console_service

        class OnTheNetwork(ConsoleSettings):
            """Served as a console beyond this machine is (with the relay's TLS), while tests listen on loopback only."""

            @property
            def served_tls(self) -> Any:
                return self.tls

        settings_class = OnTheNetwork if served_as_on_the_network else ConsoleSettings

        self.reactor = reactor
        self.backend = backend if backend is not None else FakeConsoleBackend()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        password_file = None
        if password is not None:
            password_file = testcase.mktemp()
            with open(password_file, "w", encoding="utf-8") as f:
                f.write(password + "\n")
        self.service = make_console_service(
            reactor, self.backend, settings_class(endpoint, password_file, tls, language)
        )
        self.service.privilegedStartService()
        self.service.startService()
        testcase.addCleanup(self.service.stopService)
        assert self.service.port is not None
        self.port = self.service.port.getHost().port
        scheme = "https" if self.service.settings.served_tls is not None else "http"
        self.origin = f"{scheme}://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        self.client = _client(reactor, ca_pem)

    def logged_urls(self) -> list[str]:
        """Every console URL the log gave, oldest first."""
        return [e["url"] for e in self.events if e.get("log_format", "").startswith(("Console: open", "Console : ouvrez"))]

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """A request that follows no redirect."""
        return await self.client.request(
            method, self.origin + path, allow_redirects=False, **kwargs
        )

    async def sign_in(self) -> tuple[str, str]:
        """Exchange the logged URL's token: (session cookie, CSRF token)."""
        url = self.logged_urls()[-1]
        response = await self.client.get(url, allow_redirects=False)
        assert response.code == 303, response.code
        await response.content()
        cookie = _cookie(response)
        state = await self.get_json("/api/state", cookie)
        return cookie, state["csrf"]

    async def get_json(self, path: str, cookie: str, **kwargs: Any) -> Any:
        response = await self.request("GET", path, headers={"Cookie": f"epop_console={cookie}"}, **kwargs)
        return await response.json()

    async def post(
        self,
        path: str,
        cookie: str | None,
        csrf: str | None,
        body: Any = None,
        *,
        headers: dict[str, Any] | None = None,
        raw: bytes | None = None,
    ) -> Any:
        """A POST as the page makes it; C{headers} replace or (None) remove its headers."""
        import json

        sent: dict[str, Any] = {"Content-Type": "application/json", "Origin": self.origin}
        if cookie is not None:
            sent["Cookie"] = f"epop_console={cookie}"
        if csrf is not None:
            sent["X-CSRF-Token"] = csrf
        for name, value in (headers or {}).items():
            if value is None:
                sent.pop(name, None)
            else:
                sent[name] = value
        data = raw if raw is not None else json.dumps({} if body is None else body).encode()
        return await self.request("POST", path, headers=sent, data=data)


def _client(reactor: Any, ca_pem: bytes | None) -> Any:
    """
    A treq client that keeps no cookie (each request says which it
    sends), no connection, and trusts only C{ca_pem} for HTTPS.
    """
    from http.cookiejar import CookieJar, DefaultCookiePolicy

    from treq.client import HTTPClient
    from twisted.internet.ssl import Certificate
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    policy = None if ca_pem is None else BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(ca_pem))
    agent = Agent(reactor, pool=pool) if policy is None else Agent(reactor, contextFactory=policy, pool=pool)
    return HTTPClient(agent, cookiejar=CookieJar(DefaultCookiePolicy(allowed_domains=[])))


def _cookie(response: Any) -> str:
    """The session cookie a response sets."""
    for header in response.headers.getRawHeaders(b"Set-Cookie", []):
        name, _, rest = header.decode().partition("=")
        if name == "epop_console":
            return rest.split(";")[0]
    raise AssertionError("no epop_console cookie set")
