"""Invitations, through the functions against Azurite (issue 12, item 2).

- Nobody but an admin changes another organization's participant entry: a partner's invitation
  carries no users, and the invited organization may always replace or clear its own.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import (
    HOME,
    PARTNER_A,
    PARTNER_B,
    Api,
    Reply,
    minimal_referral,
    new_id,
)

EVE = {"firstName": "Eve", "email": "eve@inviter.example"}
BO = {"firstName": "Bo", "email": "bo@invitee.example"}


def create(api: Api, *invited: str, token: str | None = None) -> str:
    referral_id = new_id()
    body = minimal_referral(participants=[{"organizationId": organization} for organization in invited])
    reply = api.post(referral_id, body, token)
    assert reply.status == 201, reply.body
    return referral_id


def invite(api: Api, referral_id: str, organizations: list[str], token: str | None = None) -> Reply:
    return api.post(referral_id, {"participants": [{"organizationId": o} for o in organizations]}, token)


def answer(api: Api, referral_id: str, organization: str, status: str = "Accepted") -> None:
    patch = {"participants": [{"organizationId": organization, "status": status}]}
    reply = api.post(referral_id, patch, api.token(organization))
    assert reply.status == 200, reply.body


def own_entry(api: Api, referral_id: str, organization: str, token: str | None = None, **change: Any) -> Reply:
    return api.post(referral_id, {"participants": [{"organizationId": organization, **change}]}, token)


def entry(referral: dict[str, Any], organization: str) -> dict[str, Any] | None:
    return next((p for p in referral["participants"] if p["organizationId"] == organization), None)


def assert_error(reply: Reply, status: int, target: str) -> None:
    assert reply.status == status, reply.body
    assert reply.json["error"]["code"] == ("invalidRequest" if status == 400 else "accessDenied")
    assert reply.json["error"]["target"] == target


# ---- Item 2: an invitation carries no users; the invitee's users are its own -----------------------


def test_a_partner_cannot_write_users_into_an_invitation(api: Api) -> None:
    with_users = minimal_referral(
        participants=[{"organizationId": PARTNER_A, "users": [BO]}, {"organizationId": PARTNER_B, "users": [EVE]}]
    )
    assert_error(api.post(referral_id := new_id(), with_users), 400, "participants[1].users")
    assert api.get(referral_id).status == 404
    referral_id = create(api)
    patch = {"participants": [{"organizationId": PARTNER_B, "users": [EVE]}]}
    assert_error(api.post(referral_id, patch), 400, "participants[0].users")
    assert [p["organizationId"] for p in api.get(referral_id).json["participants"]] == [PARTNER_A]
    # No users at all is an invitation like any other; its own entry's users are the creator's to set.
    reply = api.post(referral_id, {"participants": [{"organizationId": PARTNER_B, "users": []}]})
    assert reply.status == 200, reply.body
    assert not (entry(reply.json, PARTNER_B) or {}).get("users")
    assert own_entry(api, referral_id, PARTNER_A, users=[BO]).status == 200


def test_an_admin_may_still_set_anyones_entry(api: Api) -> None:
    body = minimal_referral(participants=[{"organizationId": PARTNER_B, "users": [EVE]}])
    reply = api.post(new_id(), body, api.admin_token())
    assert reply.status == 201, reply.body
    assert (entry(reply.json, PARTNER_B) or {}).get("users") == [EVE]


@pytest.fixture
def written_by_inviter(api: Api) -> str:
    """A referral of A that invited B, with users in B's entry that B did not choose (as existing
    data may hold; today only an admin can write them)."""
    referral_id = create(api, PARTNER_B)
    reply = own_entry(api, referral_id, PARTNER_B, api.admin_token(), users=[EVE])
    assert reply.status == 200, reply.body
    return referral_id


def test_an_invited_partner_clears_or_replaces_the_users_its_inviter_wrote(api: Api, written_by_inviter: str) -> None:
    token_b = api.token(PARTNER_B)
    cleared = own_entry(api, written_by_inviter, PARTNER_B, token_b, users=None)
    assert cleared.status == 200, cleared.body
    mine = entry(cleared.json, PARTNER_B) or {}
    assert mine["status"] == "Invited" and "users" not in mine
    replaced = own_entry(api, written_by_inviter, PARTNER_B, token_b, users=[BO])
    assert replaced.status == 200, replaced.body
    mine = entry(replaced.json, PARTNER_B) or {}
    assert mine["status"] == "Invited" and mine["users"] == [BO]


def test_an_invited_partner_answers_and_sets_its_users_at_once(api: Api, written_by_inviter: str) -> None:
    reply = own_entry(api, written_by_inviter, PARTNER_B, api.token(PARTNER_B), status="Accepted", users=[BO])
    assert reply.status == 200, reply.body
    mine = entry(reply.json, PARTNER_B) or {}
    assert mine["status"] == "Accepted" and mine["users"] == [BO]
    cleared = own_entry(api, written_by_inviter, PARTNER_B, api.token(PARTNER_B), users=None)
    assert cleared.status == 200 and "users" not in (entry(cleared.json, PARTNER_B) or {})


def test_a_rejected_partner_still_corrects_its_users_and_nothing_else(api: Api, written_by_inviter: str) -> None:
    token_b = api.token(PARTNER_B)
    answer(api, written_by_inviter, PARTNER_B, "Rejected")
    cleared = own_entry(api, written_by_inviter, PARTNER_B, token_b, users=None)
    assert cleared.status == 200, cleared.body
    mine = entry(cleared.json, PARTNER_B) or {}
    assert mine["status"] == "Rejected" and "users" not in mine
    assert own_entry(api, written_by_inviter, PARTNER_B, token_b, users=[BO]).status == 200
    etag = api.get(written_by_inviter).headers["ETag"]
    for patch in (
        {"additionalInformation": "x"},
        {"participants": [{"organizationId": PARTNER_B, "status": "Accepted", "users": None}]},
        {"participants": [{"organizationId": PARTNER_A, "users": [BO]}]},
        {"participants": [{"organizationId": HOME}]},
    ):
        assert api.post(written_by_inviter, patch, token_b).status == 403, patch
    assert api.get(written_by_inviter).headers["ETag"] == etag


def test_an_invited_partner_setting_its_users_still_answers_only_accepted_or_rejected(
    api: Api, written_by_inviter: str
) -> None:
    token_b = api.token(PARTNER_B)
    etag = api.get(written_by_inviter).headers["ETag"]
    for patch in (
        {"participants": [{"organizationId": PARTNER_B, "status": "Expired", "users": [BO]}]},
        {"participants": [{"organizationId": PARTNER_B, "users": [BO]}, {"organizationId": PARTNER_A, "users": []}]},
        {"participants": [{"organizationId": PARTNER_B, "users": [BO]}], "status": "Active"},
    ):
        assert api.post(written_by_inviter, patch, token_b).status == 403, patch
    assert api.get(written_by_inviter).headers["ETag"] == etag
