"""
No English-only message for a person is left in the modules that speak to
one: every error and every line written for a person is a Text, so that it
can be told in French.  (That every Text has its French is
tests.test_messages' check.)
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parent.parent / "epop"

#: Modules whose plain-string errors never reach a person as they are, and
#: why.  Every other module of the package is scanned, so a new module is
#: checked from its first line.
NOT_FOR_PEOPLE = {
    # Frames between epop's own client and relay: a person meets these only
    # if a program other than epop speaks the protocol; the code (bad-frame,
    # unexpected-frame, bad-request) is what the journal and docs/protocol.md give.
    "wire.py": "protocol errors between programs",
    "relay/protocol.py": "protocol errors between programs",
    "relay/states.py": "protocol errors between programs",
    "relay/request_rules.py": "protocol errors between programs",
    "relay/operations.py": "the outcome code is journaled; the workstation is gone",
    "workstation/states.py": "protocol errors between programs",
    # Python API misuse: the console and the command line check what a
    # person gives before these are called.
    "journal/pages.py": "cursor and page size come from the console's own page",
    "relay/limits.py": "checked with its words by relay/settings.py first",
    "relay/saved_settings.py": "keys and values come from the console's checked settings",
    "settings_update.py": "keys and values come from the callers' checked settings",
    "sandbox/ca.py": "host names come from the sandbox's own defaults",
}

#: The modules scanned: every module of the package but those above.
SCANNED = tuple(
    sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if str(path.relative_to(PACKAGE)) not in NOT_FOR_PEOPLE
    )
)

#: Errors whose first argument is a message for a person.
_MESSAGE_FIRST = re.compile(r"(Usage|Settings|Value|ValueLine|ProxyAccount)Error|Refused|ReloadRefused|RelayCannotStart")
#: Errors whose first argument is a stable code (or the setting, or the
#: endpoint, it is about) and the second the message.
_CODE_FIRST = {
    "EpopError",
    "ProtocolError",
    "RelayError",
    "UpstreamError",
    "RelaySettingsError",
    "ListenError",
    "_refuse",
}
#: Calls that write their argument for a person to read.
_OUTPUT = {"write", "say", "tell", "complain", "_unresolved"}
#: A Logger's levels whose lines a person reads in twistd's log: their
#: first argument is a format string, whose fields are not words.
_LOG_LEVELS = {"info", "warn", "error", "critical"}


def _is_log_call(func: ast.expr) -> bool:
    """C{log.info(...)}, C{self.log.warn(...)}, C{_log.error(...)}, C{site.logger.warn(...)}: a Logger's, not another object's."""
    return (
        isinstance(func, ast.Attribute)
        and func.attr in _LOG_LEVELS
        and _name(func.value).lower().lstrip("_").endswith(("log", "logger"))
    )


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _words(node: ast.expr) -> str:
    """The literal text of a string expression (f-strings: their fixed parts)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_words(part) for part in node.values if isinstance(part, ast.Constant))
    if isinstance(node, ast.BinOp):
        return _words(node.left) + _words(node.right)
    return ""


def _is_plain(node: ast.expr, *, error: bool, format: bool = False) -> bool:
    """
    Whether C{node} is English for a person rather than a Text: a literal
    or f-string with words in it (C{"epop: {x}"} and punctuation are
    layout), or, for an error, C{str(...)} of something.  In a log's
    C{format}, C{{field}} names are layout too (C{"{text}"}).
    """
    if error and isinstance(node, ast.Call) and _name(node.func) in ("str", "format"):
        return True
    text = _words(node).replace("epop", "")
    if format:
        text = re.sub(r"\{[^{}]*\}", "", text)
    return any(c.isalpha() for c in text)


def plain_log_formats(source: str) -> list[str]:
    """The format string of each log line in C{source} that is English for a person, not a Text's."""
    return [
        ast.literal_eval(node.args[0]) if isinstance(node.args[0], ast.Constant) else ast.unparse(node.args[0])
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and _is_log_call(node.func)
        and node.args
        and _is_plain(node.args[0], error=False, format=True)
    ]


