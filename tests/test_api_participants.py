"""Participants and who may change what, through the functions against Azurite."""

from __future__ import annotations

from typing import Any

from tests.conftest import HOME, PARTNER_A, PARTNER_B, Api, minimal_referral, new_id


def create_with_invitee(api: Api) -> dict[str, Any]:
    referral_id = new_id()
    reply = api.post(referral_id, minimal_referral(participants=[{"organizationId": PARTNER_B}]))
    assert reply.status == 201, reply.body
    return dict(reply.json)


def entry(referral: dict[str, Any], organization: str) -> dict[str, Any]:
    return next(p for p in referral["participants"] if p["organizationId"] == organization)


def test_creator_is_accepted_and_listed_organizations_are_invited_by_it(api: Api) -> None:
    referral = create_with_invitee(api)
    creator, invitee = entry(referral, PARTNER_A), entry(referral, PARTNER_B)
    assert creator["status"] == "Accepted" and "invitedByParticipantId" not in creator
    assert invitee["status"] == "Invited"
    assert invitee["invitedByParticipantId"] == creator["id"]


def test_invited_partner_can_read_and_accept_its_invitation(api: Api) -> None:
    referral = create_with_invitee(api)
    invitee_token = api.token(PARTNER_B)
    assert api.get(referral["id"], invitee_token).status == 200
    reply = api.post(
        referral["id"], {"participants": [{"organizationId": PARTNER_B, "status": "Accepted"}]}, invitee_token
    )
    assert reply.status == 200, reply.body
    assert entry(reply.json, PARTNER_B)["status"] == "Accepted"
    assert reply.json["activities"][-1]["changedProperties"] == ["participants"]


def test_invited_partner_cannot_change_status(api: Api) -> None:
    referral = create_with_invitee(api)
    reply = api.post(referral["id"], {"status": "Active"}, api.token(PARTNER_B))
    assert reply.status == 403 and reply.error_code == "accessDenied"
    assert api.get(referral["id"]).json["status"] == "Pending"


def test_invited_partner_cannot_answer_with_anything_but_accepted_or_rejected(api: Api) -> None:
    referral = create_with_invitee(api)
    reply = api.post(
        referral["id"], {"participants": [{"organizationId": PARTNER_B, "status": "Expired"}]}, api.token(PARTNER_B)
    )
    assert reply.status == 403


def test_rejected_partner_may_read_but_not_write(api: Api) -> None:
    referral = create_with_invitee(api)
    invitee = api.token(PARTNER_B)
    rejected = api.post(
        referral["id"], {"participants": [{"organizationId": PARTNER_B, "status": "rejected"}]}, invitee
    )
    assert rejected.status == 200
    assert api.get(referral["id"], invitee).status == 200
    assert api.post(referral["id"], {"additionalInformation": "x"}, invitee).status == 403


def test_accepted_partner_changes_status_and_details_but_not_other_entries(api: Api) -> None:
    referral = create_with_invitee(api)
    invitee = api.token(PARTNER_B)
    api.post(referral["id"], {"participants": [{"organizationId": PARTNER_B, "status": "Accepted"}]}, invitee)
    moved = api.post(referral["id"], {"status": "Active", "details": {"notes": "demo booked"}}, invitee)
    assert moved.status == 200, moved.body
    others = api.post(
        referral["id"], {"participants": [{"organizationId": PARTNER_A, "users": [{"firstName": "Eve"}]}]}, invitee
    )
    assert others.status == 403
    own_users = api.post(
        referral["id"], {"participants": [{"organizationId": PARTNER_B, "users": [{"firstName": "Bo"}]}]}, invitee
    )
    assert own_users.status == 200
    assert entry(own_users.json, PARTNER_B)["users"] == [{"firstName": "Bo"}]


def test_accepted_partner_cannot_change_referral_source(api: Api) -> None:
    referral = create_with_invitee(api)
    reply = api.post(referral["id"], {"referralSource": "P2P"})
    assert reply.status == 403 and reply.json["error"]["target"] == "referralSource"


