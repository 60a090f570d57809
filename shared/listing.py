"""Listing referrals: query parameters, the per-organization index's keys, and page tokens. Pure.

The index itself (one partition per organization, rows keyed newest first) is `shared.store`'s; how
its rows are kept in step with the referrals, and why a crash between two writes is harmless, is
explained in `shared.service`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from shared.errors import InvalidRequest
from shared.model import REFERRAL_ID_PATTERN, ReferralSource, ReferralStatus
from shared.policy import Caller
from shared.timestamps import format_utc, parse_utc

DEFAULT_TOP = 20
MAX_TOP = 100
# Query parameters a caller may send; `code` is the Functions key, which the host passes along.
_ALLOWED_PARAMETERS = {"status", "referralsource", "updatedsince", "top", "skiptoken", "code"}
ALL_ORGANIZATIONS = "all"
# The shape of an index RowKey (`shared.store.index_row_key`: position, referral id, version): a
# token's position must be one, so an edited token is refused here rather than reaching the query.
_ROW_KEY = re.compile(rf"[0-9]{{17}}:{REFERRAL_ID_PATTERN.pattern.strip('^$')}:[A-Za-z0-9_-]{{1,64}}")


@dataclass(frozen=True)
class ListQuery:
    status: str | None = None
    referral_source: str | None = None
    updated_since: str | None = None  # normalized: UTC, microseconds, Z
    top: int = DEFAULT_TOP
    after_key: str | None = None  # the last row key of the previous page


def index_owner(caller: Caller) -> str:
    """Whose index a caller lists: its own organization's, or every referral's for an admin."""
    return ALL_ORGANIZATIONS if caller.is_admin else caller.organization_id


def parse_list_query(params: Iterable[tuple[str, str]], caller: Caller) -> ListQuery:
    """The listing's query from the parameters as sent (`Call.query_parameters`: no name twice).
    Names match case-insensitively; an unknown name, or an empty or invalid value, is 400."""
    lowered: dict[str, str] = {}
    for name, value in params:
        if name.lower() not in _ALLOWED_PARAMETERS:
            raise InvalidRequest(f"Unknown query parameter '{name}'.", target=name)
        lowered[name.lower()] = value
    query = ListQuery(
        status=_enum_name(lowered.get("status"), ReferralStatus, "status"),
        referral_source=_enum_name(lowered.get("referralsource"), ReferralSource, "referralSource"),
        updated_since=_timestamp(lowered.get("updatedsince")),
        top=_top(lowered.get("top")),
    )
    token = lowered.get("skiptoken")
    if token is None:
        return query
    return _resume(query, token, caller)


def page_token(query: ListQuery, caller: Caller, last_key: str) -> str:
    """An opaque continuation: the position, bound to the caller and to the query it continues."""
    content = {"o": index_owner(caller), "q": asdict(query) | {"after_key": None}, "k": last_key}
    return base64.urlsafe_b64encode(json.dumps(content, separators=(",", ":")).encode()).decode().rstrip("=")


def _resume(query: ListQuery, token: str, caller: Caller) -> ListQuery:
    invalid = InvalidRequest("The skipToken is not valid for this caller and query.", target="skipToken")
    try:
        content = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error, RecursionError):  # RecursionError: "[[[[..." nested past the limit
        raise invalid from None
    if not isinstance(content, dict) or not isinstance(content.get("k"), str) or not _ROW_KEY.fullmatch(content["k"]):
        raise invalid
    # Bound to the caller: the partition read is always the caller's own, and a token minted for
    # another organization (or edited to name one) is refused rather than quietly re-scoped.
    if content.get("o") != index_owner(caller) or content.get("q") != asdict(query) | {"after_key": None}:
        raise invalid
    return ListQuery(query.status, query.referral_source, query.updated_since, query.top, content["k"])


def _enum_name(value: str | None, enum_type: type[ReferralStatus] | type[ReferralSource], name: str) -> str | None:
    if value is None:
        return None
    for member in enum_type:
        if member.value.lower() == value.lower():
            return member.value
    names = ", ".join(member.value for member in enum_type)
    raise InvalidRequest(f"'{name}' must be one of {names}.", target=name)


def _timestamp(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        # A "+" of an offset arrives as a space when the caller did not encode it.
        moment = parse_utc(value.replace(" ", "+"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or not 1970 <= moment.year < 5000:
        raise InvalidRequest(
            "'updatedSince' must be an ISO-8601 date-time with a time zone, such as 2026-01-01T00:00:00Z.",
            target="updatedSince",
        )
    return format_utc(moment)


def _top(value: str | None) -> int:
    if value is None:
        return DEFAULT_TOP
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_TOP:
        raise InvalidRequest(f"'top' must be a whole number from 1 to {MAX_TOP}.", target="top")
    return int(value)
