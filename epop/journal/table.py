"""
The journal as people read it: C{epop journal}'s table (client IP, local
date, type, description), with the event types named as the original
manual named them, in the reader's language.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, tzinfo
from dataclasses import dataclass
from typing import Any

from epop.journal.events import described
from epop.journal.reader import record_time
from epop.messages import Text, decimal
from epop.printable import printable

__all__ = [
    "OUTCOME_LABELS",
    "RecordDescription",
    "describe_record",
    "for_readers",
    "duration_text",
    "journal_header",
    "journal_row",
    "journal_table",
    "local_time",
    "outcome_label",
    "table_line",
    "type_name",
]

# Type names as the original manual gives them.

_TYPE_NAMES = {
    "listening-opened": Text("Listening opened"),
    "listening-closed": Text("Listening closed"),
    "connection-opened": Text("Connection opened"),
    "connection-closed": Text("Connection closed"),
    "object-instantiated": Text("Object instantiated"),
    "object-released": Text("Object released"),
    "settings-reloaded": Text("Settings reload"),
}


#: The journal's outcome and reason codes (docs/journal.md, C{outcome} and
#: C{reason}) as a person reads them in a table.  The English label is the
#: code itself, as the journal file and C{--json} keep it.
OUTCOME_LABELS: dict[str, Text] = {
    # outcome
    "completed": Text("completed"),
    "short-body": Text("short-body"),
    "client-disconnected": Text("client-disconnected"),
    "epmsi-unreachable": Text("epmsi-unreachable"),
    "integrity-mismatch": Text("integrity-mismatch"),
    "stalled": Text("stalled"),
    "idle-timeout": Text("idle-timeout"),
    "upload-too-slow": Text("upload-too-slow"),
    "frame-timeout": Text("frame-timeout"),
    "relay-stopping": Text("relay-stopping"),
    "internal-error": Text("internal-error"),
    "unexpected-frame": Text("unexpected-frame"),
    "bad-frame": Text("bad-frame"),
    "frame-too-large": Text("frame-too-large"),
    "aborted": Text("aborted"),
    "refused": Text("refused"),
    "failed": Text("failed"),
    # reason
    "closed-by-client": Text("closed-by-client"),
    "tls-failed": Text("tls-failed"),
    "no-proxy-header": Text("no-proxy-header"),
    "bad-proxy-header": Text("bad-proxy-header"),
    "truncated-frame": Text("truncated-frame"),
    "not-authorized": Text("not-authorized"),
    "tls-required": Text("tls-required"),
    "tls-not-configured": Text("tls-not-configured"),
    "too-many-connections": Text("too-many-connections"),
    "too-many-connections-from-client": Text("too-many-connections-from-client"),
    "too-many-silent-connections": Text("too-many-silent-connections"),
    "closed-by-destination": Text("closed-by-destination"),
    "tunnel-idle": Text("tunnel-idle"),
    "destination-not-allowed": Text("destination-not-allowed"),
    "not-a-tunnel": Text("not-a-tunnel"),
    "http-method-not-allowed": Text("http-method-not-allowed"),
    "served-pac": Text("served-pac"),
    "served-page": Text("served-page"),
    "http-bad-request": Text("http-bad-request"),
    "http-head-too-large": Text("http-head-too-large"),
    "tunnels-disabled": Text("tunnels-disabled"),
    "tunnel-credentials-missing": Text("tunnel-credentials-missing"),
    "tunnel-credentials-wrong": Text("tunnel-credentials-wrong"),
    "tunnel-credentials-unchecked": Text("tunnel-credentials-unchecked"),
    "destination-resolves-locally": Text("destination-resolves-locally"),
    "tunnel-sni-mismatch": Text("tunnel-sni-mismatch"),
    "tunnel-bad-client-hello": Text("tunnel-bad-client-hello"),
    "tunnel-unreachable": Text("tunnel-unreachable"),
    "tunnel-timeout": Text("tunnel-timeout"),
    "hello-timeout": Text("hello-timeout"),
    "too-many-checks": Text("too-many-checks"),
    "unsupported-version": Text("unsupported-version"),
    "bad-request": Text("bad-request"),
    "epmsi-answer-too-large": Text("epmsi-answer-too-large"),
}


def outcome_label(code: object) -> Text:
    """An outcome or reason code as a table shows it; an unknown one as it is."""
    label = OUTCOME_LABELS.get(code) if isinstance(code, str) else None
    return label if label is not None else Text.literal(str(code))


def type_name(event_type: str, language: str) -> str:
    """The event type as the original journal named it (French) or in English."""
    name = _TYPE_NAMES.get(event_type)
    return name.render(language) if name is not None else event_type


def _client_ip(client: Any) -> str:
    """The address part of C{ip:port} or C{[ipv6]:port}; other clients as they are."""
    if not isinstance(client, str):
        return ""
    host, sep, port = client.rpartition(":")
    if sep and port.isdigit() and host:
        return host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return client


def _outcome(record: dict[str, Any]) -> Text:
    outcome = outcome_label(record.get("outcome"))
    if not record.get("error"):
        return outcome
    if record.get("reason") == "tunnel-sni-mismatch":
        # The name is the client's, not the tunnel's destination: say so.
        return Text("{outcome} (asked for {name})", outcome=outcome, name=record["error"])
    return Text("{outcome} ({error})", outcome=outcome, error=record["error"])


def _user(record: dict[str, Any]) -> Text | str:
    """The user an HTTP client named (C{--tunnel-users}), if it named one."""
    user = record.get("user")
    return Text(", user {user}", user=user) if isinstance(user, str) else ""


def _description(record: dict[str, Any], language: str) -> Text:
    kind = record["type"]
    if kind == "listening-opened":
        return Text("Listening on {address} (run {run})", address=record["address"], run=record["run"])
    if kind == "listening-closed":
        return Text("Stopped listening on {address} (run {run})", address=record["address"], run=record["run"])
    if kind == "connection-opened":
        return Text(
            "Connection id: {connection}, from {client}",
            connection=record["connection"],
            client=record["client"],
        )
    if kind == "connection-closed":
        destination = record.get("destination")
        return Text(
            "Connection id: {connection}{user}{destination}, {reason}; {bytes_in} bytes received, "
            "{bytes_out} sent, in {duration}",
            connection=record["connection"],
            user=_user(record),
            destination=Text(", to {destination}", destination=destination) if destination else "",
            reason=outcome_label(record["reason"]),
            bytes_in=record["bytes_in"],
            bytes_out=record["bytes_out"],
            duration=duration_text(record["duration"], language),
        )
    if kind == "object-instantiated":
        if "destination" in record:
            return Text(
                "Instantiated object: {kind} to {destination}{user}",
                kind=record["kind"],
                destination=record["destination"],
                user=_user(record),
            )
        if "method" in record:
            return Text(
                "Instantiated object: {kind} {method} {path} ({length} bytes)",
                kind=record["kind"],
                method=record["method"],
                path=record["path"],
                length=record["length"],
            )
        return Text("Instantiated object: {kind}", kind=record["kind"])
    if kind == "object-released":
        status = (
            Text(", e-PMSI answered {status}", status=record["status"])
            if record.get("status") is not None
            else ""
        )
        if "destination" in record:
            return Text(
                "Released object: {kind} to {destination}{address}: {outcome}, {reason}; "
                "{bytes_in} bytes sent to it, {bytes_out} received, in {duration}",
                kind=record["kind"],
                destination=record["destination"],
                address=(
                    f" ({record['destination_address']})" if record.get("destination_address") else ""
                ),
                outcome=_outcome(record),
                reason=outcome_label(record.get("reason", "")),
                bytes_in=record.get("bytes_in", 0),
                bytes_out=record.get("bytes_out", 0),
                duration=duration_text(record.get("duration", 0), language),
            )
        if "method" in record:
            return Text(
                "Released object: {kind} {method} {path}: {outcome}{status}",
                kind=record["kind"],
                method=record["method"],
                path=record["path"],
                outcome=_outcome(record),
                status=status,
            )
        return Text(
            "Released object: {kind}: {outcome}{status}",
            kind=record["kind"],
            outcome=_outcome(record),
            status=status,
        )
    if kind == "settings-reloaded":
        return described(record)
    raise KeyError(kind)


def describe_record(record: dict[str, Any], language: str) -> str:
    """
    The event in the reader's language, from its fields; the record's own
    (English) C{description} if its fields are not the expected ones.
    """
    try:
        return _description(record, language).render(language)
    except (KeyError, TypeError, ValueError):
        return str(record.get("description", ""))


@dataclass(frozen=True)
class RecordDescription:
    """A record's description, rendered later in each reader's language (L{describe_record})."""

    record: dict[str, Any]

    def render(self, language: str = "en") -> str:
        return describe_record(self.record, language)


def for_readers(record: dict[str, Any]) -> dict[str, Any]:
    """
    C{record} for readers who each see it in their own language (the
    console): its C{description}, and its C{reason} code's label as
    C{reason_text}, rendered when sent; the codes stay as they are.
    """
    shown = {**record, "description": RecordDescription(record)}
    if isinstance(record.get("reason"), str):
        shown["reason_text"] = outcome_label(record["reason"])
    return shown


def duration_text(seconds: float | None, language: str = "en") -> str:
    """Seconds for people: 0.010 s, 12.5 s, 1:02:03 (a decimal comma in French)."""
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{decimal(seconds, 3 if seconds < 1 else 1, language)} s"
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def local_time(when: datetime | None, language: str, tz: tzinfo | None) -> str:
    """C{when} in the local time zone, as the reader's language writes dates; "?" if unknown."""
    if when is None:
        return "?"
    local = when.astimezone(tz)
    return local.strftime("%d/%m/%Y %H:%M:%S" if language == "fr" else "%Y-%m-%d %H:%M:%S")


