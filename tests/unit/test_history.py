"""The history's query parameters and page tokens, without I/O."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from shared.errors import InvalidRequest
from shared.history import DEFAULT_TOP, MAX_TOKEN_LENGTH, MAX_TOP, HistoryQuery, history_token, parse_history_query
from shared.policy import Caller

A = "22222222-2222-4222-8222-222222222222"
B = "33333333-3333-4333-8333-333333333333"
PARTNER = Caller(A, can_read=True, can_write=True, is_admin=False)
OTHER = Caller(B, can_read=True, can_write=True, is_admin=False)
ADMIN = Caller("11111111-1111-4111-8111-111111111111", can_read=True, can_write=True, is_admin=True)
DATE = "2026-11-21T10:00:00.000000Z"


def encode(content: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(content).encode()).decode().rstrip("=")


def refused(params: list[tuple[str, str]], caller: Caller = PARTNER, referral_id: str = "r1") -> InvalidRequest:
    with pytest.raises(InvalidRequest) as raised:
        parse_history_query(params, caller, referral_id)
    return raised.value


def test_top_defaults_to_100_and_takes_1_to_500() -> None:
    assert parse_history_query([], PARTNER, "r1") == HistoryQuery(DEFAULT_TOP)
    assert parse_history_query([("TOP", "1"), ("code", "key")], PARTNER, "r1").top == 1
    assert parse_history_query([("top", str(MAX_TOP))], PARTNER, "r1").top == MAX_TOP
    for value in ("0", str(MAX_TOP + 1), "", " 5", "5.0", "-1", "١٢", "9" * 5000):
        assert refused([("top", value)]).target == "top", value
    assert refused([("status", "Active")]).target == "status"


def test_a_token_resumes_where_it_was_minted() -> None:
    token = history_token(PARTNER, "r1", 100, DATE)
    assert parse_history_query([("skipToken", token), ("top", "7")], PARTNER, "r1") == HistoryQuery(7, 100, DATE)
    admin_token = history_token(ADMIN, "r1", 3, DATE)
    assert parse_history_query([("skiptoken", admin_token)], ADMIN, "r1").start == 3


def test_a_token_is_bound_to_the_caller_and_the_referral() -> None:
    token = history_token(PARTNER, "r1", 100, DATE)
    assert refused([("skipToken", token)], caller=OTHER).target == "skipToken"
    assert refused([("skipToken", token)], caller=ADMIN).target == "skipToken"
    assert refused([("skipToken", token)], referral_id="r2").target == "skipToken"
    # edited to name the other organization, or the other referral
    for edit in ({"o": B}, {"r": "r2"}):
        forged = encode({"o": A, "r": "r1", "p": 100, "d": DATE} | edit)
        assert refused([("skipToken", forged)]).target == "skipToken"


@pytest.mark.parametrize(
    "content",
    [
        {"o": A, "r": "r1", "p": 0, "d": DATE},
        {"o": A, "r": "r1", "p": -5, "d": DATE},
        {"o": A, "r": "r1", "p": True, "d": DATE},
        {"o": A, "r": "r1", "p": 1.0, "d": DATE},
        {"o": A, "r": "r1", "p": "100", "d": DATE},
        {"o": A, "r": "r1", "p": 100, "d": 5},
        {"o": A, "r": "r1", "p": 100, "d": ""},
        {"o": A, "r": "r1", "p": 100, "d": "x" * 41},
        {"o": A, "r": "r1", "p": 100},
        {"o": A, "r": "r1", "p": 100, "d": DATE, "x": 1},
        [A, "r1", 100, DATE],
        "r1",
    ],
    ids=str,
)
def test_a_token_of_another_shape_is_refused(content: Any) -> None:
    assert refused([("skipToken", encode(content))]).target == "skipToken"


def test_a_token_that_is_not_base64url_json_or_too_long_is_refused() -> None:
    token = history_token(PARTNER, "r1", 100, DATE)
    padded = encode({"o": A, "r": "r1", "p": 100, "d": DATE + " " * MAX_TOKEN_LENGTH})
    for bad in ("", "!!!", token + "=", token + "\n", " " + token, "W1tbW1s", "[" * 5000, padded):
        assert refused([("skipToken", bad)]).target == "skipToken", bad[:20]
    nested = base64.urlsafe_b64encode(b"[" * 3000).decode().rstrip("=")
    assert len(nested) <= MAX_TOKEN_LENGTH
    assert refused([("skipToken", nested)]).target == "skipToken"
