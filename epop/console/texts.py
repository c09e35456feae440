"""
Every label the console's page shows, in French and English.

The page holds no words of its own: each element carries C{data-text="key"}
and C{console.js} fills it from C{GET /api/texts}, so that the French lives
in the same catalog as the rest of the relay's messages and uses the words
of the original product's manual.  The event types are named as
C{epop journal} names them (L{epop.journal.table}).
"""

from __future__ import annotations

from epop.messages import Text

__all__ = ["PAGE_TEXTS", "page_texts"]

PAGE_TEXTS: dict[str, Text] = {
    "app-title": Text("e-POP relay"),
    "title-stopped": Text("e-POP relay — stopped"),
    "language": Text("Language"),
    "activity": Text("Activity"),
    "status-listening": Text("Listening"),
    "status-stopped": Text("Not listening"),
    "listen-start": Text("Start listening"),
    "listen-stop": Text("Stop listening"),
    "listen-starting": Text("Starting: checking the settings and e-PMSI…"),
    "listen-stopping": Text("Stopping: letting the connections in progress end…"),
    "settings-heading": Text("Settings"),
    "settings-locked": Text("Settings can only be changed while listening is stopped"),
    "listen-address": Text("Listening address"),
    "all-addresses": Text("all addresses"),
    "port": Text("Port"),
    "default-port": Text("Default port"),
    "port-invalid": Text("The port must be a whole number from 0 to 65535."),
    "allowed-clients": Text("Allowed clients"),
    "allow-all": Text("Everyone"),
    "allow-listed": Text("Only those listed below"),
    "allow-entry": Text("Address or network (e.g. 10.1.0.0/16)"),
    "allow-add": Text("Add"),
    "allow-remove": Text("Remove"),
    "allow-remove-confirm": Text("Remove this address from the allowed clients?"),
    "allow-empty": Text("No address listed yet."),
    "proxy-heading": Text("Proxy"),
    "proxy-enabled": Text("Use a proxy to connect to e-PMSI"),
    "proxy-host": Text("Proxy host"),
    "proxy-port": Text("Port number"),
    "proxy-auth": Text("Use password authentication"),
    "proxy-user": Text("User"),
    "proxy-password": Text("Password"),
    "proxy-password-set": Text("A password is set: leave this empty to keep it."),
    "proxy-import": Text("Import proxy settings"),
    "proxy-imported": Text("Proxy settings imported into the form (not saved yet), from:"),
    "test-epmsi": Text("Test e-PMSI"),
    "test-running": Text("Reaching e-PMSI…"),
    "start-with-machine": Text("Start with the machine"),
    "swm-enabled": Text("The relay starts with the machine."),
    "swm-disabled": Text("The relay does not start with the machine."),
    "swm-unavailable": Text(
        "This machine has no systemd: to start the relay with it, use the machine's own means "
        "(docs/install.md; on Windows, docs/windows.md)."
    ),
    "swm-enable": Text("Start with the machine"),
    "swm-disable": Text("Do not start with the machine"),
    "swm-command": Text("The relay could not change this itself: an administrator can type this command:"),
    "save-settings": Text("Save"),
    "settings-saved": Text("Settings saved."),
    "nothing-to-save": Text("Nothing has changed: nothing to save."),
    "config-saved-to": Text("Settings file:"),
    "config-will-be-created": Text("(will be created)"),
    "listen-at-start": Text("Start listening when the relay starts"),
    "config-not-in-use": Text("The relay was started without this file: it reads it at its next start only if started so:"),
    "overridden": Text("Given on the command line, which wins over the saved file at the next start:"),
    "connections-heading": Text("Connections"),
    "col-number": Text("No."),
    "col-client": Text("Client"),
    "col-kind": Text("e-POP/tunnel"),
    "col-opened": Text("Opened"),
    "col-closed": Text("Closed"),
    "col-bytes": Text("Bytes in/out"),
    "col-outcome": Text("Outcome"),
    "connection-open": Text("open"),
    "connection-lost": Text("lost"),
    "clear-selection": Text("Clear selection"),
    "selection-hint": Text("Click a connection to see only its journal; Ctrl-click adds or removes one, Shift-click selects a range."),
    "no-connections": Text("No connection yet."),
    "journal-heading": Text("Listening journal"),
    "col-client-ip": Text("Client IP"),
    "col-date": Text("Date"),
    "col-type": Text("Type"),
    "col-description": Text("Description"),
    "journal-newest-first": Text("Newest first"),
    "journal-text": Text("Search the descriptions"),
    "journal-types": Text("Types shown"),
    "journal-more": Text("Load older"),
    "journal-empty": Text("No record."),
    "type-listening-opened": Text("Listening opened"),
    "type-listening-closed": Text("Listening closed"),
    "type-connection-opened": Text("Connection opened"),
    "type-connection-closed": Text("Connection closed"),
    "type-object-instantiated": Text("Object instantiated"),
    "type-object-released": Text("Object released"),
    "type-settings-reloaded": Text("Settings reload"),
    "notifications-heading": Text("Notifications"),
    "notify": Text("Show notifications"),
    "notify-types": Text("Notify these events while the page is hidden:"),
    "notify-granted": Text("Notifications are on."),
    "notify-denied": Text("The browser refuses notifications for this page: allow them in its settings."),
    "notify-unsupported": Text("This browser cannot show notifications."),
    "reconnecting": Text("Connection to the relay lost, reconnecting…"),
    "signed-out": Text("Your session has ended: open the console's address from the relay's log again."),
    "request-failed": Text("The relay could not be reached or answered with an error:"),
    "version": Text("Version"),
}


def page_texts(language: str) -> dict[str, str]:
    """Every label, rendered in C{language}: the body of C{GET /api/texts}."""
    return {key: text.render(language) for key, text in PAGE_TEXTS.items()}
