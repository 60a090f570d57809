"""Cross-organization access: organization B never reads, changes, lists or learns anything about a
referral of organization A through the read and list operations, and cannot change it at all.

One thing B can learn, by design, is whether an id is taken: ids are one global namespace and POST to
a free id creates it, so a create attempt answers 201 for a free id and 404 for a taken one (and
If-Match on an absent id is 412). tests assert exactly that, so that the behaviour documented in
docs/reliability.md stays the behaviour the code has.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import PARTNER_A, PARTNER_B, Api, Reply, minimal_referral, new_id
from tests.hardening.conftest import list_referrals


@pytest.fixture
def a_referral(api: Api) -> Reply:
    reply = api.post(new_id(), minimal_referral(details={"dealValue": 10, "currency": "EUR"}), api.token(PARTNER_A))
    assert reply.status == 201
    return reply


def shape(reply: Reply, referral_id: str) -> tuple[Any, ...]:
    """Everything about a reply except its request id, with the referral id taken out of the message."""
    headers = {k.lower(): v for k, v in reply.headers.items() if k.lower() != "x-ms-request-id"}
    body = json.loads(reply.body)
    body["error"]["message"] = body["error"]["message"].replace(referral_id, "<id>")
    return reply.status, headers, body


def test_b_cannot_tell_a_hidden_referral_from_an_absent_one_by_reading(api: Api, a_referral: Reply) -> None:
    token_b = api.token(PARTNER_B)
    hidden, absent = a_referral.json["id"], new_id()
    etag = a_referral.headers["ETag"]
    for headers in ({}, {"If-None-Match": etag}, {"If-None-Match": "*"}, {"If-None-Match": '"other"'}):
        seen_hidden = api.get(hidden, token_b, headers=headers)
        seen_absent = api.get(absent, token_b, headers=headers)
        assert seen_hidden.status == 404
        assert shape(seen_hidden, hidden) == shape(seen_absent, absent)


def test_b_cannot_change_a_referral_of_a(api: Api, a_referral: Reply) -> None:
    token_b = api.token(PARTNER_B)
    referral_id, etag = a_referral.json["id"], a_referral.headers["ETag"]
    attempts: list[tuple[Any, dict[str, str]]] = [
        ({"status": "Lost"}, {}),
        ({"status": "Lost"}, {"If-Match": etag}),
        ({"status": "Lost"}, {"If-Match": "*"}),
        ({"participants": [{"organizationId": PARTNER_B, "status": "Accepted"}]}, {}),
        ({"participants": [{"organizationId": PARTNER_A, "status": "Rejected"}]}, {}),
        (minimal_referral(), {}),  # as if creating it
        (a_referral.json, {"If-Match": etag}),  # replaying A's own document
    ]
    for body, headers in attempts:
        reply = api.post(referral_id, body, token_b, headers=headers)
        assert reply.status == 404 and reply.error_code == "itemNotFound", (body, reply.body)
    after = api.get(referral_id, api.token(PARTNER_A))
    assert after.headers["ETag"] == etag and after.json == a_referral.json


def all_pages(api: Api, token: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    query = dict(params or {}, top="100")
    for _ in range(200):
        reply = list_referrals(api, query, token)
        assert reply.status == 200, reply.body
        found.extend(reply.json["value"])
        next_link = reply.json.get("nextLink")
        if not next_link:
            return found
        query = {name: values[0] for name, values in parse_qs(urlsplit(next_link).query).items()}
    raise AssertionError("more than 200 pages")


def test_b_never_lists_a_referral_of_a(api: Api, a_referral: Reply) -> None:
    referral_id = a_referral.json["id"]
    token_b = api.token(PARTNER_B)
    for params in (
        {},
        {"status": "Pending"},
        {"referralSource": "PartnerLed"},
        {"updatedSince": "2020-01-01T00:00:00Z"},
    ):
        listed = all_pages(api, token_b, params)
        assert referral_id not in {referral["id"] for referral in listed}
        assert all(PARTNER_B in {p["organizationId"] for p in r["participants"]} for r in listed)
    assert referral_id in {r["id"] for r in all_pages(api, api.token(PARTNER_A), {"status": "Pending"})}
    assert referral_id in {r["id"] for r in all_pages(api, api.admin_token(), {"status": "Pending"})}


def test_b_cannot_use_or_forge_a_page_token_of_a(api: Api) -> None:
    token_a, token_b = api.token(PARTNER_A), api.token(PARTNER_B)
    for _ in range(3):
        assert api.post(new_id(), minimal_referral(), token_a).status == 201
    first = list_referrals(api, {"top": "1"}, token_a)
    next_link = first.json["nextLink"]
    skip_token = parse_qs(urlsplit(next_link).query)["skipToken"][0]
    stolen = list_referrals(api, {"top": "1", "skipToken": skip_token}, token_b)
    assert stolen.status == 400 and stolen.json["error"]["target"] == "skipToken"
    # Tampered: the token is opaque, but not a place to name another organization or query.
    for tampered in (skip_token[:-2] + ("AA" if not skip_token.endswith("AA") else "BB"), skip_token + "x", "x" * 50):
        reply = list_referrals(api, {"top": "1", "skipToken": tampered}, token_a)
        assert reply.status == 400 and reply.json["error"]["target"] == "skipToken"
    changed_query = list_referrals(api, {"top": "2", "skipToken": skip_token}, token_a)
    assert changed_query.status == 400
    assert list_referrals(api, {"top": "1", "skipToken": skip_token}, token_a).status == 200


def test_an_invitation_shows_the_referral_to_b_and_nothing_else(api: Api, a_referral: Reply) -> None:
    token_a, token_b = api.token(PARTNER_A), api.token(PARTNER_B)
    other = api.post(new_id(), minimal_referral(), token_a).json["id"]
    invited = api.post(a_referral.json["id"], {"participants": [{"organizationId": PARTNER_B}]}, token_a)
    assert invited.status == 200
    assert api.get(a_referral.json["id"], token_b).status == 200
    listed = {r["id"] for r in all_pages(api, token_b, {"status": "Pending"})}
    assert a_referral.json["id"] in listed and other not in listed
    assert api.get(other, token_b).status == 404


def test_whether_an_id_is_taken_is_observable_through_a_create_attempt(api: Api, a_referral: Reply) -> None:
    """The documented limitation (docs/reliability.md): ids are global, so a create reveals a taken id."""
    token_b = api.token(PARTNER_B)
    taken, free = a_referral.json["id"], new_id()
    assert api.post(taken, minimal_referral(), token_b).status == 404
    assert api.post(free, minimal_referral(), token_b).status == 201
    # The same holds for If-Match: absent -> 412, taken but hidden -> 404.
    assert api.post(new_id(), {"status": "Lost"}, token_b, headers={"If-Match": "*"}).status == 412
    assert api.post(taken, {"status": "Lost"}, token_b, headers={"If-Match": "*"}).status == 404
    # Nothing of the referral itself leaks: not its content, ETag, participants or status.
    reply = api.post(taken, minimal_referral(), token_b)
    assert a_referral.headers["ETag"] not in reply.body.decode() and PARTNER_A not in reply.body.decode()
    assert "ETag" not in reply.headers
