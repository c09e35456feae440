"""
The relay's journal events and the record each one becomes.

The relay logs its events with L{twisted.logger} like any other message
(L{emit}); L{journal_record} turns one into a journal line.  Only the
fields named in L{RECORD_FIELDS} are ever copied, so bodies, form fields,
credentials and query strings cannot leak into the file whatever an event
carries.  Every field is documented in ``docs/journal.md``.
"""

from __future__ import annotations

import string
from datetime import datetime, timezone
from typing import Any

from twisted.logger import LogLevel, formatEvent

from epop.messages import Text, log_format
from epop.printable import printable

__all__ = [
    "EVENT_TYPES",
    "RECORD_FIELDS",
    "emit",
    "journal_record",
    "printable_format",
    "strip_query",
    "described",
]

EVENT_TYPES = (
    "listening-opened",
    "listening-closed",
    "connection-opened",
    "connection-closed",
    "object-instantiated",
    "object-released",
    "settings-reloaded",
)

#: Event keys copied into a record, beyond time, type and description.
RECORD_FIELDS = (
    "connection",
    "client",
    "user",
    "address",
    "port",
    "host",
    "pid",
    "process_start",
    "kind",
    "method",
    "path",
    "length",
    "integrity",
    "status",
    "outcome",
    "error",
    "epmsi_address",
    "duration",
    "bytes_in",
    "bytes_out",
    "reason",
    "destination",
    "destination_address",
    "allow",
    "description_text",
)


def strip_query(path: str) -> str:
    """
    The path without what may carry a password or a session: the query
    string and fragment (from the first C{?} or C{#}) and each segment's
    parameters (from a C{;} to the segment's end, as in
    C{/a;x=1/b;jsessionid=2}, which becomes C{/a/b}).
    """
    path = path.split("?", 1)[0].split("#", 1)[0]
    return "/".join(segment.split(";", 1)[0] for segment in path.split("/"))


def journal_record(
    event: dict[str, Any], at: float, process: dict[str, Any] | None = None
) -> dict[str, Any]:
    """
    Build the journal line for one relay event.

    @param at: when it happened, in seconds since the epoch, from the clock
        that times the relay (so that its C{time} and the C{duration}s it
        holds are read on the same clock).
    @param process: the relay process's C{host}, C{pid} and C{process_start}
        (L{epop.journal.process.process_fields}), added to C{listening-opened}
        so that a reader can tell when the relay is gone.
    """
    when = datetime.fromtimestamp(at, tz=timezone.utc)
    record: dict[str, Any] = {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "type": event["epop_event"],
        "run": event["epop_relay"],
    }
    if process and event["epop_event"] == "listening-opened":
        event = {**event, **process}
    for key in RECORD_FIELDS:
        if key in event:
            record[key] = event[key]
    if isinstance(record.get("path"), str):
        record["path"] = strip_query(record["path"])
    # emit() made the text printable already; an event logged some other
    # way gets the same treatment here.
    record["description"] = printable(event.get("epop_description") or formatEvent(event))
    return record


_FORMATTER = string.Formatter()
_PLAIN = (bool, int, float, type(None))


def printable_format(format: str, fields: dict[str, Any]) -> tuple[str, list[str]]:
    """
    C{format} rewritten so that each field whose value is text (or any
    other object but a number) is read from a list of printable copies, as
    C{{epop_shown[N]}}; numbers keep their own fields.  The event keeps the
    exact values for the journal's fields, and whatever formats it (the
    twistd log, the journal's C{description}) gets only printable text.
    """
    parts: list[str] = []
    shown: list[str] = []
    for literal, name, spec, conversion in _FORMATTER.parse(format):
        parts.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is None:
            continue
        try:
            value, _ = _FORMATTER.get_field(name, (), fields)
        except (KeyError, AttributeError, IndexError, TypeError):
            value = None  # Twisted says it cannot format the event
            plain = True
        else:
            plain = isinstance(value, _PLAIN) and conversion is None
        if plain:
            parts.append(
                "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            )
        else:
            text = _FORMATTER.format_field(_FORMATTER.convert_field(value, conversion), spec or "")
            parts.append(f"{{epop_shown[{len(shown)}]}}")
            shown.append(printable(text))
    return "".join(parts), shown


def _printable_text(text: Text) -> Text:
    """C{text} with every parameter that is not a number made printable."""
    return Text(
        text.template,
        **{
            name: _printable_text(value)
            if isinstance(value, Text)
            else value
            if isinstance(value, _PLAIN)
            else printable(str(value))
            for name, value in text.params.items()
        },
    )


def described(record: dict[str, Any]) -> Text:
    """
    The description of a record that keeps it as a template and its
    parameters (C{description_text}), to show in the reader's language.

    @raise KeyError: the record has none (its C{description} is English only).
    """
    return _printable_text(Text.from_wire(record["description_text"], str(record.get("description", ""))))


def emit(
    log: Any,
    relay_id: str,
    event_type: str,
    format: str | Text,
    *,
    level: LogLevel = LogLevel.info,
    language: str = "en",
    shown_as: dict[str, str] | None = None,
    **fields: Any,
) -> None:
    """
    Log one journal event; the text also reaches the ordinary twistd log.
    Its values may come from the workstation (a PROXY header, a path): the
    text shows them through L{printable_format}.

    A L{Text} C{format} is journaled in English as C{description}, and as
    C{description_text} too, so that a reader can show it in French
    (L{described}); its parameters are also the event's fields.  In
    another C{language}, only the twistd log's line is translated (C{format}
    is a template of the catalog): the journal keeps its English
    C{description}.

    @param shown_as: in another C{language}, what the twistd log's line
        shows for some fields instead of their values (a reason code's
        label in that language); the event's fields, and the journal's,
        keep the values.
    """
    assert event_type in EVENT_TYPES, event_type
    if isinstance(format, Text):
        fields = {**format.params, **fields, "description_text": _printable_text(format).to_wire()}
        format = format.template
    english: str | None = None
    if language != "en":
        english, format = format, log_format(Text(format), language)
    if isinstance(fields.get("path"), str):
        # Cut here too, so that neither the twistd log nor the journal can
        # get what the caller forgot to cut.
        fields["path"] = strip_query(fields["path"])
    if english is not None:
        english_format, english_shown = printable_format(english, fields)
        fields["epop_description"] = formatEvent({**fields, "log_format": english_format, "epop_shown": english_shown})
        # The line in the language: its parameters that are texts in it too.
        in_language = {name: value.render(language) for name, value in fields.items() if isinstance(value, Text)}
        shown_format, shown = printable_format(format, {**fields, **in_language, **(shown_as or {})})
    else:
        shown_format, shown = printable_format(format, fields)
    log.emit(
        level,
        shown_format,
        epop_event=event_type,
        epop_relay=relay_id,
        epop_shown=shown,
        **fields,
    )