_IP_WIDTH = 15  # an IPv4 address
_DATE_WIDTH = 19


def _widths(language: str, rows: Iterable[Sequence[str]] = ()) -> list[int]:
    header = _header_cells(language)
    widths = [
        max(_IP_WIDTH, len(header[0])),
        max(_DATE_WIDTH, len(header[1])),
        max(len(header[2]), *(len(name.render(language)) for name in _TYPE_NAMES.values())),
    ]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=False)]
    return widths


def _header_cells(language: str) -> list[str]:
    return [
        Text("Client IP").render(language),
        Text("Date").render(language),
        Text("Type").render(language),
        Text("Description").render(language),
    ]


def table_line(cells: Sequence[str], widths: Sequence[int]) -> str:
    padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=False)]
    return "  ".join([*padded, *cells[len(widths) :]]).rstrip()


def _cells(record: dict[str, Any], language: str, tz: tzinfo | None) -> list[str]:
    # Whatever the journal holds (a PROXY header's junk, a forged file) is
    # shown, never obeyed, by the reader's terminal.
    return [
        printable(_client_ip(record.get("client"))),
        local_time(record_time(record), language, tz),
        printable(type_name(str(record.get("type")), language)),
        printable(describe_record(record, language)),
    ]


def journal_header(language: str) -> list[str]:
    """The header of the journal table, with fixed widths (for C{--follow})."""
    widths = _widths(language)
    return [table_line(_header_cells(language), widths), table_line(["-" * w for w in widths] + ["-" * 11], widths)]


def journal_row(record: dict[str, Any], language: str, tz: tzinfo | None = None) -> str:
    """One event as a row of the fixed-width journal table (for C{--follow})."""
    return table_line(_cells(record, language, tz), _widths(language))


def journal_table(
    records: Iterable[dict[str, Any]], language: str, tz: tzinfo | None = None
) -> list[str]:
    """
    The manual's "Journal d'écoute": client IP, local date, type,
    description, one event a line, under a header.
    """
    rows = [_cells(record, language, tz) for record in records]
    widths = _widths(language, rows)
    lines = [table_line(_header_cells(language), widths), table_line(["-" * w for w in widths] + ["-" * 11], widths)]
    lines.extend(table_line(row, widths) for row in rows)
    return lines
