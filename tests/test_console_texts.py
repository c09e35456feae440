"""
The console page's labels: every key renders in French and English, the
French uses the original manual's words, every key the page asks for
exists, and the page holds nothing inline that its Content-Security-Policy
(C{default-src 'self'}) would block.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from babel.messages.pofile import read_po
from twisted.trial.unittest import SynchronousTestCase

from epop.console.texts import PAGE_TEXTS, page_texts
from epop.journal.events import EVENT_TYPES
from epop.messages import LANGUAGES

PACKAGE = Path(__file__).resolve().parent.parent / "epop"
STATIC = PACKAGE / "console" / "static"
PO = PACKAGE / "locale" / "fr" / "LC_MESSAGES" / "epop.po"

#: The manual's words (sections 4.4 to 4.10) for the labels it names.
MANUAL_WORDS = {
    "listen-start": "Lancer l'écoute",
    "listen-stop": "Arrêter l'écoute",
    "test-epmsi": "Tester e-PMSI",
    "default-port": "Port par défaut",
    "proxy-import": "Importer les paramètres de proxy",
    "allow-all": "Tous",
    "allow-listed": "Ceux listés ci-dessous",
    "allow-add": "Ajouter",
    "allow-remove": "Supprimer",
    "proxy-enabled": "Utiliser un proxy pour se connecter à e-PMSI",
    "proxy-host": "Host du proxy",
    "proxy-port": "N° de port",
    "proxy-auth": "Utiliser une authentification par mot de passe",
    "proxy-user": "Utilisateur",
    "proxy-password": "Mot de passe",
    "connections-heading": "Connexions",
    "journal-heading": "Journal d'écoute",
    "col-client-ip": "IP du client",
    "col-date": "Date",
    "col-type": "Type",
    "col-description": "Description",
    "type-listening-opened": "Ouverture de l'écoute du réseau",
    "type-listening-closed": "Fermeture de l'écoute du réseau",
    "type-connection-opened": "Ouverture de connexion",
    "type-connection-closed": "Fermeture de connexion",
    "type-object-instantiated": "Instanciation d'objet",
    "type-object-released": "Libération d'objet",
    "settings-locked": "Le paramétrage n'est possible que lorsque l'écoute est coupée",
    "title-stopped": "Relais e-POP — arrêté",
}

#: The element ids the browser tests rely on (documented at the top of index.html).
STABLE_IDS = (
    "title activity listen-toggle listen-error listen-address port default-port allow-all "
    "allow-listed allow-list allow-entry allow-add proxy-enabled proxy-host proxy-port "
    "proxy-auth proxy-user proxy-password proxy-import test-epmsi test-result save-settings "
    "settings-error settings-locked start-with-machine connections journal journal-more "
    "journal-text lang-fr lang-en notify"
).split()


class _Page(HTMLParser):
    """What the checks need from index.html: ids, text keys and anything inline."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.keys: set[str] = set()
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if "id" in attributes:
            self.ids.append(str(attributes["id"]))
        for name, value in attrs:
            if name.startswith("data-text"):
                self.keys.add(str(value))
            if name == "style" or name.startswith("on"):
                self.inline.append(f"<{tag} {name}=...>")
            if name in ("href", "src", "action") and str(value).lower().startswith("javascript:"):
                self.inline.append(f"<{tag} {name}={value}>")
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script":
            if not attributes.get("src"):
                self.inline.append("<script> without src")
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("<script> with a body")


def _page() -> _Page:
    parser = _Page()
    parser.feed((STATIC / "index.html").read_text("utf-8"))
    parser.close()
    return parser


def _script() -> str:
    return (STATIC / "console.js").read_text("utf-8")


