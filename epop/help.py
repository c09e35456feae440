"""
C{--help} in the reader's language.

Twisted's L{usage.Options} builds its help from the English strings where
the options are declared (C{optParameters}, C{optFlags}, C{opt_} docstrings,
C{synopsis}, C{longdesc}, C{subCommands}); L{TranslatedHelp} renders the
same help with each of them looked up in the catalog, so that the option
tables stay as they read in the code.  A help string's catalog key is its
words joined by single spaces (a docstring's line breaks do not count);
L{help_strings} lists them all, for the test that each has a translation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from twisted.python import usage

from epop.messages import LANGUAGES, Text, choose_language, decimal_mark, translations

__all__ = ["TranslatedHelp", "catalog_key", "help_strings", "shown_default", "usage_line"]

#: Twisted's own words in a help page.
_USAGE = Text("Usage:")
_OPTIONS = Text("Options:")
_COMMANDS = Text("Commands:")
_NO_OPTIONS = Text("Options: None")


#: While Twisted wraps a help page (C{textwrap}), these stand for what must
#: not start or end a line: a space before French ":", ";", "?", "!" and "»"
#: or after "«", and every hyphen ("--tls-cert" stays whole, and so does
#: "e-PMSI").  They are private-use characters, found in no text of ours,
#: and become plain spaces and hyphens again once the page is wrapped.
_KEEP_TOGETHER = {" :": "\ue000:", " ;": "\ue000;", " ?": "\ue000?", " !": "\ue000!", " »": "\ue000»",
                  "« ": "«\ue000", "-": "\ue001"}
_RESTORED = {"\ue000": " ", "\ue001": "-"}


def _unbreakable(text: str | None) -> str | None:
    """C{text} with the spaces and hyphens a line must not break at held together."""
    if not text:
        return text
    for plain, held in _KEEP_TOGETHER.items():
        text = text.replace(plain, held)
    return text


def _restored(text: str) -> str:
    """A wrapped page with L{_unbreakable}'s stand-ins back to what they stood for."""
    for held, plain in _RESTORED.items():
        text = text.replace(held, plain)
    return text


def shown_default(value: Any, language: str) -> str:
    """
    A default as it was written: 30, not usage's "30.0"; a fraction with the
    language's decimal mark.
    """
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return str(value).replace(".", decimal_mark(language))
    return str(value)


def catalog_key(text: str) -> str:
    """The catalog key of a help string: its words, single-spaced."""
    return " ".join(text.split())


def _translated(text: str | None, language: str) -> str | None:
    if not text:
        return text
    key = catalog_key(text)
    found = translations(language).gettext(key)
    return text if found == key else found


def help_strings(options: usage.Options) -> Iterator[str]:
    """
    Every help string of C{options} and of its subcommands, recursively,
    as catalog keys.
    """
    for text in (getattr(options, "synopsis", None), getattr(options, "longdesc", None), *options.docs.values()):
        if text:
            yield catalog_key(text)
    for _name, _short, parser, description in getattr(options, "subCommands", ()):
        if description:
            yield catalog_key(description)
        yield from help_strings(parser())


def usage_line(synopsis: str, language: str) -> str:
    """A synopsis whose leading "Usage:" is in C{language} (twistd's own too)."""
    english = _USAGE.template
    if synopsis.startswith(english):
        return _USAGE.render(language) + synopsis[len(english):]
    return synopsis


class TranslatedHelp(usage.Options):
    """
    Options whose C{--help} is in the reader's language: C{--lang} of these
    options or of the command they belong to, else the locale's.
    """

    def help_language(self) -> str:
        """The language of this help: the nearest C{language} or C{--lang} up the parents, else the locale's."""
        options: Any = self
        while True:
            language = getattr(options, "language", None)
            if language in LANGUAGES:
                return language
            asked = options.get("lang")
            if asked in LANGUAGES:
                return asked
            if options.parent is None:
                return choose_language(getattr(options, "environ", None))
            options = options.parent

    def _in(self, language: str, wrapping: bool = False) -> TranslatedHelp:
        """
        A copy of these options whose help strings are in C{language};
        C{wrapping}: held together where a line must not break (see L{_restored}).
        """
        held = _unbreakable if wrapping else (lambda text: text)
        view = copy.copy(self)
        view.docs = {name: _translated(doc, language) for name, doc in self.docs.items()}
        # usage.docMakeChunks words a parameter's default in English, and a float's as 30.0: say it here.
        view.defaults = dict(self.defaults)
        for name, default in self.defaults.items():
            if default is not None and name + "=" in self.longOpt:
                said = Text("[default: {value}]", value=shown_default(default, language)).render(language)
                view.docs[name] = f"{(view.docs.get(name) or '').strip()} {said}"
                view.defaults[name] = None
        view.docs = {name: held(doc) for name, doc in view.docs.items()}
        if getattr(self, "synopsis", None):
            view.synopsis = _translated(self.synopsis, language)
        if getattr(self, "longdesc", None):
            view.longdesc = held(_translated(self.longdesc, language))
        if hasattr(self, "subCommands"):
            view.subCommands = [
                [name, short, parser, held(_translated(description, language))]
                for name, short, parser, description in self.subCommands
            ]
        return view

    def getSynopsis(self) -> str:
        if getattr(self, "subCommand", None) is not None and self.parent is not None:
            # The start of a nested subcommand's synopsis: this command's name, not its own arguments.
            return f"{self.parent.getSynopsis()} {self.parent.subCommand}"
        language = self.help_language()
        if language == "en":
            return super().getSynopsis()
        return usage_line(usage.Options.getSynopsis(self._in(language)), language)

    def command_synopsis(self) -> str:
        """The synopsis without its "Usage:" word: C{epop config set KEY VALUE}."""
        synopsis = self.getSynopsis()
        for language in {self.help_language(), "en"}:
            word = _USAGE.render(language)
            if synopsis.startswith(word):
                return synopsis[len(word):].strip()
        return synopsis

    def getUsage(self, width: int | None = None) -> str:
        if hasattr(self, "subOptions"):
            return super().getUsage(width)
        language = self.help_language()
        text = _restored(usage.Options.getUsage(self._in(language, wrapping=True), width))
        if language == "en":
            return text
        lines = []
        for line in text.split("\n"):
            for word in (_NO_OPTIONS, _OPTIONS, _COMMANDS):
                if line == word.template:
                    line = word.render(language)
                    break
            lines.append(line)
        return "\n".join(lines)
