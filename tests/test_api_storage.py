"""What storage holds: history beyond one entity, the largest referral, concurrent writers, outages."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableClient

from scripts.azurite import free_port, table_connection_string
from shared.model import Limits
from shared.store import ACTIVITIES_PER_HISTORY_ROW, ReferralStore, to_json, utf16_units
from tests.conftest import PARTNER_A, PARTNER_B, Api, minimal_referral, new_id, reset_process_state
from tests.hardening.conftest import record


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


# ---- Size: the limit holds for any text, on Azurite as on Azure (issue 12, item 1) ------------------


def onboard(monkeypatch: pytest.MonkeyPatch, count: int) -> list[str]:
    """`count` more partner tenants, onboarded for the rest of the test."""
    tenants = [f"{n:08d}-0000-4000-8000-{n:012d}" for n in range(1, count + 1)]
    monkeypatch.setenv("AUTH_ALLOWED_TENANTS", ",".join([PARTNER_A, PARTNER_B, *tenants]))
    reset_process_state()
    return tenants


def cjk(length: int, seed: int) -> str:
    return "".join(chr(0x4E00 + (seed * 7919 + index) % 20_000) for index in range(length))


def test_a_referral_of_non_ascii_text_under_the_limit_keeps_taking_updates_from_everyone(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review's case: 33 organizations with 10 users each whose names are 256 CJK characters
    (about 186,000 UTF-16 units, under the 200,000 limit), then ordinary updates while the activities
    grow. Stored as strings, the SDK sent each CJK character as a 6-byte escape and storage refused
    the entity (500 for everyone, for good); as UTF-8 in binary properties it fits."""
    tenants = onboard(monkeypatch, 33)
    admin = api.admin_token()
    referral_id = new_id()
    created = api.post(referral_id, minimal_referral(participants=[{"organizationId": t} for t in tenants]))
    assert created.status == 201, created.body[:300]
    for start in range(0, len(tenants), 6):  # an admin writes the users: 6 organizations a request (256 KiB)
        entries = [
            {
                "organizationId": tenant,
                "users": [{"firstName": cjk(256, n), "lastName": cjk(256, n + 1)} for n in range(10)],
            }
            for tenant in tenants[start : start + 6]
        ]
        reply = api.post(referral_id, {"participants": entries}, admin)
        assert reply.status == 200, reply.body[:300]
    document = {key: value for key, value in api.get(referral_id).json.items() if key != "activities"}
    units = utf16_units(to_json(document))
    assert 180_000 < units < Limits.REFERRAL_JSON_UNITS
    # Past the point where storage refused it before (about 48 updates), with history moving to rows.
    for number in range(Limits.ACTIVITIES_RETURNED + 20):
        token = api.token() if number % 3 else admin
        reply = api.post(referral_id, {"additionalInformation": f"update {number}"}, token)
        assert reply.status == 200, (number, reply.status, reply.body[:300])
    fetched = api.get(referral_id).json
    assert fetched["participants"] == created.json["participants"][:1] + document["participants"][1:]
    assert len(fetched["activities"]) == Limits.ACTIVITIES_RETURNED
    record(f"size: a {units:,}-unit CJK referral took {Limits.ACTIVITIES_RETURNED + 20} more updates")


def test_a_referral_near_the_limit_in_non_ascii_text_is_stored_and_one_over_it_is_413(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without activities to blame: a referral of CJK text approaching 200,000 units is stored (it
    was 500 before); a change that takes it past the limit is 413 and changes nothing."""
    tenants = onboard(monkeypatch, 40)
    admin = api.admin_token()
    referral_id = new_id()
    assert api.post(referral_id, minimal_referral(participants=[{"organizationId": t} for t in tenants])).status == 201
    users = [{"firstName": cjk(256, n), "lastName": cjk(256, n + 1)} for n in range(10)]
    for tenant in tenants:  # about 5,200 units an organization, until the limit refuses one
        reply = api.post(referral_id, {"participants": [{"organizationId": tenant, "users": users}]}, admin)
        if reply.status == 413:
            break
        assert reply.status == 200, reply.body[:300]
    # Then text, 250 characters at a time, until the limit refuses that too: 413, nothing changed.
    products: list[str] = []
    for number in range(Limits.LIST_ITEMS):
        reply = api.post(referral_id, {"customerRequirements": {"products": [*products, cjk(250, number)]}}, admin)
        if reply.status != 200:
            break
        products.append(cjk(250, number))
    assert reply.status == 413 and reply.error_code == "payloadTooLarge", reply.body[:300]
    stored = api.get(referral_id)
    assert stored.json["customerRequirements"]["products"] == products
    units = utf16_units(to_json({key: value for key, value in stored.json.items() if key != "activities"}))
    assert Limits.REFERRAL_JSON_UNITS - 300 < units <= Limits.REFERRAL_JSON_UNITS, units
    assert api.post(referral_id, {"additionalInformation": "still writable"}).status == 200
    record(f"size: a CJK referral of {units:,} units stored; one more change is 413")


def test_a_write_storage_refuses_as_too_large_is_413_not_500(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    referral_id = new_id()
    assert api.post(referral_id, minimal_referral()).status == 201

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        error = HttpResponseError(message="The entity is larger than the maximum allowed size (1MB).")
        error.status_code, error.error_code = 400, "EntityTooLarge"
        raise error

    monkeypatch.setattr(TableClient, "update_entity", refuse)
    reply = api.post(referral_id, {"additionalInformation": "x"})
    assert reply.status == 413 and reply.error_code == "payloadTooLarge", reply.body


def test_activities_too_large_to_keep_beside_the_referral_move_to_history_early_and_none_is_lost(
    store: ReferralStore,
) -> None:
    """History never makes a write fail: when a referral near its limit and its activities would
    not fit one entity, the oldest activities move to history rows (50 a row) ahead of time."""
    referral_id = new_id()
    document = {
        "id": referral_id,
        "createdDate": "2026-01-01T00:00:00.000000Z",
        "updatedDate": "2026-01-01T00:00:00.000000Z",
        "status": "Pending",
        "referralSource": "P2P",
        "customerProfile": {"name": "C"},
        "additionalInformation": cjk(190_000, 3),  # past any field limit: the store is what is tested
        "participants": [{"id": "p", "organizationId": PARTNER_A, "status": "Accepted"}],
    }

    def activity(number: int) -> dict[str, Any]:
        # 2 KB each, several times what the service writes for an ordinary update (~0.3-1 KB).
        return {"date": f"2026-01-01T00:00:{number // 1000:02d}.{number % 1000:06d}Z", "n": number, "pad": "p" * 2000}

    stored = store.create(referral_id, '"v0"', document, activity(0))
    written = [activity(0)]
    for number in range(1, 160):
        current = store.read(referral_id)
        assert current is not None
        written.append(activity(number))
        shown = current.document()[1]
        store.replace(current, f'"v{number}"', {**document, "updatedDate": written[-1]["date"]}, [*shown, written[-1]])
    current = store.read(referral_id)
    assert current is not None
    assert 0 < len(current.document()[1]) < Limits.ACTIVITIES_RETURNED  # fewer shown: they did not fit
    assert store.history(referral_id) == written
    assert stored.referral_id == referral_id
