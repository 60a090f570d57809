"""Delta links, lighter pages and the admins' sharded index (issue 13, sections 3-5).

The last page of every listing carries a deltaLink; following the chain of delta links never misses
a successful write, even with writers whose clocks lag and whose commits are slow, as far as the
design allows (`shared.service.DELTA_MARGIN`).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from shared import budget, service
from shared.store import ALL_SHARDS, ReferralStore, get_store, index_partitions
from shared.timestamps import format_utc, parse_utc
from tests.conftest import PARTNER_A, PARTNER_B, Api, minimal_referral, new_id, reset_process_state
from tests.test_api_listing import follow, ids, list_page


@pytest.fixture
def fresh_table(api_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFERRALS_TABLE", f"Delta{uuid.uuid4().hex[:12]}")
    reset_process_state()


def create(api: Api, token: str | None = None, **extra: Any) -> str:
    referral_id = new_id()
    reply = api.post(referral_id, minimal_referral(**extra), token)
    assert reply.status == 201, reply.body
    return referral_id


def run(api: Api, link: str, token: str | None = None) -> tuple[list[list[dict[str, Any]]], str]:
    """The pages of one run (a listing or a delta), following nextLink, and its deltaLink."""
    pages: list[list[dict[str, Any]]] = []
    for _ in range(200):
        reply = follow(api, link, token)
        assert reply.status == 200, reply.body
        pages.append(reply.json["value"])
        if "nextLink" in reply.json:
            assert "deltaLink" not in reply.json
            link = reply.json["nextLink"]
            continue
        return pages, reply.json["deltaLink"]
    raise AssertionError("a run did not end within 200 pages")


def first_link(**params: str) -> str:
    query = "&".join(f"{name}={value}" for name, value in params.items())
    return f"http://localhost:7071/api/v1/referrals?{query}"


def test_the_last_page_of_a_listing_carries_a_delta_link_with_the_same_filters(api: Api, fresh_table: None) -> None:
    create(api)
    reply = list_page(api, status="Pending", top="5")
    link = reply.json["deltaLink"]
    assert "nextLink" not in reply.json
    assert link.startswith("http://localhost:7071/api/v1/referrals?")
    params = dict(parse_qsl(urlsplit(link).query))
    assert params["status"] == "Pending" and params["top"] == "5" and "deltaToken" in params
    assert "skipToken" not in params


def test_a_delta_shows_what_changed_since_its_link_in_its_current_state(
    api: Api, fresh_table: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "DELTA_MARGIN", timedelta(0))  # no read-back: exactly what changed
    unchanged, changed = create(api), create(api)
    _, delta = run(api, first_link(top="10"))
    assert api.post(changed, {"status": "Active"}).status == 200
    added = create(api)
    pages, next_delta = run(api, delta)
    items = [item for page in pages for item in page]
    assert [item["id"] for item in items] == [changed, added]
    assert items[0]["status"] == "Active" and "activities" not in items[0]
    assert unchanged not in {item["id"] for item in items}
    # Nothing changed since: an empty page, and a link to go on from.
    pages, _ = run(api, next_delta)
    assert pages == [[]]


def test_a_delta_keeps_the_filters_and_the_callers_visibility(
    api: Api, fresh_table: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "DELTA_MARGIN", timedelta(0))
    _, delta = run(api, first_link(status="Active"))
    _, delta_b = run(api, first_link(), api.token(PARTNER_B))
    active, other = create(api), create(api)
    assert api.post(active, {"status": "Active"}).status == 200
    assert api.post(other, {"additionalInformation": "still Pending"}).status == 200
    pages, _ = run(api, delta)
    assert [item["id"] for page in pages for item in page] == [active]
    pages, _ = run(api, delta_b, api.token(PARTNER_B))
    assert pages == [[]]  # B participates in neither


def test_delta_tokens_are_bound_to_the_caller_and_filters_and_refuse_edits(api: Api, fresh_table: None) -> None:
    create(api)
    link = list_page(api, top="3").json["deltaLink"]
    params = dict(parse_qsl(urlsplit(link).query))
    token, signature = params["deltaToken"].split(".")
    content = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))

    def edited(**change: Any) -> str:
        raw = json.dumps({**content, **change}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=") + "." + signature

    cases = {
        "another caller": (api.token(PARTNER_B), params),
        "other filters": (None, {**params, "status": "Won"}),
        "another top": (None, {**params, "top": "4"}),
        "an edited moment": (None, {**params, "deltaToken": edited(w="2020-01-01T00:00:00.000000Z")}),
        "another organization": (None, {**params, "deltaToken": edited(o=PARTNER_B)}),
        "a page token's shape": (None, {**params, "deltaToken": edited(k="", t=content["w"], f="")}),
        "as a skipToken": (None, {**{k: v for k, v in params.items() if k != "deltaToken"}, "skipToken": token}),
        "both tokens": (None, {**params, "skipToken": params["deltaToken"]}),
        "too long": (None, {**params, "deltaToken": params["deltaToken"] + "A" * 4096}),
    }
    for name, (caller, query) in cases.items():
        reply = list_page(api, caller, **query)
        assert reply.status == 400 and reply.error_code == "invalidRequest", name
    assert list_page(api, **params).status == 200


def test_an_expired_delta_link_is_410_with_its_own_code(
    api: Api, fresh_table: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(api)
    link = list_page(api).json["deltaLink"]
    assert follow(api, link).status == 200
    monkeypatch.setattr(service, "DELTA_LINK_LIFETIME", timedelta(0))
    time.sleep(0.01)
    reply = follow(api, link)
    assert reply.status == 410 and reply.error_code == "deltaLinkExpired", reply.body
    assert reply.json["error"]["target"] == "deltaToken"


def test_a_page_ends_early_rather_than_exceed_4_mib(api: Api, fresh_table: None) -> None:
    # 60 referrals of about 76,000 characters (three full lists of 100 items of 250): 4.6 MB in all,
    # more than one page may hold, though top allows all 60.
    def big(number: int) -> dict[str, Any]:
        items = [f"{number:03d}-{item:03d}-" + "x" * 242 for item in range(100)]
        return {"products": items, "services": items, "industries": items}

    created = [create(api, customerRequirements=big(n)) for n in range(60)]
    link: str | None = first_link(top="100")
    seen: list[str] = []
    sizes = []
    while link is not None:
        reply = follow(api, link)
        assert reply.status == 200
        sizes.append(len(reply.body))
        seen += ids(reply)
        link = reply.json.get("nextLink")
    assert seen == created
    assert len(sizes) == 2 and max(sizes) <= 4 * 1024 * 1024 and sizes[0] > 3 * 1024 * 1024, sizes


def test_admin_listings_merge_the_shards_in_order(api: Api, fresh_table: None) -> None:
    created = [create(api, api.token(tenant)) for tenant in [PARTNER_A, PARTNER_B] * 12]
    shards_used = {
        entity["PartitionKey"]
        for entity in get_store()._table.query_entities("PartitionKey ge 'index:all:' and PartitionKey lt 'index:all;'")
    }
    assert len(shards_used) > 4 and shards_used <= set(index_partitions("all")) and ALL_SHARDS == 16
    admin = api.admin_token()
    listed: list[dict[str, Any]] = []
    link: str | None = first_link(top="5")
    while link is not None:
        reply = follow(api, link, admin)
        assert reply.status == 200 and len(reply.json["value"]) <= 5
        listed += reply.json["value"]
        link = reply.json.get("nextLink")
    assert [item["id"] for item in listed] == created
    dates = [item["updatedDate"] for item in listed]
    assert dates == sorted(dates)


# ---- Racing writers, lagging clocks and slow commits ----------------------------------------------

_writer = threading.local()


@pytest.fixture
def skewed_writers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers on threads that set `_writer.skew` date their changes by a clock that lags by that
    much, and commit `_writer.commit_delay` seconds after dating them: the worst the design allows
    is a clock MAX_CLOCK_SKEW_SECONDS off and a commit within the request's budget."""
    real_now, real_replace = service.utc_now, ReferralStore.replace

    def now() -> str:
        skew = getattr(_writer, "skew", 0.0)
        return format_utc(parse_utc(real_now()) - timedelta(seconds=skew)) if skew else real_now()

    def replace(self: ReferralStore, *args: Any, **kwargs: Any) -> Any:
        time.sleep(getattr(_writer, "commit_delay", 0.0))
        return real_replace(self, *args, **kwargs)

    monkeypatch.setattr(service, "utc_now", now)
    monkeypatch.setattr(ReferralStore, "replace", replace)


