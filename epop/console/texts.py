"""Every label the console's page shows (placeholder: the page's own list replaces it)."""

from __future__ import annotations

from epop.messages import Text

PAGE_TEXTS: dict[str, Text] = {}


def page_texts(language: str) -> dict[str, str]:
    return {key: text.render(language) for key, text in PAGE_TEXTS.items()}
