"""
What the console does to a running relay: L{RelayConsoleBackend}, the real
L{IConsoleBackend}, between the web layer and L{RelayService}.

A settings change is checked whole, saved to the settings file (the proxy
password to its own 0600 file), then handed to the relay, so that what the
page shows, what the relay uses and what the next start reads are the same;
if the file cannot be written, nothing changes.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from epop._version import __version__
from epop.addressing import DEFAULT_PORT
from epop.console.backend import ConsoleRefusal, IConsoleBackend
from epop.epmsi.proxy import ProxyConfig
from epop.epmsi.proxy_setting import parse_proxy_url
from epop.epmsi.upstream import CheckResult
from epop.journal import events as journal
from epop.journal.observer import JournalObserver
from epop.journal.pages import connection_rows, journal_page, record_id
from epop.journal.table import for_readers
from epop.messages import Text, log_format, reason_of, system_reason
from epop.relay.allowlist import Allowlist
from epop.relay.network_interfaces import listen_string, local_addresses
from epop.relay.service import RelayListening, RelayService, StartRefused
from epop.relay.settings import RelaySettingsError
from epop.relay.start_with_machine import set_enabled, unit_name, unit_state
from epop.relay.saved_settings import save_settings
from epop.settings_update import remove_password_file, write_password_file

__all__ = ["ConsoleFiles", "RelayConsoleBackend", "listen_address_and_port"]

#: The settings the console edits, by settings-file key.
EDITED_KEYS = ("listen", "no-listen-at-start", "allow", "proxy", "proxy-user", "proxy-password-file")

_HEADER = (
    "e-POP relay settings (twistd epop --config THIS_FILE), written by the relay's console.\n"
    "Comments and other keys are kept when the console saves its changes."
)


@dataclass(frozen=True)
class ConsoleFiles:
    """
    Where the console saves, and what the command line holds.

    @ivar config: the settings file (C{--config}, or where the relay would
        save without one).
    @ivar config_in_use: whether the relay was started with C{--config}
        C{config}: if not, a saved change applies only to a relay started so.
    @ivar overridden: settings-file keys given on the command line, which
        win over the file at the next start.
    @ivar proxy_password_file: where the proxy password is kept.
    """

    config: str
    config_in_use: bool
    overridden: frozenset[str] = frozenset()
    proxy_password_file: str | None = None
    #: Called once a change is saved (twistd's SIGHUP then compares the file with it).
    saved: Callable[[], None] | None = None

    @property
    def password_file(self) -> str:
        """The proxy password's file: C{--proxy-password-file}, else beside the settings file."""
        if self.proxy_password_file:
            return self.proxy_password_file
        return os.path.join(os.path.dirname(os.path.abspath(self.config)), "epop-proxy-password")


def listen_address_and_port(description: str) -> tuple[str, int] | None:
    """
    The address and port of a C{tcp:}/C{tcp6:} listen string (behind
    C{haproxy:} too), C{0.0.0.0} or C{::} when it names no interface;
    C{None} for any other kind of endpoint.
    """
    text = description.removeprefix("haproxy:")
    fields: list[str] = []
    current = ""
    escaped = False
    for character in text:
        if escaped:
            current += character
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == ":":
            fields.append(current)
            current = ""
        else:
            current += character
    fields.append(current)
    kind, arguments = fields[0], fields[1:]
    if kind not in ("tcp", "tcp6"):
        return None
    port: int | None = None
    interface = "::" if kind == "tcp6" else "0.0.0.0"
    for argument in arguments:
        name, equals, value = argument.partition("=")
        if not equals and port is None:
            port = int(name)
        elif name == "port":
            port = int(value)
        elif name == "interface":
            interface = value
    return None if port is None else (interface, port)


def check_json(check: CheckResult) -> dict[str, Any]:
    """A CHECK for the page: its message stays a L{Text}, rendered in the reader's language."""
    return {
        "ok": check.ok,
        "url": check.url,
        "address": check.address,
        "proxy": check.proxy,
        "elapsed_ms": round(check.elapsed * 1000),
        "step": None if check.error is None else check.error.code,
        "message": check.text(),
    }


class _Forward:
    """An L{IJournalWriter} that hands each record to a function: the console's live journal."""

    def __init__(self, forward: Callable[[dict[str, Any]], None]) -> None:
        self._forward = forward

    def write(self, record: dict[str, Any]) -> None:
        found = record_id(record)
        self._forward(record if found is None else {**record, "id": found})

    def close(self) -> None:
        pass


