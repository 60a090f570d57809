"""Invitations, through the functions against Azurite (issue 12, items 2 and 3).

- Nobody but an admin changes another organization's participant entry: a partner's invitation
  carries no users, and the invited organization may always replace or clear its own.
- After any sequence of invitations by one participant, the creator can still invite an onboarded
  organization: invitations go only to onboarded organizations, a participant other than the creator
  has at most 5 pending at once and fills no slot past 40, and an admin may remove an Invited entry.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared.model import Limits
from tests.conftest import (
    HOME,
    NOT_ONBOARDED,
    PARTNER_A,
    PARTNER_B,
    Api,
    Reply,
    minimal_referral,
    new_id,
    reset_process_state,
)

EVE = {"firstName": "Eve", "email": "eve@inviter.example"}
BO = {"firstName": "Bo", "email": "bo@invitee.example"}
PENDING = Limits.PENDING_INVITATIONS_PER_INVITER
OPEN_SLOTS = Limits.PARTICIPANTS - Limits.RESERVED_PARTICIPANTS


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


# ---- Item 3: the creator can always invite an onboarded organization ------------------------------


def test_invitations_go_only_to_onboarded_organizations(api: Api) -> None:
    body = minimal_referral(participants=[{"organizationId": PARTNER_B}, {"organizationId": NOT_ONBOARDED}])
    assert_error(api.post(new_id(), body), 400, "participants[1].organizationId")
    referral_id = create(api, PARTNER_B)
    for token in (None, api.admin_token()):
        assert_error(invite(api, referral_id, [HOME, NOT_ONBOARDED], token), 400, "participants[1].organizationId")
    assert invite(api, referral_id, [HOME]).status == 200  # our own tenant is onboarded


def test_without_partner_tenants_only_our_own_tenant_can_be_invited(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_ALLOWED_TENANTS", "")
    reset_process_state()
    body = minimal_referral(participants=[{"organizationId": PARTNER_B}])
    assert_error(api.post(new_id(), body, api.admin_token()), 400, "participants[0].organizationId")


def test_an_accepted_partner_cannot_fill_the_list_and_the_creator_still_invites(api: Api, onboarded: list[str]) -> None:
    """The hostile scenario: an Accepted partner invites 48 random GUIDs, then as many onboarded
    organizations as it can; the creator and an admin can still invite onboarded organizations."""
    referral_id = create(api, PARTNER_B)
    answer(api, referral_id, PARTNER_B)
    token_b = api.token(PARTNER_B)
    random_guids = [str(uuid.uuid4()) for _ in range(Limits.PARTICIPANTS - 2)]
    assert_error(invite(api, referral_id, random_guids, token_b), 400, "participants[0].organizationId")
    assert_error(invite(api, referral_id, onboarded[:48], token_b), 400, f"participants[{PENDING}]")
    assert invite(api, referral_id, onboarded[:PENDING], token_b).status == 200
    assert_error(invite(api, referral_id, onboarded[PENDING : PENDING + 1], token_b), 400, "participants[0]")
    assert invite(api, referral_id, [onboarded[PENDING]]).status == 200, "the creator invites"
    reply = invite(api, referral_id, [onboarded[PENDING + 1]], api.admin_token())
    assert reply.status == 200, reply.body
    assert len(reply.json["participants"]) == 2 + PENDING + 2


def test_a_participant_has_at_most_five_of_its_invitations_pending(api: Api, onboarded: list[str]) -> None:
    referral_id = create(api, PARTNER_B)
    answer(api, referral_id, PARTNER_B)
    token_b = api.token(PARTNER_B)
    first, rest = onboarded[:PENDING], onboarded[PENDING:]
    assert invite(api, referral_id, first, token_b).status == 200
    assert_error(invite(api, referral_id, [rest[0]], token_b), 400, "participants[0]")
    answer(api, referral_id, first[0])  # answered: no longer pending
    answer(api, referral_id, first[1], "Rejected")
    assert_error(invite(api, referral_id, rest[:3], token_b), 400, "participants[2]")
    assert invite(api, referral_id, rest[:2], token_b).status == 200
    # Each inviter has its own count; the creator and admins have none.
    assert invite(api, referral_id, rest[2 : 2 + PENDING], api.token(first[0])).status == 200
    assert invite(api, referral_id, rest[2 + PENDING : 4 + 2 * PENDING]).status == 200
    assert invite(api, referral_id, rest[4 + 2 * PENDING : 6 + 3 * PENDING], api.admin_token()).status == 200


def test_the_last_ten_slots_are_for_the_creator_and_admins(api: Api, onboarded: list[str]) -> None:
    referral_id = create(api, PARTNER_B, *onboarded[: OPEN_SLOTS - 2])
    answer(api, referral_id, PARTNER_B)
    spare = onboarded[OPEN_SLOTS - 2 :]
    assert_error(invite(api, referral_id, [spare[0]], api.token(PARTNER_B)), 400, "participants[0]")
    assert invite(api, referral_id, [spare[0]]).status == 200, "the creator invites past 40"
    assert_error(invite(api, referral_id, [spare[1]], api.token(PARTNER_B)), 400, "participants[0]")
    last = Limits.PARTICIPANTS - OPEN_SLOTS - 1
    reply = invite(api, referral_id, spare[1 : 1 + last], api.admin_token())
    assert reply.status == 200 and len(reply.json["participants"]) == Limits.PARTICIPANTS


def test_an_admin_removes_an_invited_entry_and_the_history_records_it(api: Api, onboarded: list[str]) -> None:
    invitee = onboarded[0]
    referral_id = create(api, PARTNER_B, invitee)
    admin = api.admin_token()
    removal = {"participants": [{"organizationId": invitee, "status": None}]}
    reply = api.post(referral_id, removal, admin)
    assert reply.status == 200, reply.body
    assert [p["organizationId"] for p in reply.json["participants"]] == [PARTNER_A, PARTNER_B]
    assert reply.json["activities"][-1] == {
        **reply.json["activities"][-1],
        "organizationId": HOME,
        "changedProperties": ["participants"],
        "changes": [{"property": f"participants[{invitee}].status", "from": "Invited"}],
    }
    assert api.get(referral_id, api.token(invitee)).status == 404
    again = api.post(referral_id, removal, admin)  # a repeated removal changes nothing, and invites nobody
    assert again.status == 200 and again.headers["ETag"] == reply.headers["ETag"]


def test_only_an_admin_removes_and_only_an_invited_entry_other_than_the_creators(
    api: Api, onboarded: list[str]
) -> None:
    invitee = onboarded[0]
    referral_id = create(api, PARTNER_B, invitee)
    answer(api, referral_id, PARTNER_B)
    etag = api.get(referral_id).headers["ETag"]
    remove = {"participants": [{"organizationId": invitee, "status": None}]}
    for organization in (PARTNER_A, PARTNER_B, invitee):
        assert_error(api.post(referral_id, remove, api.token(organization)), 403, "participants[0].status")
    admin = api.admin_token()
    for organization in (PARTNER_A, PARTNER_B):  # the creator's, and an Accepted one
        patch = {"participants": [{"organizationId": organization, "status": None}]}
        assert_error(api.post(referral_id, patch, admin), 400, "participants[0].status")
    with_users: dict[str, Any] = {"participants": [{"organizationId": invitee, "status": None, "users": []}]}
    assert_error(api.post(referral_id, with_users, admin), 400, "participants[0].users")
    assert api.get(referral_id).headers["ETag"] == etag


def test_a_removal_frees_its_inviters_pending_slot(api: Api, onboarded: list[str]) -> None:
    referral_id = create(api, PARTNER_B)
    answer(api, referral_id, PARTNER_B)
    token_b = api.token(PARTNER_B)
    assert invite(api, referral_id, onboarded[:PENDING], token_b).status == 200
    assert invite(api, referral_id, [onboarded[PENDING]], token_b).status == 400
    removal = {"participants": [{"organizationId": onboarded[0], "status": None}]}
    assert api.post(referral_id, removal, api.admin_token()).status == 200
    assert invite(api, referral_id, [onboarded[PENDING]], token_b).status == 200
