"""GET /api/v1/referrals: the per-organization index, paging, and crashes between its writes."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import azure.functions as func
import pytest
from azure.core.exceptions import ServiceRequestError
from azure.data.tables import TableClient, TableServiceClient

import get_referral
from shared import service
from shared.store import AlreadyExists, ReferralStore, WriteConflict, get_store
from tests.conftest import PARTNER_A, PARTNER_B, Api, Reply, minimal_referral, new_id, reset_process_state


@pytest.fixture
def fresh_table(api_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A table of its own, so the organizations' indexes hold only this test's referrals."""
    monkeypatch.setenv("REFERRALS_TABLE", f"List{uuid.uuid4().hex[:12]}")
    reset_process_state()


def list_page(api: Api, token: str | None = None, **params: str) -> Reply:
    request = func.HttpRequest(
        method="GET",
        url="http://localhost:7071/api/v1/referrals?" + urlencode(params),
        headers={"Authorization": f"Bearer {token or api.token()}"},
        params={},  # the function reads its query from the URL, as the host passes it on unchanged
        route_params={},
        body=b"",
    )
    response = get_referral.main(request)
    return Reply(response.status_code, dict(response.headers), response.get_body())


def follow(api: Api, link: str, token: str | None = None) -> Reply:
    return list_page(api, token, **dict(parse_qsl(urlsplit(link).query)))


def ids(reply: Reply) -> list[str]:
    assert reply.status == 200, reply.body
    return [item["id"] for item in reply.json["value"]]


def index_row_count(organization: str) -> int:
    pages = get_store().scan_index(
        organization, after_key=None, updated_since=None, status=None, referral_source=None, page_size=100
    )
    return sum(len(rows) for rows, _ in pages)


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Cleanup runs after the response; wait for it rather than assume its timing."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def create(api: Api, token: str | None = None, **extra: Any) -> str:
    referral_id = new_id()
    reply = api.post(referral_id, minimal_referral(**extra), token)
    assert reply.status == 201, reply.body
    return referral_id


def test_lists_own_referrals_oldest_update_first(api: Api, fresh_table: None) -> None:
    first, second, third = create(api), create(api), create(api)
    assert api.post(first, {"status": "Active"}).status == 200
    reply = list_page(api)
    assert ids(reply) == [second, third, first]
    assert "nextLink" not in reply.json
    # Listings show referrals without their activities (the history endpoint has those).
    assert reply.json["value"][2] == {k: v for k, v in api.get(first).json.items() if k != "activities"}


def table_exists() -> bool:
    service = TableServiceClient.from_connection_string(os.environ["REFERRALS_STORAGE"])
    name = os.environ["REFERRALS_TABLE"]
    return any(table.name == name for table in service.list_tables())


