"""Referral rows written before bodies moved to binary properties, and before `ActivitiesAt`, stay
readable, listable and writable: the store's fallbacks for them (`_get_text`, `StoredReferral.summary`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.data.tables import TableClient, UpdateMode

from shared.model import Limits
from shared.store import REFERRAL_ROW, ReferralStore, get_store
from tests.conftest import Api, minimal_referral, new_id
from tests.test_api_history import activities_url, every_page, get
from tests.test_api_listing import fresh_table, list_page  # noqa: F401 (fresh_table is a fixture)

# Small parts, so that joining several of them is exercised (the old format used up to 32,000 characters).
LEGACY_PART = 1_000


def table_of(store: ReferralStore) -> TableClient:
    return store._table  # the test writes a row as an older release did


def rewrite_as_legacy(store: ReferralStore, referral_id: str) -> dict[str, Any]:
    """The referral row with its text in string properties of at most LEGACY_PART characters and no
    `ActivitiesAt`, as rows were stored before; returns what it held."""
    table = table_of(store)
    entity = table.get_entity(referral_id, REFERRAL_ROW)
    legacy = {name: value for name, value in entity.items() if not name.startswith(("Body", "Older", "ActivitiesAt"))}
    for prefix in ("Body", "Older"):
        if not entity.get(f"{prefix}Parts"):
            continue
        text = b"".join(entity[f"{prefix}{index}"] for index in range(entity[f"{prefix}Parts"])).decode()
        parts = [text[start : start + LEGACY_PART] for start in range(0, len(text), LEGACY_PART)]
        legacy[f"{prefix}Parts"] = len(parts)
        legacy.update({f"{prefix}{index}": part for index, part in enumerate(parts)})
    table.update_entity(legacy, mode=UpdateMode.REPLACE)
    return legacy


@pytest.fixture
def legacy_referral(api: Api, fresh_table: None) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:  # noqa: F811
    """A referral with a non-ASCII name and more activities than its body shows (so `Older` holds
    some), rewritten in the old format: its id, its GET body, and its whole history, from before."""
    referral_id = new_id()
    assert api.post(referral_id, minimal_referral(customerProfile={"name": "Kōbe 株式会社 🚀"})).status == 201
    for number in range(Limits.ACTIVITIES_RETURNED + 5):
        assert api.post(referral_id, {"additionalInformation": f"call {number}: ünïcode"}).status == 200
    before = api.get(referral_id).json
    history = [activity for page in every_page(api, referral_id, api.token()) for activity in page]
    legacy = rewrite_as_legacy(get_store(), referral_id)
    assert isinstance(legacy["Body0"], str) and legacy["BodyParts"] > 1 and legacy["OlderParts"] >= 1
    assert "ActivitiesAt" not in legacy
    return referral_id, before, history


def test_a_legacy_row_reads_as_before(api: Api, legacy_referral: tuple[str, dict[str, Any], Any]) -> None:
    referral_id, before, history = legacy_referral
    reply = api.get(referral_id)
    assert reply.status == 200 and reply.json == before
    pages = every_page(api, referral_id, api.token())
    assert [activity for page in pages for activity in page] == history
    assert get(api, activities_url(referral_id, top=5), api.token()).json["value"] == history[:5]


def test_a_legacy_row_is_listed_without_its_activities(api: Api, legacy_referral: tuple[str, Any, Any]) -> None:
    referral_id, before, _ = legacy_referral
    reply = list_page(api, top="10")
    assert reply.status == 200, reply.body
    [listed] = [item for item in reply.json["value"] if item["id"] == referral_id]
    assert listed == {name: value for name, value in before.items() if name != "activities"}


def test_a_write_over_a_legacy_row_keeps_everything_and_stores_the_new_format(
    api: Api, legacy_referral: tuple[str, dict[str, Any], list[dict[str, Any]]]
) -> None:
    referral_id, before, history = legacy_referral
    reply = api.post(referral_id, {"status": "Active"})
    assert reply.status == 200, reply.body
    after = api.get(referral_id).json
    assert after["status"] == "Active" and after["customerProfile"] == before["customerProfile"]
    assert after["activities"][:-1] == before["activities"][1:]  # the newest 100: one more, the oldest out
    pages = every_page(api, referral_id, api.token())
    assert [activity for page in pages for activity in page][:-1] == history  # nothing lost or reordered
    entity = table_of(get_store()).get_entity(referral_id, REFERRAL_ROW)
    assert isinstance(entity["Body0"], bytes) and isinstance(entity["ActivitiesAt"], int)
    body = b"".join(entity[f"Body{index}"] for index in range(entity["BodyParts"])).decode()
    assert json.loads(body) == after