class PageTextsTests(SynchronousTestCase):
    def test_every_key_renders_in_both_languages(self) -> None:
        """Each label renders, non-empty, in every language; /api/texts gives them all."""
        for language in LANGUAGES:
            texts = page_texts(language)
            self.assertEqual(sorted(texts), sorted(PAGE_TEXTS), language)
            for key, text in texts.items():
                self.assertTrue(text.strip(), f"{key} is empty in {language}")

    def test_every_key_translated(self) -> None:
        """Each label has its own French in the catalog, with no placeholder left to fill."""
        with open(PO, "rb") as f:
            catalog = {message.id: message.string for message in read_po(f) if message.id}
        for key, text in PAGE_TEXTS.items():
            self.assertTrue(catalog.get(text.template), f"{key}: {text.template!r} has no French")
            self.assertNotIn("{", text.template, key)

    def test_manual_words(self) -> None:
        """The French labels are the original manual's words."""
        french = page_texts("fr")
        for key, words in MANUAL_WORDS.items():
            self.assertEqual(french[key], words, key)
        self.assertEqual(page_texts("en")["listen-start"], "Start listening")

    def test_every_event_type_named(self) -> None:
        """The journal's types, as the relay writes them, each have a label, and the page knows them all."""
        for event_type in EVENT_TYPES:
            self.assertIn(f"type-{event_type}", PAGE_TEXTS)
        found = re.search(r"const EVENT_TYPES = \[([^\]]*)\]", _script())
        assert found is not None, "console.js lists EVENT_TYPES"
        self.assertEqual(re.findall(r"'([a-z-]+)'", found.group(1)), list(EVENT_TYPES))


class PageKeysTests(SynchronousTestCase):
    def test_html_keys_exist(self) -> None:
        """Every data-text key in index.html is a label of PAGE_TEXTS."""
        keys = _page().keys
        self.assertTrue(keys)
        self.assertEqual(sorted(keys - set(PAGE_TEXTS)), [])

    def test_script_keys_exist(self) -> None:
        """Every t('key') in console.js is a label of PAGE_TEXTS."""
        keys = set(re.findall(r"\bt\('([^']+)'\)", _script()))
        self.assertTrue(keys)
        self.assertEqual(sorted(keys - set(PAGE_TEXTS)), [])

    def test_every_key_used(self) -> None:
        """No label is dead: each is used by index.html, console.js or as an event type's name."""
        used = _page().keys | set(re.findall(r"\bt\('([^']+)'\)", _script()))
        used |= {f"type-{event_type}" for event_type in EVENT_TYPES}
        self.assertEqual(sorted(set(PAGE_TEXTS) - used), [])


class PageMarkupTests(SynchronousTestCase):
    def test_nothing_inline(self) -> None:
        """No inline script, style or event attribute: the CSP would block them."""
        self.assertEqual(_page().inline, [])

    def test_script_sets_no_inline_style(self) -> None:
        """console.js neither writes style attributes nor evaluates strings."""
        script = _script()
        for forbidden in ("setAttribute('style'", ".innerHTML", "eval(", "new Function", ".style."):
            self.assertNotIn(forbidden, script)

    def test_stable_ids(self) -> None:
        """The ids browser tests use are there, once each."""
        ids = _page().ids
        for name in STABLE_IDS:
            self.assertEqual(ids.count(name), 1, name)
        self.assertEqual(len(ids), len(set(ids)), "duplicate ids")

    def test_labels_for_inputs(self) -> None:
        """Each input and select of index.html has a label naming it (accessibility)."""
        html = (STATIC / "index.html").read_text("utf-8")
        labelled = set(re.findall(r'<label for="([^"]+)"', html))
        controls = set(re.findall(r'<(?:input|select)\b[^>]*\bid="([^"]+)"', html))
        self.assertTrue(controls)
        self.assertEqual(sorted(controls - labelled), [])

    def test_local_resources_only(self) -> None:
        """The page loads only its own script and style sheet (no CDN)."""
        html = (STATIC / "index.html").read_text("utf-8")
        self.assertEqual(
            sorted(re.findall(r'(?:src|href)="([^"]+)"', html)),
            ["/static/console.css", "/static/console.js"],
        )
