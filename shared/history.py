"""A referral's whole history, a page at a time: query parameters and page tokens. Pure.

Activities are numbered from 0 (the Created one), oldest first. History only grows, so a number
names the same activity for good, whatever is appended or archived after it (`shared.store` keeps
archived activities in rows of a fixed size, so activity n is found without reading those before).
A page token carries the number the next page starts at and the date of the activity just before
it (activity dates of one referral strictly increase, see `shared.service._stamp_after`), and is
bound to the caller and to the referral: a token of another caller or referral, or one whose
position does not name the activity it recorded, is 400.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from typing import Any, NamedTuple

from shared.errors import InvalidRequest
from shared.listing import index_owner
from shared.policy import Caller

DEFAULT_TOP = 100
MAX_TOP = 500
MAX_TOKEN_LENGTH = 4096  # openapi.yaml's maxLength for skipToken
# Query parameters a caller may send; `code` is the Functions key, which the host passes along.
_ALLOWED_PARAMETERS = {"top", "skiptoken", "code"}
_TOKEN_TEXT = re.compile(r"[A-Za-z0-9_-]+")  # unpadded base64url, as `history_token` writes it
_TOKEN_FIELDS = {"o", "r", "p", "d"}
_MAX_DATE_LENGTH = 40  # `Timestamp`'s maxLength


# A NamedTuple, not a dataclass: see `shared/__init__.py`.
class HistoryQuery(NamedTuple):
    top: int = DEFAULT_TOP
    start: int = 0  # the number of the page's first activity
    previous_date: str | None = None  # resuming: the date of activity `start - 1`, as the token recorded it


def parse_history_query(params: Iterable[tuple[str, str]], caller: Caller, referral_id: str) -> HistoryQuery:
    """The query from the parameters as sent (`Call.query_parameters`: no name twice). Names match
    case-insensitively; an unknown name, or an invalid value, is 400."""
    lowered: dict[str, str] = {}
    for name, value in params:
        if name.lower() not in _ALLOWED_PARAMETERS:
            raise InvalidRequest(f"Unknown query parameter '{name}'.", target=name)
        lowered[name.lower()] = value
    top = _top(lowered.get("top"))
    token = lowered.get("skiptoken")
    if token is None:
        return HistoryQuery(top)
    start, previous_date = _resume(token, caller, referral_id)
    return HistoryQuery(top, start, previous_date)


def history_token(caller: Caller, referral_id: str, start: int, previous_date: str) -> str:
    """An opaque continuation: where the next page starts, bound to the caller and the referral."""
    content = {"o": index_owner(caller), "r": referral_id, "p": start, "d": previous_date}
    return base64.urlsafe_b64encode(json.dumps(content, separators=(",", ":")).encode()).decode().rstrip("=")


def invalid_token() -> InvalidRequest:
    return InvalidRequest("The skipToken is not valid for this caller and referral.", target="skipToken")


def _resume(token: str, caller: Caller, referral_id: str) -> tuple[int, str]:
    if len(token) > MAX_TOKEN_LENGTH or not _TOKEN_TEXT.fullmatch(token):
        raise invalid_token()
    try:
        content: Any = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error, RecursionError):  # RecursionError: "[[[[..." nested past the limit
        raise invalid_token() from None
    if not isinstance(content, dict) or set(content) != _TOKEN_FIELDS:
        raise invalid_token()
    start, previous_date = content["p"], content["d"]
    # Bound to the caller and the referral: a token minted for another organization or referral
    # (or edited to name one) is refused rather than quietly re-scoped.
    if content["o"] != index_owner(caller) or content["r"] != referral_id:
        raise invalid_token()
    if type(start) is not int or start < 1 or not isinstance(previous_date, str):
        raise invalid_token()
    if not 0 < len(previous_date) <= _MAX_DATE_LENGTH:
        raise invalid_token()
    return start, previous_date


def _top(value: str | None) -> int:
    if value is None:
        return DEFAULT_TOP
    # The length first: int() refuses strings of over 4,300 digits with a ValueError.
    digits = value.isascii() and value.isdigit() and len(value) <= len(str(MAX_TOP))
    if not digits or not 1 <= int(value) <= MAX_TOP:
        raise InvalidRequest(f"'top' must be a whole number from 1 to {MAX_TOP}.", target="top")
    return int(value)
