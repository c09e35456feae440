"""
Which journal records to show: C{epop journal}'s C{--connection},
C{--type} and C{--since}, the way the manual's window picked them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from epop.journal.reader import record_time
from epop.messages import Text

__all__ = ["JournalFilter", "parse_connection", "parse_since"]


def parse_connection(text: str) -> tuple[str | None, int]:
    """C{ID} or C{RUN:ID} (RUN may be abbreviated) from C{--connection}."""
    run, sep, number = text.strip().rpartition(":")
    if not number.isdigit() or (sep and not run):
        raise ValueError(Text("--connection {text}: expected a connection number, or RUN:NUMBER", text=text))
    return (run.lower() if sep else None), int(number)


_DURATION = re.compile(r"(\d+)\s*([smhdj])", re.IGNORECASE)
#: Days are C{d}, or C{j} (jours) as a French reader writes them.
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "j": "days"}
#: The days named in words, in English and French (with a typed or a typographic apostrophe).
_DAYS_BACK = {"today": 0, "aujourd'hui": 0, "yesterday": 1, "hier": 1}


def parse_since(text: str, now: float, tz: tzinfo | None = None) -> datetime:
    """
    The start of C{--since}: an ISO date or time (local time unless it says
    otherwise), C{today} or C{aujourd'hui}, C{yesterday} or C{hier}, or a
    duration back from C{now} such as C{30m}, C{1h}, C{2d} (or C{2j}).

    @param tz: the local time zone; the system's by default.
    """
    try:
        return _since(text.strip(), now, tz)
    except OverflowError:
        raise ValueError(Text("--since {text}: too far back for a date", text=text)) from None
    except ValueError:
        raise ValueError(
            Text("--since {text}: expected a date or time (2026-11-25, 2026-11-25T08:30), "
                 "today, yesterday, or a duration such as 30m, 1h, 2d", text=text)
        ) from None


def _since(value: str, now: float, tz: tzinfo | None) -> datetime:
    """L{parse_since}'s reading; dates past what datetime holds raise L{OverflowError}."""
    local_now = datetime.fromtimestamp(now, tz=timezone.utc).astimezone(tz)
    days_back = _DAYS_BACK.get(value.lower().replace("\u2019", "'"))
    if days_back is not None:
        midnight = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight - timedelta(days=days_back)
    match = _DURATION.fullmatch(value)
    if match:
        delta = timedelta(**{_UNITS[match[2].lower()]: int(match[1])})
        return datetime.fromtimestamp(now, tz=timezone.utc) - delta
    when = datetime.fromisoformat(value)
    if when.tzinfo is None:
        try:
            when = when.replace(tzinfo=tz) if tz is not None else when.astimezone()
        except ValueError:  # the local time of year 1 falls in year 0
            raise OverflowError(value) from None
    # Compared with UTC times later: make sure that works for this one.
    when.astimezone(timezone.utc)
    return when


@dataclass(frozen=True)
class JournalFilter:
    """
    Which events to show: those of some connections (the manual's
    multi-selection), of some types, from some time on.  Empty means all.
    """

    connections: Sequence[tuple[str | None, int]] = ()
    types: Sequence[str] = ()
    since: datetime | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        if self.types and record.get("type") not in self.types:
            return False
        if self.since is not None:
            when = record_time(record)
            if when is None or when < self.since:
                return False
        if self.connections:
            number = record.get("connection")
            run = str(record.get("run", ""))
            if not any(
                number == wanted and (prefix is None or run.startswith(prefix))
                for prefix, wanted in self.connections
            ):
                return False
        return True
