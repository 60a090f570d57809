"""The API's one timestamp format: UTC, microseconds, `Z` (`2026-11-21T10:00:00.000000Z`).

Fixed width, so timestamps also sort correctly as text (activity order, index row keys).
"""

from __future__ import annotations

from datetime import UTC, datetime

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_FORMAT)


def parse_utc(text: str) -> datetime:
    """A timestamp written by `format_utc` (or any ISO-8601 date-time with a zone) as an aware datetime."""
    return datetime.fromisoformat(text)


def utc_now() -> str:
    return format_utc(datetime.now(UTC))
