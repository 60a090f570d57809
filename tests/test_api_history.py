"""GET /api/v1/referrals/{referralId}/activities: the whole history, paged, against Azurite.

A referral keeps its newest 100 activities in its body, the next ones in its row's `Older` parts,
and the oldest in history rows of 50 (shared/store.py); the pages here cross all three.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import azure.functions as func
import pytest

import get_referral
from shared.model import Limits
from shared.store import ACTIVITIES_PER_HISTORY_ROW, ReferralStore
from tests.conftest import HOME, PARTNER_A, PARTNER_B, Api, Reply, minimal_referral, new_id

BASE = "http://localhost:7071/api/v1/referrals"


def get(api: Api, url: str, token: str) -> Reply:
    """A GET through get_referral's main, with the route values the host takes from the URL's path."""
    path = urlsplit(url).path.removeprefix("/api/v1/referrals").strip("/")
    referral_id, _, subresource = path.partition("/")
    route = {"referralId": referral_id} if referral_id else {}
    if subresource:
        route["subresource"] = subresource
    request = func.HttpRequest(
        method="GET", url=url, headers={"Authorization": f"Bearer {token}"}, params={}, route_params=route, body=b""
    )
    response = get_referral.main(request)
    return Reply(response.status_code, dict(response.headers), response.get_body())


def activities_url(referral_id: str, **query: Any) -> str:
    return f"{BASE}/{referral_id}/activities" + (f"?{urlencode(query)}" if query else "")


def every_page(api: Api, referral_id: str, token: str, top: int | None = None) -> list[list[dict[str, Any]]]:
    pages = []
    url: str | None = activities_url(referral_id, **({"top": top} if top else {}))
    while url is not None:
        reply = get(api, url, token)
        assert reply.status == 200, reply.body
        pages.append(reply.json["value"])
        url = reply.json.get("nextLink")
        assert url is None or len(pages) < 1000
    return pages


def build(api: Api, token: str, updates: int, **create: Any) -> str:
    """A referral with `updates` activities after its Created one; each update changes something."""
    referral_id = new_id()
    assert api.post(referral_id, minimal_referral(**create), token).status == 201
    for number in range(updates):
        reply = api.post(referral_id, {"additionalInformation": f"change {number}"}, token)
        assert reply.status == 200, reply.body
    return referral_id


@pytest.fixture
def token(api: Api) -> str:
    return api.token()  # minted once: signing costs more than a write


def test_pages_hold_every_activity_oldest_first_across_body_older_parts_and_history_rows(
    api: Api, store: ReferralStore, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    updates = 3 * ACTIVITIES_PER_HISTORY_ROW + Limits.ACTIVITIES_RETURNED + 10  # 3 rows, 11 in Older, 100 shown
    referral_id = build(api, token, updates)
    expected = store.history(referral_id)
    assert len(expected) == updates + 1 and expected[0]["action"] == "Created"
    assert expected[-Limits.ACTIVITIES_RETURNED :] == get(api, f"{BASE}/{referral_id}", token).json["activities"]
    for top in (None, 1, 37, 49, 50, 51, 149, 150, 161, 500):
        pages = every_page(api, referral_id, token, top)
        assert [activity for page in pages for activity in page] == expected, top
        size = top or 100
        assert [len(page) for page in pages[:-1]] == [size] * (len(pages) - 1), top
        assert 0 < len(pages[-1]) <= size
    # A page deep in the history reads its own rows only, in one query.
    queried: list[dict[str, Any]] = []
    query = store._table.query_entities

    def recording(*args: Any, **kwargs: Any) -> Any:
        queried.append(kwargs["parameters"])
        return query(*args, **kwargs)

    monkeypatch.setattr(store._table, "query_entities", recording)
    current = store.read(referral_id)
    assert current is not None
    for first, count, rows in [(120, 10, (2, 2)), (49, 2, (0, 1)), (149, 5, (2, 2)), (150, 200, None)]:
        queried.clear()
        window, total = store.history_window(current, first, count)
        assert (window, total) == (expected[first : first + count], len(expected))
        bounds = [(int(q["low"].removeprefix("history-")), int(q["high"].removeprefix("history-"))) for q in queried]
        assert bounds == ([rows] if rows else []), (first, count)


def test_the_last_page_has_no_next_link_and_a_next_link_keeps_the_url_and_top_but_not_the_key(
    api: Api, token: str
) -> None:
    referral_id = build(api, token, 4)
    whole = get(api, activities_url(referral_id, top=5, code="secret"), token)
    assert whole.status == 200 and len(whole.json["value"]) == 5 and "nextLink" not in whole.json
    first = get(api, activities_url(referral_id, top=2, code="secret"), token)
    link = urlsplit(first.json["nextLink"])
    assert f"{link.scheme}://{link.netloc}{link.path}" == f"{BASE}/{referral_id}/activities"
    assert [name for name, _ in parse_qsl(link.query)] == ["top", "skipToken"]
    assert dict(parse_qsl(link.query))["top"] == "2"
    # top may change from page to page
    rest = get(api, first.json["nextLink"].replace("top=2", "top=3"), token)
    assert [a["date"] for a in rest.json["value"]] == [a["date"] for a in whole.json["value"][2:5]]


def test_a_page_never_skips_or_repeats_an_activity_while_updates_archive_between_pages(
    api: Api, store: ReferralStore, token: str
) -> None:
    # 160 activities: row 0 holds 0-49, Older 50-59, the body 60-159.
    referral_id = build(api, token, 159)
    seen: list[dict[str, Any]] = []
    first = get(api, activities_url(referral_id, top=55), token).json  # ends inside Older
    seen += first["value"]
    for number in range(45):  # Older reaches 50 and moves to row 1: the next page starts inside it
        assert api.post(referral_id, {"additionalInformation": f"more {number}"}, token).status == 200
    second = get(api, first["nextLink"].replace("top=55", "top=60"), token).json  # ends inside the body
    seen += second["value"]
    for number in range(60):  # the body's oldest move to Older, and on to row 2
        assert api.post(referral_id, {"additionalInformation": f"again {number}"}, token).status == 200
    url = second["nextLink"]
    while url:
        page = get(api, url, token).json
        seen += page["value"]
        url = page.get("nextLink")
    assert seen == store.history(referral_id)
    assert len(seen) == 160 + 45 + 60


def test_each_activity_carries_its_field_level_changes(api: Api, store: ReferralStore, token: str) -> None:
    referral_id = new_id()
    invitee = [{"organizationId": PARTNER_B}]
    assert (
        api.post(
            referral_id, minimal_referral(details={"dealValue": 100, "currency": "EUR"}, participants=invitee), token
        ).status
        == 201
    )
    assert api.post(referral_id, {"status": "Active", "details": {"dealValue": 250}}, token).status == 200
    answer = {"participants": [{"organizationId": PARTNER_B, "status": "Accepted"}]}
    assert api.post(referral_id, answer, api.token(PARTNER_B)).status == 200
    [creation, update, acceptance] = get(api, activities_url(referral_id), token).json["value"]
    assert creation["changes"] == [
        {"property": "status", "to": "Pending"},
        {"property": "referralSource", "to": "PartnerLed"},
        {"property": "details.dealValue", "to": 100},
        {"property": "details.currency", "to": "EUR"},
        {"property": f"participants[{PARTNER_A}].status", "to": "Accepted"},
        {"property": f"participants[{PARTNER_B}].status", "to": "Invited"},
    ]
    assert update["changes"] == [
        {"property": "status", "from": "Pending", "to": "Active"},
        {"property": "details.dealValue", "from": 100, "to": 250},
    ]
    assert acceptance["changes"] == [
        {"property": f"participants[{PARTNER_B}].status", "from": "Invited", "to": "Accepted"}
    ]
    assert get(api, f"{BASE}/{referral_id}", token).json["activities"] == [creation, update, acceptance]


def test_activities_written_before_changes_were_recorded_read_as_they_are(
    api: Api, store: ReferralStore, token: str
) -> None:
    referral_id = new_id()
    assert api.post(referral_id, minimal_referral(), token).status == 201
    current = store.read(referral_id)
    assert current is not None
    document, [created] = current.document()
    old = {key: value for key, value in created.items() if key != "changes"}  # as written before
    store.replace(current, '"old-version"', document, [old])
    referral = get(api, f"{BASE}/{referral_id}", token).json
    assert referral["activities"] == [old]
    # GET-modify-POST still works with the old activity sent back, and the new one has its changes.
    updated = api.post(referral_id, {**referral, "status": "Active"}, token)
    assert updated.status == 200, updated.body
    assert get(api, activities_url(referral_id), token).json["value"] == [
        old,
        {**updated.json["activities"][-1]},
    ]
    assert updated.json["activities"][-1]["changes"] == [{"property": "status", "from": "Pending", "to": "Active"}]
    assert api.post(referral_id, updated.json, token).status == 200, "activities sent back with changes"


def test_the_history_is_404_to_those_who_may_not_see_the_referral(api: Api, token: str) -> None:
    referral_id = build(api, token, 2)
    outsider = api.token(PARTNER_B)
    for url in (activities_url(referral_id), activities_url(new_id())):
        reply = get(api, url, outsider)
        assert reply.status == 404 and reply.error_code == "itemNotFound"
        assert referral_id not in json.dumps(reply.json) or url.endswith(f"{referral_id}/activities")
    first = get(api, activities_url(referral_id, top=1), token).json
    assert get(api, first["nextLink"], outsider).status in (400, 404)
    admin = get(api, activities_url(referral_id), api.admin_token())
    assert admin.status == 200 and len(admin.json["value"]) == 3


def _token_of(link: str) -> dict[str, Any]:
    token = dict(parse_qsl(urlsplit(link).query))["skipToken"]
    return dict(json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))))


def _with_token(link: str, content: dict[str, Any]) -> str:
    token = base64.urlsafe_b64encode(json.dumps(content).encode()).decode().rstrip("=")
    return activities_url(urlsplit(link).path.split("/")[-2], top=2, skipToken=token)


def test_a_skip_token_is_bound_to_the_caller_and_the_referral_and_refused_when_edited(api: Api, token: str) -> None:
    shared_referral = build(api, token, 6, participants=[{"organizationId": PARTNER_B}])
    other_referral = build(api, token, 6)
    link = get(api, activities_url(shared_referral, top=2), token).json["nextLink"]
    assert get(api, link, token).status == 200

    def refused(url: str, caller: str = token) -> None:
        reply = get(api, url, caller)
        assert reply.status == 400, reply.body
        assert reply.json["error"] == {**reply.json["error"], "code": "invalidRequest", "target": "skipToken"}

    refused(link, api.token(PARTNER_B))  # a participant too, but not the caller the token was minted for
    refused(link, api.admin_token())
    refused(link.replace(shared_referral, other_referral))
    content = _token_of(link)
    refused(_with_token(link, {**content, "p": content["p"] + 1}))  # the position no longer matches its date
    refused(_with_token(link, {**content, "p": 7}))  # past the last activity
    refused(_with_token(link, {**content, "p": 10**12}))
    refused(_with_token(link, {**content, "d": "2020-01-01T00:00:00.000000Z"}))
    refused(_with_token(link, {**content, "o": PARTNER_B}))  # edited to name another organization
    refused(_with_token(link, {**content, "extra": 1}))
    refused(activities_url(shared_referral, skipToken="x" * 5000))


@pytest.mark.parametrize(
    ("path", "status", "target"),
    [
        ("/{id}/activities?top=0", 400, "top"),
        ("/{id}/activities?top=501", 400, "top"),
        ("/{id}/activities?top=ten", 400, "top"),
        ("/{id}/activities?status=Active", 400, "status"),
        ("/{id}/activities?top=1&TOP=2", 400, "TOP"),
        ("/bad!id/activities", 400, "referralId"),
        ("/{id}/activity", 404, None),
        ("/{id}/activities/more", 404, None),
        ("/{id}/ACTIVITIES/", 200, None),
        ("/{id}/", 200, None),
    ],
)
def test_paths_below_a_referral(api: Api, token: str, path: str, status: int, target: str | None) -> None:
    referral_id = build(api, token, 0)
    reply = get(api, BASE + path.replace("{id}", referral_id), token)
    assert reply.status == status, reply.body
    if status >= 400:
        assert reply.headers["x-ms-error-code"] == reply.json["error"]["code"]
        assert reply.json["error"].get("target") == target


def test_the_history_needs_a_token(api: Api) -> None:
    reply = get(api, activities_url(new_id()), "")
    assert reply.status == 401


def test_an_admin_changing_many_participants_records_each_status_up_to_the_limit(
    api: Api, token: str, onboarded: list[str]
) -> None:
    organizations = onboarded[: Limits.PARTICIPANTS - 1]
    referral_id = new_id()
    invited = minimal_referral(participants=[{"organizationId": organization} for organization in organizations])
    created = api.post(referral_id, invited, token)
    assert created.status == 201 and len(created.json["activities"][0]["changes"]) == 2 + Limits.PARTICIPANTS
    limit = Limits.PARTICIPANT_STATUS_CHANGES
    expire = [{"organizationId": organization, "status": "Expired"} for organization in organizations]
    too_many = api.post(referral_id, {"participants": expire[: limit + 1]}, api.admin_token())
    assert too_many.status == 400 and too_many.json["error"]["target"] == "participants"
    reply = api.post(referral_id, {"participants": expire[:limit]}, api.admin_token())
    assert reply.status == 200, reply.body
    assert reply.json["activities"][-1]["changes"] == [
        {"property": f"participants[{organization}].status", "from": "Invited", "to": "Expired"}
        for organization in organizations[:limit]
    ]
    assert reply.json["activities"][-1]["organizationId"] == HOME
