"""
Messages for people, in French or English.

A message is a L{Text}: an English template with named parameters, some of
which may be L{Text}s themselves ("Could not reach e-PMSI at {url}: {reason}").
It is rendered in the reader's language at the last moment, so a message the
relay sends travels as its template and parameters (see C{docs/protocol.md})
and the workstation shows it in its own language.  The French catalog is
C{epop/locale/fr/LC_MESSAGES/epop.po}, compiled to C{epop.mo} by
C{make catalogs}.

The language is French when C{LC_ALL}, C{LC_MESSAGES} or C{LANG} (the first
one set, as POSIX reads them) starts with C{fr}, English otherwise; C{--lang}
overrides it.
"""

from __future__ import annotations

import errno
import gettext
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

__all__ = [
    "LANGUAGES",
    "Text",
    "choose_language",
    "decimal",
    "decimal_mark",
    "grouped",
    "language_asked",
    "language_of",
    "log_format",
    "reason_of",
    "system_reason",
    "translations",
    "unreadable_secret_file",
]

LANGUAGES = ("en", "fr")
_LOCALE_DIR = os.path.join(os.path.dirname(__file__), "locale")


@lru_cache(maxsize=None)
def translations(language: str) -> gettext.NullTranslations:
    """The catalog for C{language}; English is the templates themselves."""
    if language == "en":
        return gettext.NullTranslations()
    return gettext.translation("epop", _LOCALE_DIR, languages=[language])


def choose_language(environ: Mapping[str, str] | None = None, override: str | None = None) -> str:
    """C{override} if given, else what the locale variables ask for."""
    if override:
        return override
    environ = os.environ if environ is None else environ
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = environ.get(name)
        if value:
            return "fr" if value.lower().startswith("fr") else "en"
    return "en"


def language_asked(arguments: Sequence[str]) -> str | None:
    """
    The valid C{--lang} (C{--lang fr}, C{--lang=fr}) of a command line, the
    first one, looked for before it is parsed: so that even the parser's own
    refusal is in the language asked for.
    """
    for index, argument in enumerate(arguments):
        if argument == "--lang" and index + 1 < len(arguments):
            value = arguments[index + 1]
        elif argument.startswith("--lang="):
            value = argument[len("--lang=") :]
        else:
            continue
        return value if value in LANGUAGES else None
    return None


def decimal_mark(language: str) -> str:
    """What separates a number's decimals in C{language}: a comma in French."""
    return "," if language == "fr" else "."


def decimal(value: float, places: int, language: str = "en") -> str:
    """C{value} with C{places} decimals as C{language} writes it: 2.8 in English, 2,8 in French."""
    return f"{value:.{places}f}".replace(".", decimal_mark(language))


#: What separates thousands: a narrow no-break space in French ("250 000 000").
_THOUSANDS = {"en": ",", "fr": "\u202f"}


def grouped(number: int, language: str = "en") -> str:
    """C{number} with its thousands separated as C{language} writes them: 250,000 in English, 250 000 in French."""
    return f"{number:,}".replace(",", _THOUSANDS.get(language, ","))


def language_of(accept_language: str) -> str:
    """The one of L{LANGUAGES} that C{Accept-Language} prefers (English by default)."""
    best, best_q = "en", -1.0
    for part in accept_language.split(","):
        tag, _, params = part.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        if primary not in LANGUAGES:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > best_q:
            best, best_q = primary, q
    return best


class Text:
    """
    A message template and its parameters, rendered on demand.

    @param template: English text with C{{name}} placeholders; it is also
        the key of the translation catalogs.
    """

    __slots__ = ("template", "params")

    def __init__(self, template: str, **params: Any) -> None:
        self.template = template
        self.params = params

    @classmethod
    def literal(cls, text: str) -> "Text":
        """Text that is shown as it is, in every language."""
        return cls("{text}", text=text)

    def render(self, language: str = "en") -> str:
        template = translations(language).gettext(self.template) if self.template else ""
        values = {
            name: value.render(language) if isinstance(value, Text) else value
            for name, value in self.params.items()
        }
        return template.format(**values)

    def __str__(self) -> str:
        return self.render("en")

    def __repr__(self) -> str:
        return f"Text({self.template!r}, **{self.params!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Text)
            and (self.template, self.params) == (other.template, other.params)
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "template": self.template,
            "params": {
                name: value.to_wire() if isinstance(value, Text) else value
                for name, value in self.params.items()
            },
        }

    @classmethod
    def from_wire(cls, value: Any, fallback: str) -> "Text":
        """
        Rebuild a message a relay sent; anything malformed becomes the
        relay's own English C{fallback}.
        """
        try:
            template = value["template"]
            params = {
                name: cls.from_wire(item, "") if isinstance(item, dict) else item
                for name, item in value["params"].items()
            }
            if not isinstance(template, str):
                raise TypeError(template)
            text = cls(template, **params)
            text.render("en")  # every placeholder must be there
            return text
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            return cls.literal(fallback)


def log_format(line: Text, language: str) -> str:
    """
    The format string of a log line in C{language}: its template, translated.
    Its fields stay the event's own, so that observers and the journal find
    the same keys in every language; a field that is words for a person is
    the caller's to render in C{language}.
    """
    return translations(language).gettext(line.template)


def reason_of(error: BaseException) -> Text:
    """
    What an exception says to a person: the L{Text} it was raised with (a
    C{ValueError(Text(...))}, an L{epop.errors.EpopError}), so that it can
    still be rendered in French; else its English words as they are.
    """
    text = getattr(error, "text", None)
    if isinstance(text, Text):
        return text
    if error.args and isinstance(error.args[0], Text):
        return error.args[0]
    return Text.literal(str(error))


#: The system's most common refusals, in C{os.strerror}'s English words
#: (which Python never translates).
_SYSTEM_REASONS = {
    errno.ENOENT: Text("No such file or directory"),
    errno.EACCES: Text("Permission denied"),
    errno.EPERM: Text("Operation not permitted"),
    errno.EISDIR: Text("Is a directory"),
    errno.ENOTDIR: Text("Not a directory"),
    errno.EADDRINUSE: Text("Address already in use"),
    errno.EADDRNOTAVAIL: Text("Cannot assign requested address"),
    # What stops the journal on a relay that runs for months.
    errno.ENOSPC: Text("No space left on device"),
    errno.EROFS: Text("Read-only file system"),
}


def system_reason(error: OSError) -> Text:
    """Why the system refused, in words that translate; else its own words."""
    known = _SYSTEM_REASONS.get(error.errno) if error.errno is not None else None
    return known if known is not None else Text.literal(error.strerror or str(error))


def unreadable_secret_file(path: str, error: OSError, named: Text, unnamed: Text) -> Text:
    """
    Why a file that holds secrets (a password, the users' hashes) cannot be
    read.  A file that exists but cannot be read is named (C{named}, with
    C{{path}} and C{{why}}); a name that is no file may be the secret itself,
    typed by mistake, so it is not repeated (C{unnamed}, with C{{why}}), but
    the folder a relative name was looked for in is.
    """
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        why = Text(
            "{reason} (a relative name is read from {folder}; the name given is not repeated here, "
            "in case it is a password typed by mistake)",
            reason=system_reason(error),
            folder=os.getcwd(),
        )
        return Text(unnamed.template, why=why)
    return Text(named.template, path=path, why=system_reason(error))