def test_following_the_delta_chain_never_misses_a_successful_write(
    api: Api, fresh_table: None, skewed_writers: None
) -> None:
    referral_ids = [create(api) for _ in range(12)]
    _, delta = run(api, first_link(top="4"))
    writes: list[tuple[float, str, str]] = []  # (response time, referral id, updatedDate)
    lock = threading.Lock()
    stop = threading.Event()

    def write(number: int, skew: float, commit_delay: float) -> None:
        _writer.skew, _writer.commit_delay = skew, commit_delay
        token = api.token()
        counter = 0
        while not stop.is_set():
            counter += 1
            referral_id = referral_ids[(number * 5 + counter) % len(referral_ids)]
            reply = api.post(referral_id, {"additionalInformation": f"w{number}-{counter}"}, token)
            if reply.status == 200:
                with lock:
                    writes.append((time.monotonic(), referral_id, reply.json["updatedDate"]))
            else:
                assert reply.status == 503, reply.body

    lag = budget.MAX_CLOCK_SKEW_SECONDS
    slow = budget.REQUEST_BUDGET_SECONDS / 2
    threads = [
        threading.Thread(target=write, args=args, daemon=True)
        for args in [(0, 0.0, 0.0), (1, 0.0, 0.0), (2, lag, 0.0), (3, lag, slow)]
    ]
    runs: list[tuple[float, dict[str, list[str]]]] = []  # (run start, id -> updatedDates seen)

    def consume(link: str) -> str:
        started = time.monotonic()
        pages, next_link = run(api, link)
        seen: dict[str, list[str]] = {}
        for page in pages:
            page_ids = [item["id"] for item in page]
            assert len(page_ids) == len(set(page_ids)), "a delta page holds a referral twice"
            for item in page:
                seen.setdefault(item["id"], []).append(item["updatedDate"])
        runs.append((started, seen))
        return next_link

    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 12
    try:
        while time.monotonic() < deadline:
            delta = consume(delta)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    for _ in range(2):
        delta = consume(delta)
    assert len(writes) > 30 and len(runs) > 5
    missed = []
    for responded, referral_id, updated in writes:
        later_runs = [seen for started, seen in runs if started > responded]
        if not any(max(seen.get(referral_id, [""])) >= updated for seen in later_runs):
            missed.append((referral_id, updated))
    assert not missed, f"{len(missed)} of {len(writes)} writes never showed in a later delta: {missed[:5]}"
