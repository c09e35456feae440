"""
JSON for one reader: every L{Text} in a value becomes a string in the
reader's language, at the last moment (the backend's answers and live
events carry messages as L{Text}s, journal records their descriptions as
L{RecordDescription}s).
"""

from __future__ import annotations

import json
from typing import Any

from epop.journal.table import RecordDescription
from epop.messages import Text


def rendered(value: Any, language: str) -> Any:
    """C{value} with every L{Text} (or journal record's description) inside it rendered in C{language}."""
    if isinstance(value, (Text, RecordDescription)):
        return value.render(language)
    if isinstance(value, dict):
        return {key: rendered(item, language) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rendered(item, language) for item in value]
    return value


def json_bytes(value: Any, language: str) -> bytes:
    """C{value} rendered, as compact one-line UTF-8 JSON."""
    return json.dumps(
        rendered(value, language), ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")
