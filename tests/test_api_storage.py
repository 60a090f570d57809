"""What storage holds: history beyond one entity, the largest referral, concurrent writers, outages."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from scripts.azurite import free_port, table_connection_string
from shared.model import Limits
from shared.store import ACTIVITIES_PER_HISTORY_ROW, ReferralStore
from tests.conftest import Api, minimal_referral, new_id, reset_process_state


def test_history_beyond_the_newest_100_moves_to_rows_of_its_own_and_is_never_lost(
    api: Api, store: ReferralStore
) -> None:
    referral_id = new_id()
    assert api.post(referral_id, minimal_referral()).status == 201
    changes = 2 * ACTIVITIES_PER_HISTORY_ROW + Limits.ACTIVITIES_RETURNED + 7
    for number in range(changes):
        reply = api.post(referral_id, {"additionalInformation": f"change {number}"})
        assert reply.status == 200, reply.body
    shown = api.get(referral_id).json["activities"]
    assert len(shown) == Limits.ACTIVITIES_RETURNED
    assert shown[-1]["changedProperties"] == ["additionalInformation"]
    history = store.history(referral_id)
    assert len(history) == changes + 1
    assert history[0]["action"] == "Created"
    assert history[-Limits.ACTIVITIES_RETURNED :] == shown
    dates = [activity["date"] for activity in history]
    assert dates == sorted(dates), "oldest first, nothing reordered or duplicated"


def largest_referral() -> dict[str, Any]:
    """Every field at its maximum in characters outside the BMP, until the whole-referral limit binds."""
    emoji = "🚀"  # two UTF-16 code units: the worst case for Table Storage's limits
    short, long = emoji * Limits.SHORT_TEXT, "𝔘" * Limits.LONG_TEXT
    contact = {"firstName": short, "lastName": short, "email": "a.b@example.com", "phoneNumber": "+1 555 0100"}
    return {
        "referralSource": "P2P",
        "customerProfile": {
            "id": short,
            "name": short,
            "address": {
                "addressLine1": short,
                "addressLine2": short,
                "city": short,
                "state": short,
                "postalCode": short,
                "country": "JP",
            },
            "contact": contact,
        },
        "customerRequirements": {
            "industries": [f"{index}{emoji * 200}" for index in range(Limits.LIST_ITEMS)],
            "products": ["東京" * 100] * 40,
            "solutions": long,
            "customerNeed": long,
        },
        "details": {"notes": long, "dealValue": 1e15, "currency": "JPY", "closingDate": "2026-12-31"},
        "additionalInformation": long,
    }


def test_the_largest_valid_referral_round_trips_character_for_character(api: Api) -> None:
    referral_id = new_id()
    document = largest_referral()
    created = api.post(referral_id, document)
    assert created.status == 201, created.body[:300]
    assert len(created.body) > 100_000
    fetched = api.get(referral_id)
    assert fetched.body == created.body
    for name, value in document.items():
        assert fetched.json[name] == value
    # and it keeps taking changes (history grows beside it) without outgrowing its entity
    for number in range(30):
        assert api.post(referral_id, {"details": {"notes": f"{number}" + "𝔘" * 3000}}).status == 200


def test_concurrent_posts_without_if_match_lose_no_update(api: Api, store: ReferralStore) -> None:
    referral_id = new_id()
    assert api.post(referral_id, minimal_referral()).status == 201
    token = api.token()
    writers = 8

    def write(number: int) -> int:
        industries = {"customerRequirements": {"industries": [f"i{number}"]}, "customerProfile": {"id": f"c{number}"}}
        return api.post(referral_id, industries if number % 2 else {"details": {"notes": f"n{number}"}}, token).status

    with ThreadPoolExecutor(writers) as pool:
        statuses = list(pool.map(write, range(writers)))
    assert statuses == [200] * writers
    history = store.history(referral_id)
    assert len(history) == writers + 1, "one activity per effective change"


def test_storage_unreachable_is_503_with_retry_after_within_seconds(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFERRALS_STORAGE", table_connection_string(free_port()))
    reset_process_state()
    started = time.monotonic()
    reply = api.get(new_id())
    assert time.monotonic() - started < 10
    assert reply.status == 503
    assert reply.error_code == "serviceNotAvailable"
    assert int(reply.headers["Retry-After"]) > 0


def test_missing_setting_is_500_naming_it(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REFERRALS_STORAGE")
    reset_process_state()
    reply = api.get(new_id())
    assert reply.status == 500 and reply.error_code == "generalException"
    assert "REFERRALS_STORAGE" in reply.json["error"]["message"]
