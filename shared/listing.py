"""Listing referrals: query parameters, the per-organization index's keys, and page tokens. Pure.

The index itself (one partition per organization, rows keyed oldest first) is `shared.store`'s; how
its rows are kept in step with the referrals, and why a crash between two writes is harmless, is
explained in `shared.service`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from collections.abc import Iterable
from typing import NamedTuple

from shared.errors import InvalidRequest
from shared.model import REFERRAL_ID_PATTERN, ReferralSource, ReferralStatus
from shared.policy import Caller
from shared.store import ALL_ORGANIZATIONS
from shared.timestamps import format_utc, parse_utc

DEFAULT_TOP = 20
MAX_TOP = 100
# Query parameters a caller may send; `code` is the Functions key, which the host passes along.
_ALLOWED_PARAMETERS = {"status", "referralsource", "updatedsince", "top", "skiptoken", "deltatoken", "code"}
# The shape of an index RowKey (`shared.store.index_row_key`: position, referral id, version): a
# token's position must be one, so an edited token is refused here rather than reaching the query.
_ROW_KEY = re.compile(rf"[0-9]{{17}}:{REFERRAL_ID_PATTERN.pattern.strip('^$')}:[A-Za-z0-9_-]{{1,64}}")
# A token, exactly as `_sign` writes it: unpadded base64url of compact JSON, a dot, and the unpadded
# base64url of its HMAC-SHA256 (32 bytes: 43 characters). openapi.yaml: maxLength 4096.
MAX_TOKEN_LENGTH = 4096
_TOKEN = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]{43})")
# A skipToken continues a run of pages (a full listing, or a delta): where the last page ended (k),
# when the run began (t: the next deltaLink starts from there) and, for a delta, the oldest updatedDate
# it reads (f; "" for a full listing). A deltaToken starts a delta: the moment its link stands for (w).
_PAGE_FIELDS = ("o", "q", "k", "t", "f")
_DELTA_FIELDS = ("o", "q", "w")
_FILTERS = ("status", "referral_source", "updated_since", "top")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")  # `format_utc`'s


class ListQuery(NamedTuple):
    """A listing's filters and page size (what tokens are bound to), and where in a run it is."""

    status: str | None = None
    referral_source: str | None = None
    updated_since: str | None = None  # normalized: UTC, microseconds, Z
    top: int = DEFAULT_TOP
    after_key: str | None = None  # the last row key of the previous page
    started: str | None = None  # when the run's first page was asked for (from a skipToken)
    floor: str | None = None  # a delta's oldest updatedDate (from a skipToken)
    delta_since: str | None = None  # the moment a deltaToken stands for: this request starts a delta
    token: str | None = None  # the token as sent: its signature is checked by `check_token`

    def filters(self) -> ListQuery:
        """The query without its position: what a token is bound to."""
        return ListQuery(self.status, self.referral_source, self.updated_since, self.top)


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
    skip, delta = lowered.get("skiptoken"), lowered.get("deltatoken")
    if skip is not None and delta is not None:
        raise InvalidRequest("Send 'skipToken' or 'deltaToken', not both.", target="deltaToken")
    if skip is not None:
        content = _read(skip, "skipToken", _PAGE_FIELDS, query, caller)
        if not _ROW_KEY.fullmatch(content["k"]):
            raise _invalid("skipToken")
        if content["f"] != "" and not _TIMESTAMP.fullmatch(content["f"]):
            raise _invalid("skipToken")
        return query._replace(after_key=content["k"], started=content["t"], floor=content["f"] or None, token=skip)
    if delta is not None:
        content = _read(delta, "deltaToken", _DELTA_FIELDS, query, caller)
        return query._replace(delta_since=content["w"], token=delta)
    return query


def page_token(query: ListQuery, caller: Caller, key: bytes, last_key: str, started: str, floor: str | None) -> str:
    """The skipToken of the next page of a run (see `_PAGE_FIELDS`), bound to the caller and the
    filters, and signed with `key` (a secret every instance shares, `ReferralStore.page_token_key`):
    a token is only ever one the API minted, so an edited position is refused like an edited query."""
    return _sign(key, {"o": index_owner(caller), "q": _bound(query), "k": last_key, "t": started, "f": floor or ""})


def delta_token(query: ListQuery, caller: Caller, key: bytes, since: str) -> str:
    """The deltaToken of a run's last page: changes from `since` (when the run began) on."""
    return _sign(key, {"o": index_owner(caller), "q": _bound(query), "w": since})


def check_token(query: ListQuery, caller: Caller, key: bytes) -> None:
    """400 unless the query's token carries the signature the API gave it."""
    if query.token is None:
        return
    if query.delta_since is not None:
        expected = delta_token(query, caller, key, query.delta_since)
        name = "deltaToken"
    else:
        expected = page_token(query, caller, key, query.after_key or "", query.started or "", query.floor)
        name = "skipToken"
    if not hmac.compare_digest(expected, query.token):
        raise _invalid(name)


def _sign(key: bytes, content: dict[str, object]) -> str:
    encoded = _b64(json.dumps(content, separators=(",", ":")).encode())
    return f"{encoded}.{_b64(hmac.digest(key, encoded.encode(), 'sha256'))}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _bound(query: ListQuery) -> dict[str, object]:
    return {name: value for name, value in query.filters()._asdict().items() if name in _FILTERS}


def _invalid(name: str) -> InvalidRequest:
    return InvalidRequest(f"The {name} is not valid for this caller and query.", target=name)


def _read(token: str, name: str, fields: tuple[str, ...], query: ListQuery, caller: Caller) -> dict[str, str]:
    """A token's content. Only the exact shape `_sign` writes passes: at most MAX_TOKEN_LENGTH
    characters, canonical encoding, exactly `fields` in order, a timestamp where one belongs, bound
    to this caller and query. The signature needs the key and is checked by the service
    (`check_token`), so a malformed token is refused here without touching storage."""
    invalid = _invalid(name)
    match = _TOKEN.fullmatch(token) if len(token) <= MAX_TOKEN_LENGTH else None
    if match is None:
        raise invalid
    try:
        content = json.loads(base64.urlsafe_b64decode(match[1] + "=" * (-len(match[1]) % 4)))
    except (ValueError, binascii.Error, RecursionError):  # RecursionError: "[[[[..." nested past the limit
        raise invalid from None
    if not isinstance(content, dict) or tuple(content) != fields:
        raise invalid
    text = {field: value for field, value in content.items() if field != "q" and isinstance(value, str)}
    if len(text) != len(fields) - 1 or not _TIMESTAMP.fullmatch(text.get("t", text.get("w", ""))):
        raise invalid
    # Bound to the caller: the partition read is always the caller's own, and a token minted for
    # another organization (or edited to name one) is refused rather than quietly re-scoped.
    if content["o"] != index_owner(caller) or content["q"] != _bound(query):
        raise invalid
    if _b64(json.dumps(content, separators=(",", ":")).encode()) != match[1]:
        raise invalid  # the same content written another way: not a token the API minted
    return text


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
    # Length first: int() of a few thousand digits is refused by Python itself (a 500, not a 400).
    if len(value) > 3 or not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_TOP:
        raise InvalidRequest(f"'top' must be a whole number from 1 to {MAX_TOP}.", target="top")
    return int(value)