@implementer(IConsoleBackend)
class RelayConsoleBackend:
    """
    The console's view of one L{RelayService}, and its commands.

    @param reactor: runs systemctl and, in its thread pool, the proxy
        discovery (which may read a PAC file).
    @param publisher: the log publisher whose relay events feed the live
        journal (the global one under twistd).
    """

    log = Logger()

    def __init__(self, reactor: Any, relay: RelayService, files: ConsoleFiles, publisher: Any) -> None:
        self._reactor = reactor
        self._relay = relay
        self._files = files
        self._publisher = publisher
        self._unit = unit_name()
        self._start_with_machine: dict[str, Any] = {
            "available": False, "unit": self._unit, "enabled": None, "state": "unknown", "command": ""
        }

    def refresh(self) -> Deferred[dict[str, Any]]:
        """Read the systemd unit's state again (the console does so when it starts)."""

        def found(state: dict[str, Any]) -> dict[str, Any]:
            self._start_with_machine = state
            return state

        return unit_state(self._reactor, self._unit).addCallback(found)

    # -- what the page shows ---------------------------------------------------------

    def state(self) -> dict[str, Any]:
        relay = self._relay
        listening = relay.listening
        config = self._files.config
        return {
            "listening": listening,
            "addresses": relay.listening_addresses() if listening else [],
            "settings": self.settings(),
            "editable": not listening,
            "config": {
                "path": config,
                "exists": os.path.exists(config),
                "in_use": self._files.config_in_use,
            },
            "overridden": sorted(self._files.overridden & set(EDITED_KEYS)),
            "start_with_machine": dict(self._start_with_machine),
            "relay": {"run": relay.relay_id, "version": __version__},
        }

    def settings(self) -> dict[str, Any]:
        """SETTINGS: what the page edits, from the settings in force; never the password."""
        settings = self._relay.settings
        address, port = next(
            (found for found in map(listen_address_and_port, settings.listen) if found is not None),
            ("0.0.0.0", DEFAULT_PORT),
        )
        proxy = settings.proxy
        return {
            "listen": list(settings.listen),
            "listen_at_start": settings.listen_at_start,
            "listen_address": address,
            "port": port,
            "allow_all": not settings.allow,
            "allow": list(settings.allow),
            "proxy_enabled": proxy is not None,
            "proxy_host": proxy.host if proxy else "",
            "proxy_port": proxy.port if proxy else None,
            "proxy_auth": bool(proxy and proxy.user),
            "proxy_user": (proxy.user or "") if proxy else "",
            "proxy_password_set": bool(proxy and proxy.password),
        }

    def interfaces(self) -> list[dict[str, Any]]:
        port = self.settings()["port"]
        found = [{"interface": "all", "address": "0.0.0.0", "listen": f"tcp:{port}"}]
        for address in local_addresses():
            found.append(
                {"interface": address.interface, "address": address.address, "listen": address.listen_string(port)}
            )
        return found

    def _in_thread(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Read the journal's files in the reactor's thread pool: a search through
        a large journal must not hold up the transfers the reactor relays."""
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), function, *args, **kwargs)

    def journal_page(
        self, before: str | None, limit: int, types: list[str], text: str, connections: list[str]
    ) -> Deferred[dict[str, Any]]:
        d = self._in_thread(
            journal_page,
            self._relay.settings.journal,
            before=before,
            limit=limit,
            types=types,
            text=text,
            connections=connections,
        )

        def refused(failure: Any) -> None:
            failure.trap(ValueError)
            raise ConsoleRefusal(400, "invalid", Text.literal(str(failure.value)))

        return d.addCallbacks(lambda found: {"records": [for_readers(r) for r in found[0]], "next": found[1]}, refused)

    def connections(self, limit: int) -> Deferred[list[dict[str, Any]]]:
        return self._in_thread(connection_rows, self._relay.settings.journal, limit)

    def watch(self, listener: Callable[[str, dict[str, Any]], None]) -> Callable[[], None]:
        observer = JournalObserver(
            _Forward(lambda record: listener("journal", for_readers(record))), self._relay.relay_id, self._reactor
        )
        self._publisher.addObserver(observer)
        unwatch_relay = self._relay.watch(lambda: listener("state", self.state()))
        watching = [True]
        # The page shows whether the relay starts with the machine: ask systemd now.
        self.refresh().addCallback(lambda _: listener("state", self.state()) if watching[0] else None)

        def unwatch() -> None:
            watching[0] = False
            self._publisher.removeObserver(observer)
            unwatch_relay()

        return unwatch

    # -- commands ---------------------------------------------------------------------

    @inlineCallbacks
    def start_listening(self) -> Any:
        try:
            check = yield self._relay.start_listening()
        except RelayListening:
            raise ConsoleRefusal(409, "listening", Text("The relay is already listening.")) from None
        except StartRefused as e:
            if e.listen_error is not None:
                message = Text(
                    "Listening not started: cannot listen on {endpoint}: {why}. Is another program "
                    "using this port? Choose another port or address.",
                    endpoint=e.listen_error.description,
                    why=e.listen_error.why,
                )
            else:
                assert e.check is not None
                message = Text(
                    "Listening not started: the test of e-PMSI failed: {reason}",
                    reason=e.check.text(),
                )
            language = self._relay.language
            self.log.warn(log_format(Text("Console: {why}"), language), why=message.render(language))
            raise ConsoleRefusal(502, "start-failed", message) from None
        return {"check": check_json(check)}

    def stop_listening(self) -> Deferred[None]:
        return self._relay.stop_listening()

    @inlineCallbacks
    def test_epmsi(self) -> Any:
        check = yield self._relay.test_epmsi()
        return check_json(check)

    def import_proxy(self) -> Deferred[dict[str, Any]]:
        from epop.epmsi.system_proxy import discover_proxy

        url = self._relay.settings.epmsi
        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), discover_proxy, url)

        def found(discovery: Any) -> dict[str, Any]:
            found = {"found": False, "host": None, "port": None, "user": None}
            if discovery.proxy is not None:
                parsed = parse_proxy_url(discovery.proxy, credentials="the console's password field")
                found = {"found": True, "host": parsed.host, "port": parsed.port, "user": discovery.user}
            # Where it was found, and the whole answer (English: as epop proxy-settings says it).
            return {**found, "source": discovery.source, "message": discovery.describe()}

        return d.addCallback(found)

    @inlineCallbacks
    def set_start_with_machine(self, enabled: bool) -> Any:
        state = yield set_enabled(self._reactor, self._unit, enabled, language=self._relay.language)
        self._start_with_machine = {k: v for k, v in state.items() if k != "changed"}
        return state

    def change_settings(self, changes: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return maybeDeferred(self._change_settings, changes)

    def _change_settings(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        relay = self._relay
        if relay.listening:
            raise ConsoleRefusal(
                409,
                "listening",
                Text("Settings can be changed only while listening is stopped: stop listening first."),
            )
        current = self.settings()
        editable = set(current) - {"listen", "proxy_password_set"} | {"proxy_password"}
        unknown = sorted(set(changes) - editable)
        if unknown:
            raise ConsoleRefusal(
                400, "invalid", Text("These settings cannot be changed here: {names}", names=", ".join(unknown))
            )
        wanted = {**current, **changes}
        fields: dict[str, Text] = {}
        settings = relay.settings
        file_changes: dict[str, Any] = {}
        password: str | None = None

        listen = self._listen(wanted, current, changes, fields)
        if listen is not None:
            settings = self._replace(settings, fields, "port", listen=(listen,))
            file_changes["listen"] = [listen]
        if "listen_at_start" in changes:
            at_start = changes["listen_at_start"]
            if not isinstance(at_start, bool):
                fields["listen_at_start"] = Text("Listening at start is on or off, not {value}.", value=at_start)
            elif at_start != settings.listen_at_start:
                settings = replace(settings, listen_at_start=at_start)
                file_changes["no-listen-at-start"] = None if at_start else True
        if {"allow_all", "allow"} & set(changes):
            allow = self._allow(wanted, fields)
            if allow is not None:
                settings = self._replace(settings, fields, "allow", allow=allow)
                file_changes["allow"] = list(allow) or None
        if {"proxy_enabled", "proxy_host", "proxy_port", "proxy_auth", "proxy_user", "proxy_password"} & set(changes):
            proxy, password = self._proxy(wanted, fields)
            if not fields:
                settings = self._replace(settings, fields, "proxy_host", proxy=proxy)
                file_changes.update(self._proxy_keys(proxy))
        if fields:
            raise ConsoleRefusal(400, "invalid", Text("Some settings are not valid: see each one."), fields)
        if not file_changes:
            return self.state()
        self._save(file_changes, password, settings.proxy)
        relay.change_settings(settings)
        journal.emit(
            self.log,
            relay.relay_id,
            "settings-reloaded",
            Text(
                "Settings changed from the console and saved to {source}: {changed}",
                source=self._files.config,
                changed=", ".join(sorted(file_changes)),
            ),
            language=relay.language,
            allow=list(settings.allow),
            outcome="completed",
        )
        return self.state()

    def _replace(self, settings: Any, fields: dict[str, Text], field: str, **values: Any) -> Any:
        try:
            return replace(settings, **values)
        except RelaySettingsError as e:
            fields[field] = Text.literal(e.problem)
            return settings

    def _listen(
        self, wanted: dict[str, Any], current: dict[str, Any], changes: Mapping[str, Any], fields: dict[str, Text]
    ) -> str | None:
        """The new listen string, or None when neither the address nor the port changes."""
        if not {"listen_address", "port"} & set(changes):
            return None
        listen = self._relay.settings.listen
        if len(listen) != 1 or listen[0].startswith("haproxy:") or listen_address_and_port(listen[0]) is None:
            # Several endpoints, a load balancer's or a socket: more than one address and port say.
            fields["port"] = Text(
                "This relay listens on {listen}: change that in its settings file, not here.",
                listen=", ".join(listen) or "nothing",
            )
            return None
        port = wanted["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            fields["port"] = Text("The port is a number from 1 to 65535 (3358 by default), not {value}.", value=port)
        address = wanted["listen_address"]
        known = {entry["address"] for entry in self.interfaces()} | {"::"}
        if not isinstance(address, str) or address not in known:
            fields["listen_address"] = Text(
                "{value} is not one of this machine's addresses.", value=str(address)
            )
        if fields.keys() & {"port", "listen_address"}:
            return None
        if address == current["listen_address"] and port == current["port"]:
            return None
        return listen_string(address, port)

    def _allow(self, wanted: dict[str, Any], fields: dict[str, Text]) -> tuple[str, ...] | None:
        entries = wanted["allow"]
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            fields["allow"] = Text("The list of allowed clients must be a list of addresses.")
            return None
        if wanted["allow_all"]:
            return ()
        if not entries:
            fields["allow"] = Text(
                "Add at least one address or network, or choose to allow everyone."
            )
            return None
        for entry in entries:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                fields["allow"] = Text(
                    "{entry} is not an address or a network (e.g. 10.1.2.3, 10.1.0.0/16, fd00::/8).",
                    entry=entry,
                )
                return None
            try:
                Allowlist([entry])
            except ValueError as e:
                fields["allow"] = Text.literal(str(e))
                return None
        return tuple(entries)

    def _proxy(self, wanted: dict[str, Any], fields: dict[str, Text]) -> tuple[ProxyConfig | None, str | None]:
        """The proxy asked for, and a new password to save (None: keep or none)."""
        if not wanted["proxy_enabled"]:
            return None, None
        host = wanted["proxy_host"].strip() if isinstance(wanted["proxy_host"], str) else ""
        port = wanted["proxy_port"]
        if not host:
            fields["proxy_host"] = Text("Give the proxy's host name or address.")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            fields["proxy_port"] = Text("The proxy's port is a number from 1 to 65535, not {value}.", value=port)
        if not wanted["proxy_auth"]:
            return (None, None) if fields else (ProxyConfig(host, port), None)
        user = wanted["proxy_user"].strip() if isinstance(wanted["proxy_user"], str) else ""
        if not user:
            fields["proxy_user"] = Text("Give the user name for the proxy.")
        new_password = wanted.get("proxy_password") or None
        if new_password is not None and not isinstance(new_password, str):
            new_password = None
        current = self._relay.settings.proxy
        password = new_password or (current.password if current is not None else None)
        if not password:
            fields["proxy_password"] = Text("Give the password for the proxy.")
        if fields:
            return None, None
        return ProxyConfig(host, port, user, password), new_password

    def _proxy_keys(self, proxy: ProxyConfig | None) -> dict[str, Any]:
        if proxy is None:
            return {"proxy": None, "proxy-user": None, "proxy-password-file": None}
        return {
            "proxy": f"http://{proxy.address}",
            "proxy-user": proxy.user,
            "proxy-password-file": self._files.password_file if proxy.user else None,
        }

    def _save(self, changes: dict[str, Any], password: str | None, proxy: ProxyConfig | None) -> None:
        """The password file first, then the settings file naming it; nothing changes if either fails."""
        try:
            if password is not None:
                write_password_file(self._files.password_file, password)
            elif proxy is not None and proxy.user and proxy.password and not os.path.exists(self._files.password_file):
                # A password that came from EPOP_PROXY_PASSWORD: the saved settings need it in a file.
                write_password_file(self._files.password_file, proxy.password)
            save_settings(self._files.config, changes, header=_HEADER)
        except (OSError, ValueError) as e:
            reason = system_reason(e) if isinstance(e, OSError) else reason_of(e)
            language = self._relay.language
            self.log.warn(
                log_format(Text("Console: settings not saved to {path}: {reason}"), language),
                path=self._files.config,
                reason=reason.render(language),
            )
            raise ConsoleRefusal(
                500,
                "not-saved",
                Text(
                    "The settings were not saved to {path}: {reason}. Nothing was changed. (The relay "
                    "writes the file beside it, then renames it: its user must be able to write the "
                    "file and its folder.)",
                    path=self._files.config,
                    reason=reason,
                ),
            ) from None
        if proxy is None or not proxy.user:
            if not self._files.proxy_password_file:
                remove_password_file(self._files.password_file)
        if self._files.saved is not None:
            self._files.saved()