def test_inviting_adds_a_participant_and_participants_null_removes_none(api: Api, onboarded: list[str]) -> None:
    referral = create_with_invitee(api)
    third = onboarded[0]
    invited = api.post(referral["id"], {"participants": [{"organizationId": third}]})
    assert invited.status == 200
    assert [p["organizationId"] for p in invited.json["participants"]] == [PARTNER_A, PARTNER_B, third]
    assert entry(invited.json, third)["status"] == "Invited"
    removed = api.post(referral["id"], {"participants": None})
    assert removed.status == 400
    assert len(api.get(referral["id"]).json["participants"]) == 3


def test_partner_cannot_invite_as_accepted_on_another_organizations_behalf(api: Api) -> None:
    referral = create_with_invitee(api)
    third = "55555555-5555-4555-8555-555555555555"
    reply = api.post(referral["id"], {"participants": [{"organizationId": third, "status": "Accepted"}]})
    assert reply.status == 403


def test_participant_ids_are_read_only(api: Api) -> None:
    referral = create_with_invitee(api)
    reply = api.post(referral["id"], {"participants": [{"organizationId": PARTNER_B, "id": "forged"}]})
    assert reply.status == 400 and reply.json["error"]["target"] == "participants[0].id"


def test_partners_create_partner_led_or_p2p_only(api: Api) -> None:
    for source in ("WebDirect", "AgentLed"):
        reply = api.post(new_id(), minimal_referral(referralSource=source))
        assert reply.status == 403, source
    assert api.post(new_id(), minimal_referral(referralSource="WebDirect"), api.admin_token()).status == 201


def test_admin_changes_another_organizations_entry(api: Api) -> None:
    referral = create_with_invitee(api)
    reply = api.post(
        referral["id"], {"participants": [{"organizationId": PARTNER_B, "status": "Expired"}]}, api.admin_token()
    )
    assert reply.status == 200
    assert entry(reply.json, PARTNER_B)["status"] == "Expired"
    assert reply.json["activities"][-1]["organizationId"] == HOME


def test_read_only_token_cannot_post(api: Api) -> None:
    reply = api.post(new_id(), minimal_referral(), api.token(PARTNER_A, roles=["Referrals.Read"]))
    assert reply.status == 403


def test_delegated_scope_grants_like_a_role(api: Api) -> None:
    token = api.key.token(PARTNER_A, roles=None, scopes="Referrals.ReadWrite")
    assert api.post(new_id(), minimal_referral(), token).status == 201


def test_an_accepted_partner_cannot_change_its_own_participant_status(api: Api) -> None:
    referral = create_with_invitee(api)
    invitee = api.token(PARTNER_B)
    accept = {"participants": [{"organizationId": PARTNER_B, "status": "Accepted"}]}
    assert api.post(referral["id"], accept, invitee).status == 200
    for status in ("Rejected", "Expired", "Invited"):
        patch = {"participants": [{"organizationId": PARTNER_B, "status": status}]}
        assert api.post(referral["id"], patch, invitee).status == 403, status
    creator = {"participants": [{"organizationId": PARTNER_A, "status": "Rejected"}]}
    assert api.post(referral["id"], creator).status == 403
    after = api.get(referral["id"]).json
    assert entry(after, PARTNER_A)["status"] == "Accepted" and entry(after, PARTNER_B)["status"] == "Accepted"


def test_an_invited_partner_answering_may_also_set_its_users_but_nothing_else(api: Api) -> None:
    referral = create_with_invitee(api)
    token_b = api.token(PARTNER_B)
    patch = {"participants": [{"organizationId": PARTNER_B, "status": "Accepted", "users": [{"firstName": "Bo"}]}]}
    assert api.post(referral["id"], {**patch, "additionalInformation": "x"}, token_b).status == 403
    assert api.post(referral["id"], patch, token_b).status == 200
    stored = entry(api.get(referral["id"]).json, PARTNER_B)
    assert stored["status"] == "Accepted" and stored["users"] == [{"firstName": "Bo"}]