def plain_messages(source: str) -> list[tuple[int, str]]:
    """Each call in C{source} that gives a person a plain string (but a log line): its line and call."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        if name in _CODE_FIRST:
            message, error = node.args[1:2], True
        elif _MESSAGE_FIRST.fullmatch(name):
            message, error = node.args[:1], True
        elif name in _OUTPUT:
            message, error = node.args[-1:], False
        else:
            continue
        if message and _is_plain(message[0], error=error):
            found.append((node.lineno, ast.unparse(node)[:100]))
    return found


class SourceTests(SynchronousTestCase):
    def test_no_plain_message(self) -> None:
        """No error nor line for a person in the scanned modules is a plain (English-only) string."""
        plain = [
            f"epop/{name}:{line}: {call}"
            for name in SCANNED
            for line, call in plain_messages((PACKAGE / name).read_text(encoding="utf-8"))
        ]
        self.assertEqual(plain, [], "make these Text(...) and translate them in epop.po")

    def test_no_plain_log_line(self) -> None:
        """
        Each info, warning, error or critical line a Logger logs in the
        scanned modules is a Text's template in the relay's language
        (C{log_format(Text(...), language)}) or layout (C{"{text}"}).
        """
        plain = sorted(
            (name, format)
            for name in SCANNED
            for format in plain_log_formats((PACKAGE / name).read_text(encoding="utf-8"))
        )
        self.assertEqual(plain, [], "log log_format(Text(...), language): the relay's language")

    def test_finds_plain_log_lines(self) -> None:
        """The scan catches a Logger's plain lines, and lets translated templates, layout and other calls pass."""
        source = (
            'self.log.info("Console: open {url} in a browser", url=url)\n'
            'log.warn(f"Could not delete {path}")\n'
            '_log.error("Journal {path} moved", path=path)\n'
            'self._site.logger.warn("Upload abandoned", received=1)\n'
            'self.log.critical("journal: cannot write to {path}", path=path)\n'
            'self.log.info(log_format(Text("Console: open {url} in a browser"), language), url=url)\n'
            'log.info("{text}", text=Text("Made {path}", path=path).render(language))\n'
            'log.info("{problem}: {path}", problem=problem, path=path)\n'
            'self.log.failure("A watcher of the relay failed")\n'
            'parser.error("not a log")\n'
        )
        self.assertEqual(
            plain_log_formats(source),
            [
                "Console: open {url} in a browser",
                "f'Could not delete {path}'",
                "Journal {path} moved",
                "Upload abandoned",
                "journal: cannot write to {path}",
            ],
        )

    def test_exemptions_exist(self) -> None:
        """Each module left out of the scan exists, so the list cannot outlive its reasons."""
        self.assertEqual([name for name in NOT_FOR_PEOPLE if not (PACKAGE / name).is_file()], [])

    def test_finds_plain_messages(self) -> None:
        """The scan catches each kind of plain message, and lets Texts and layout pass."""
        source = (
            'raise usage.UsageError(f"{path}: no such file")\n'
            'raise usage.UsageError(str(e))\n'
            'raise SettingsError("unknown setting " + key)\n'
            'raise EpopError("bad-settings", f"cannot read {path}")\n'
            'command.tell(f"Saved in {path}.")\n'
            'stderr.write("epop: unexpected error\\n")\n'
            'raise usage.UsageError(Text("{path}: no such file", path=path))\n'
            'raise EpopError("bad-settings", reason_of(e))\n'
            'command.tell(Text("Saved in {path}.", path=path))\n'
            'stderr.write(f"epop: {reason}\\n")\n'
            'command.say(f"{key} = {value}")\n'
        )
        self.assertEqual([line for line, _ in plain_messages(source)], [1, 2, 3, 4, 5, 6])
