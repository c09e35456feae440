"""
What the console's web layer asks of the relay (L{IConsoleBackend}), and
how a command the relay refuses travels to the page (L{ConsoleRefusal}).

The web layer only ever talks to an L{IConsoleBackend}: the relay's own
(L{epop.console.relay_backend.RelayConsoleBackend}) under C{twistd epop}, an in-memory one in tests.
"""

from __future__ import annotations
from typing import Any, Callable
from twisted.internet.defer import Deferred
from zope.interface import Interface
from epop.messages import Text

class ConsoleRefusal(Exception):
    """
    A console command the relay will not carry out, and why, for the page.

    @ivar status: the HTTP status (400 invalid value, 409 not now, 502 e-PMSI or proxy failed...).
    @ivar code: a stable machine word ("listening", "invalid", "start-failed", "import-failed"...).
    @ivar message: what to tell the person, rendered in their language by the web layer.
    @ivar fields: for 400, each bad field's own message (keys as in the settings JSON).
    """
    def __init__(self, status: int, code: str, message: Text, fields: dict[str, Text] | None = None) -> None:
        super().__init__(str(message))
        self.status = status
        self.code = code
        self.message = message
        self.fields = dict(fields or {})

class IConsoleBackend(Interface):
    """What the console's web layer asks of the relay. Methods may return a value or a Deferred; a refusal raises (or fails with) ConsoleRefusal."""

    def state() -> dict[str, Any]:
        """The STATE JSON below."""
    def interfaces() -> list[dict[str, Any]]:
        """This machine's addresses: [{"interface": "eth0", "address": "10.1.2.3", "listen": "tcp:3358:interface=10.1.2.3"}, ...] plus {"interface": "all", "address": "0.0.0.0", ...} first."""
    def start_listening() -> "Deferred[dict[str, Any]]":
        """Test settings and e-PMSI, then listen. -> {"check": CHECK}. Refusal: 409 "listening" (already), 502 "start-failed" (message says the step and why; listening not started)."""
    def stop_listening() -> "Deferred[None]":
        """Stop listening (drain as on stop); the console and process keep running. Stopping when stopped is a no-op."""
    def change_settings(changes: dict[str, Any]) -> "Deferred[dict[str, Any]]":
        """Apply and save SETTINGS keys given (others unchanged). -> new STATE. Refusal: 409 "listening" while listening; 400 "invalid" with fields; 500 "not-saved" if the file cannot be written (nothing changed)."""
    def import_proxy() -> "Deferred[dict[str, Any]]":
        """This machine's proxy settings (as `epop proxy-settings`), NOT applied: {"found": bool, "host": str|None, "port": int|None, "source": str}. The page fills its form with them."""
    def test_epmsi() -> "Deferred[dict[str, Any]]":
        """Reach e-PMSI once with the settings in force. -> CHECK (never fails)."""
    def set_start_with_machine(enabled: bool) -> "Deferred[dict[str, Any]]":
        """Enable/disable the systemd unit. -> START_WITH_MACHINE (with "changed": bool; when the relay cannot, "changed": false and "command" says what to type)."""
    def journal_page(before: str | None, limit: int, types: list[str], text: str, connections: list[str]) -> "dict[str, Any] | Deferred[dict[str, Any]]":
        """{"records": [RECORD...newest first], "next": cursor-or-null}. `connections` are "RUN:N" strings (empty: all)."""
    def connections(limit: int) -> "list[dict[str, Any]] | Deferred[list[dict[str, Any]]]":
        """The newest `limit` connections, newest first: CONNECTION rows."""
    def watch(listener: Callable[[str, dict[str, Any]], None]) -> Callable[[], None]:
        """Call listener(kind, data) for each live change: kind "journal" (data: RECORD) or "state" (data: STATE). Returns a function that stops it."""