def test_an_instance_makes_its_table_on_first_write_or_query_and_a_read_before_is_404(
    api: Api, fresh_table: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A point read does not wait for the table check (a cold instance's first GET): on a table that
    # is not there it is 404, and leaves none behind.
    assert api.get(new_id()).status == 404
    assert not table_exists()
    # A query (a listing) makes sure of it first: without that, storage's TableNotFound would be 500.
    reply = list_page(api)
    assert reply.status == 200 and reply.json["value"] == []
    assert table_exists()
    # And so does a write, when it is an instance's first storage call.
    monkeypatch.setenv("REFERRALS_TABLE", f"List{uuid.uuid4().hex[:12]}")
    reset_process_state()
    referral_id = create(api)
    assert table_exists()
    assert ids(list_page(api)) == [referral_id]


def test_a_table_check_that_storage_fails_is_503_and_tried_again_by_the_next_request(
    api: Api, fresh_table: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fault Azurite cannot be made to give on exactly this call: the check's one request fails.
    real_create = TableClient.create_table
    failures = iter([ServiceRequestError("connection refused")])

    def create_table(table: TableClient, **options: Any) -> Any:
        for failure in failures:
            raise failure
        return real_create(table, **options)

    monkeypatch.setattr(TableClient, "create_table", create_table)
    assert list_page(api).status == 503
    assert not table_exists()
    reply = list_page(api)  # the failed check was not remembered as done
    assert reply.status == 200 and reply.json["value"] == []
    assert table_exists()


def test_filters_by_status_source_and_updated_since(api: Api, fresh_table: None) -> None:
    pending = create(api)
    active = create(api, referralSource="P2P")
    assert api.post(active, {"status": "Active"}).status == 200
    assert ids(list_page(api, status="Active")) == [active]
    assert ids(list_page(api, status="pending")) == [pending]
    assert ids(list_page(api, referralSource="P2P")) == [active]
    since = api.get(active).json["updatedDate"]
    assert ids(list_page(api, updatedSince=since)) == [active]
    assert ids(list_page(api, updatedSince="2999-01-01T00:00:00Z")) == []


def test_pages_follow_next_link_until_the_last_page(api: Api, fresh_table: None) -> None:
    created = [create(api) for _ in range(5)]
    first = list_page(api, top="2")
    assert len(ids(first)) == 2
    link = first.json["nextLink"]
    assert link.startswith("http://localhost:7071/api/v1/referrals?")
    second = follow(api, link)
    third = follow(api, second.json["nextLink"])
    assert "nextLink" not in third.json
    assert ids(first) + ids(second) + ids(third) == created


def test_partner_lists_only_referrals_it_participates_in_and_admin_lists_all(api: Api, fresh_table: None) -> None:
    mine = create(api)
    shared_with_b = create(api, participants=[{"organizationId": PARTNER_B}])
    theirs = create(api, api.token(PARTNER_B))
    assert ids(list_page(api)) == [mine, shared_with_b]
    assert ids(list_page(api, api.token(PARTNER_B))) == [shared_with_b, theirs]
    assert ids(list_page(api, api.admin_token())) == [mine, shared_with_b, theirs]


def test_invalid_query_parameters_are_400(api: Api, fresh_table: None) -> None:
    for params in (
        {"top": "0"},
        {"top": "101"},
        {"top": "ten"},
        {"top": "1" * 5000},  # int() refuses more than 4,300 digits: that was a 500
        {"status": "Open"},
        {"updatedSince": "yesterday"},
        {"updatedSince": "2026-01-01T00:00:00"},
        {"orderBy": "id"},
        {"$filter": "x"},
    ):
        reply = list_page(api, **params)
        assert reply.status == 400, params
        assert reply.error_code == "invalidRequest"
    assert list_page(api, code="function-key").status == 200


def test_page_token_is_bound_to_the_caller_and_rejects_tampering(api: Api, fresh_table: None) -> None:
    for _ in range(3):
        create(api)
    create(api, api.token(PARTNER_B))
    link = list_page(api, top="1").json["nextLink"]
    params = dict(parse_qsl(urlsplit(link).query))
    assert list_page(api, api.token(PARTNER_B), **params).status == 400
    token, signature = params["skipToken"].split(".")
    content = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    content["o"] = PARTNER_B
    forged = base64.urlsafe_b64encode(json.dumps(content).encode()).decode()
    assert list_page(api, **{**params, "skipToken": forged}).status == 400
    assert list_page(api, **{**params, "skipToken": f"{forged}.{signature}"}).status == 400
    assert list_page(api, **{**params, "skipToken": token[:-3] + "xyz"}).status == 400
    assert list_page(api, **{**params, "status": "Won"}).status == 400


def test_crash_after_index_write_before_referral_write_shows_nothing_new(
    api: Api, fresh_table: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    referral_id = create(api)
    third = "55555555-5555-4555-8555-555555555555"
    monkeypatch.setenv("AUTH_ALLOWED_TENANTS", f"{PARTNER_A},{PARTNER_B},{third}")  # invitations go to onboarded ones
    reset_process_state()

    def crash(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("process died")

    with monkeypatch.context() as patched:
        patched.setattr(ReferralStore, "replace", crash)
        reply = api.post(referral_id, {"status": "Active", "participants": [{"organizationId": third}]})
    assert reply.status == 500
    # The stale-looking "Active" row must not surface; the referral still shows, as it is stored.
    listed = list_page(api)
    assert ids(listed) == [referral_id]
    assert listed.json["value"][0]["status"] == "Pending"
    assert ids(list_page(api, status="Active")) == []
    # The organization the failed write would have invited sees nothing.
    assert ids(list_page(api, api.token(third))) == []


def test_crash_after_referral_write_before_cleanup_never_hides_or_duplicates(
    api: Api, fresh_table: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    referral_id = create(api)
    calls: list[int] = []

    def process_stops_before_cleanup(self: ReferralStore, entries: list[Any], wait: bool = True) -> None:
        calls.append(len(entries))

    with monkeypatch.context() as patched:
        patched.setattr(ReferralStore, "delete_index_entries", process_stops_before_cleanup)
        assert api.post(referral_id, {"status": "Active"}).status == 200
    assert calls == [2]  # the previous version's rows: the creator's index and the admins'
    assert api.get(referral_id).json["status"] == "Active"
    listed = list_page(api)
    assert ids(listed) == [referral_id]
    assert listed.json["value"][0]["status"] == "Active"
    assert ids(list_page(api, status="Pending")) == []
    # The leftover row was repaired on read: the index now holds one row for the referral.
    assert eventually(lambda: index_row_count(PARTNER_A) == 1)


def test_rows_of_a_create_that_crashed_are_removed_once_older_than_any_request(
    api: Api, fresh_table: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("process died")

    with monkeypatch.context() as patched:
        patched.setattr(ReferralStore, "create", crash)
        assert api.post(new_id(), minimal_referral()).status == 500
    assert ids(list_page(api)) == []
    time.sleep(0.2)  # were the listing to remove the row, it would have by now
    assert index_row_count(PARTNER_A) == 1  # a write may still be in flight: kept
    monkeypatch.setattr(service, "IN_FLIGHT_GRACE", service.timedelta(0))
    assert ids(list_page(api)) == []
    assert eventually(lambda: index_row_count(PARTNER_A) == 0)


def cleanup_in_line(patched: pytest.MonkeyPatch) -> None:
    """Run the index clean-up before the response, so what a test then lists no longer depends on timing."""
    delete = ReferralStore.delete_index_entries

    def delete_now(self: ReferralStore, entries: list[Any], wait: bool = True) -> None:
        delete(self, entries, wait=True)

    patched.setattr(ReferralStore, "delete_index_entries", delete_now)


@pytest.mark.parametrize("if_match", [True, False], ids=["with If-Match", "without If-Match"])
def test_a_write_whose_response_was_lost_is_reported_as_done_and_stays_listed(
    api: Api, fresh_table: None, monkeypatch: pytest.MonkeyPatch, if_match: bool
) -> None:
    # The storage client retries a request whose response was lost; the retry meets the write its
    # first attempt made, so storage answers 412 for a write that landed.
    referral_id = create(api)
    headers = {"If-Match": api.get(referral_id).headers["ETag"]} if if_match else {}
    replace = ReferralStore.replace

    def landed_then_reported_lost(self: ReferralStore, current: Any, *args: Any) -> Any:
        replace(self, current, *args)
        raise WriteConflict(current.referral_id)

    with monkeypatch.context() as patched:
        cleanup_in_line(patched)
        patched.setattr(ReferralStore, "replace", landed_then_reported_lost)
        reply = api.post(referral_id, {"status": "Active"}, headers=headers)
    assert reply.status == 200, reply.body
    assert reply.json["status"] == "Active"
    assert api.get(referral_id).headers["ETag"] == reply.headers["ETag"]
    assert ids(list_page(api, status="Active")) == [referral_id]
    assert index_row_count(PARTNER_A) == 1  # the new version's row kept, the previous one's removed


def test_a_create_whose_response_was_lost_is_reported_as_created_and_listed(
    api: Api, fresh_table: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_entity = ReferralStore.create

    def landed_then_reported_taken(self: ReferralStore, referral_id: str, *args: Any) -> Any:
        create_entity(self, referral_id, *args)
        raise AlreadyExists(referral_id)

    referral_id = new_id()
    with monkeypatch.context() as patched:
        cleanup_in_line(patched)
        patched.setattr(ReferralStore, "create", landed_then_reported_taken)
        reply = api.post(referral_id, minimal_referral())
    assert reply.status == 201, reply.body
    assert ids(list_page(api)) == [referral_id]
    assert index_row_count(PARTNER_A) == 1


def test_racing_writers_stamping_the_same_updated_date_keep_the_winners_rows(
    api: Api, fresh_table: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    referral_id = create(api)
    # Every clock behind the stored date: both writers stamp it plus one microsecond.
    monkeypatch.setattr(service, "utc_now", lambda: "2000-01-01T00:00:00.000000Z")
    replace = ReferralStore.replace
    raced: list[int] = []

    def another_writer_wins_first(self: ReferralStore, *args: Any) -> Any:
        if not raced:
            raced.append(0)  # before the other writer's own replace comes through here
            raced[0] = api.post(referral_id, {"status": "Active"}).status
        return replace(self, *args)

    with monkeypatch.context() as patched:
        cleanup_in_line(patched)
        patched.setattr(ReferralStore, "replace", another_writer_wins_first)
        reply = api.post(referral_id, {"status": "Active"})
    assert raced == [200] and reply.status == 200
    # The loser removed its own rows, not the winner's: the referral is still listed, as it is stored.
    assert ids(list_page(api, status="Active")) == [referral_id]
    assert index_row_count(PARTNER_A) == 1


@pytest.mark.parametrize("since", ["1970-01-01T00:00:00Z", "1970-01-01T00:00:00.000001Z", "1970-01-01T00:00:00+05:00"])
def test_updated_since_at_or_before_the_epoch_lists_everything(api: Api, fresh_table: None, since: str) -> None:
    referral_id = create(api)
    assert ids(list_page(api, updatedSince=since)) == [referral_id]


def test_a_skip_token_nested_past_the_parser_limit_is_400(api: Api, fresh_table: None) -> None:
    nested = base64.urlsafe_b64encode(b"[" * 5000).decode().rstrip("=")
    reply = list_page(api, skipToken=nested)
    assert reply.status == 400 and reply.error_code == "invalidRequest"


def test_no_next_link_when_only_leftover_rows_follow_a_full_page(
    api: Api, fresh_table: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = create(api), create(api)
    with monkeypatch.context() as patched:
        patched.setattr(ReferralStore, "delete_index_entries", lambda *_args, **_kwargs: None)
        assert api.post(first, {"status": "Active"}).status == 200  # its earlier row stays, sorting last
    page = list_page(api, top="2")
    assert ids(page) == [first, second]
    assert "nextLink" not in page.json


def test_a_skip_token_whose_position_is_not_a_row_key_is_400(api: Api, fresh_table: None) -> None:
    for _ in range(3):
        create(api)
    link = list_page(api, top="1").json["nextLink"]
    token, signature = dict(parse_qsl(urlsplit(link).query))["skipToken"].split(".")
    content = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))

    def edited(position: str) -> str:
        raw = json.dumps({**content, "k": position}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=") + "." + signature

    for position in ("\ud800", "", "x", "' or 1 eq 1", content["k"] + "\u0000"):
        reply = list_page(api, top="1", skipToken=edited(position))
        assert reply.status == 400 and reply.error_code == "invalidRequest", position
    # Issue 12 item 7: a position of the right shape was accepted (it only moved within the caller's
    # own index); tokens are signed now, so any edit is 400.
    assert list_page(api, top="1", skipToken=edited("0" * 17 + ":a:b")).status == 400
    assert list_page(api, top="1", skipToken=edited(content["k"])).status == 200


def test_a_skip_token_is_exactly_what_the_api_minted_and_at_most_4096_characters(api: Api, fresh_table: None) -> None:
    """Issue 12 item 7: an 8,306-character token with an added field was accepted, though openapi.yaml
    says maxLength 4096. Only the exact token the API minted passes: no added, removed or reordered
    field, no other encoding of the same content, no padding, no other signature."""
    for _ in range(3):
        create(api)
    link = list_page(api, top="1").json["nextLink"]
    minted = dict(parse_qsl(urlsplit(link).query))["skipToken"]
    assert len(minted) <= 4096
    token, signature = minted.split(".")
    content = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))

    def encoded(value: Any, **dumps: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(value, **dumps).encode()).decode().rstrip("=")

    compact = {"separators": (",", ":")}
    variants = {
        "an added field, 8,306 characters": encoded({**content, "x": "y" * 6000}, **compact) + "." + signature,
        "an added field, short": encoded({**content, "x": 1}, **compact) + "." + signature,
        "a field removed": encoded({k: v for k, v in content.items() if k != "t"}, **compact) + "." + signature,
        "fields reordered": encoded(dict(reversed(list(content.items()))), **compact) + "." + signature,
        "spaces in the JSON": encoded(content) + "." + signature,
        "padding": minted.split(".")[0] + "==." + signature,
        "no signature": token,
        "another signature": token + "." + "A" * 43,
        "a signature one character short": minted[:-1],
        "an edited start time": encoded({**content, "t": "2020-01-01T00:00:00.000000Z"}, **compact) + "." + signature,
        "4,097 characters": minted + "A" * (4097 - len(minted)),
        "whitespace around it": f" {minted} ",
    }
    for name, variant in variants.items():
        reply = list_page(api, top="1", skipToken=variant)
        assert reply.status == 400 and reply.json["error"]["target"] == "skipToken", name
    assert list_page(api, top="1", skipToken=minted).status == 200
    # The longest query a token can carry still gives a token well within the limit.
    longest = list_page(
        api, top="1", status="Pending", referralSource="PartnerLed", updatedSince="1970-01-02T00:00:00Z"
    )
    assert len(dict(parse_qsl(urlsplit(longest.json["nextLink"]).query))["skipToken"]) < 1024


def test_a_page_examines_a_bounded_number_of_rows(api: Api, fresh_table: None, monkeypatch: pytest.MonkeyPatch) -> None:
    referral_id = create(api)

    def crash(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("process died")

    with monkeypatch.context() as patched:
        patched.setattr(ReferralStore, "replace", crash)
        for attempt in range(service.MAX_ROWS_EXAMINED_PER_ITEM + 2):
            # Each failed write leaves rows newer than the referral, kept while a write may be in flight.
            assert api.post(referral_id, {"additionalInformation": f"attempt {attempt}"}).status == 500
    later = create(api)  # its row lies beyond the rows the failed writes left
    first = list_page(api, top="1")
    assert ids(first) == [referral_id] and "nextLink" in first.json
    second = follow(api, first.json["nextLink"])
    assert ids(second) == [] and "nextLink" in second.json  # a short page, not a scan of everything
    assert ids(follow(api, second.json["nextLink"])) == [later]
