"""Domain rules without I/O: transitions, enums, merge-patch, property names, access policy."""

from __future__ import annotations

from typing import Any

import pytest

from shared import editing
from shared.errors import AccessDenied, InvalidRequest, InvalidStatusTransition, PayloadTooLarge
from shared.model import TRACKED_PROPERTIES, Activity, Limits, Referral, ReferralStatus, check_transition
from shared.patching import canonicalize, changed_paths, merge_patch
from shared.policy import Caller
from shared.store import ACTIVITIES_PER_HISTORY_ROW, to_json

A = "22222222-2222-4222-8222-222222222222"
B = "33333333-3333-4333-8333-333333333333"
THIRD = "44444444-4444-4444-8444-444444444444"
HOME = "11111111-1111-4111-8111-111111111111"
INVITEES = [f"00000000-0000-4000-8000-{index:012d}" for index in range(Limits.PARTICIPANTS - 1)]
ONBOARDED = frozenset({HOME, A, B, THIRD, *INVITEES})
PARTNER = Caller(A, can_read=True, can_write=True, is_admin=False, onboarded=ONBOARDED)
OTHER = Caller(B, can_read=True, can_write=True, is_admin=False, onboarded=ONBOARDED)
ADMIN = Caller(HOME, can_read=True, can_write=True, is_admin=True, onboarded=ONBOARDED)
NOW = "2026-11-21T10:00:00.000000Z"
LATER = "2026-11-21T11:00:00.000000Z"


def created(**extra: Any) -> dict[str, Any]:
    document, _ = editing.create(
        PARTNER, "r1", {"referralSource": "PartnerLed", "customerProfile": {"name": "C"}, **extra}, NOW
    )
    return document


@pytest.mark.parametrize(
    ("current", "new"),
    [("Pending", "Active"), ("Pending", "Lost"), ("Active", "Won"), ("Active", "Lost"), ("Won", "Won")],
)
def test_allowed_transitions(current: str, new: str) -> None:
    check_transition(ReferralStatus(current), ReferralStatus(new))


@pytest.mark.parametrize(
    ("current", "new"),
    [("Pending", "Won"), ("Active", "Pending"), ("Won", "Lost"), ("Lost", "Active"), ("Won", "Pending")],
)
def test_forbidden_transitions_raise_invalid_status_transition(current: str, new: str) -> None:
    with pytest.raises(InvalidStatusTransition):
        check_transition(ReferralStatus(current), ReferralStatus(new))


def test_enums_accept_names_in_any_case_and_seed_positions_but_not_booleans() -> None:
    document = created()
    assert Referral.model_validate({**document, "status": "lOsT"}).status is ReferralStatus.LOST
    assert Referral.model_validate({**document, "status": 1}).status is ReferralStatus.ACTIVE
    participants = [{**document["participants"][0], "status": 4}]
    assert Referral.model_validate({**document, "participants": participants}).participants[0].status.value == "Missed"
    with pytest.raises(ValueError, match="status"):
        Referral.model_validate({**document, "status": True})
    with pytest.raises(ValueError, match="status"):
        Referral.model_validate({**document, "status": 4})


def test_merge_patch_follows_rfc_7386() -> None:
    target = {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    assert merge_patch(target, {"a": {"b": None, "c": [3]}, "e": 1}) == {"a": {"c": [3]}, "d": "x", "e": 1}
    assert merge_patch(target, {"a": "flat"}) == {"a": "flat", "d": "x"}
    assert target == {"a": {"b": 1, "c": [1, 2]}, "d": "x"}, "the target is not modified in place"


def test_canonicalize_matches_names_case_insensitively_and_names_unknown_ones() -> None:
    body = {"CustomerProfile": {"NAME": "x", "address": {"PostalCode": "1"}}, "participants": [{"OrganizationId": A}]}
    assert canonicalize(body) == {
        "customerProfile": {"name": "x", "address": {"postalCode": "1"}},
        "participants": [{"organizationId": A}],
    }
    with pytest.raises(InvalidRequest) as unknown:
        canonicalize({"participants": [{"organizationId": A, "role": "x"}]})
    assert unknown.value.target == "participants[0].role"
    with pytest.raises(InvalidRequest):
        canonicalize({"status": "Active", "STATUS": "Lost"})
    with pytest.raises(InvalidRequest):
        canonicalize(["not", "an", "object"])


def test_changed_paths_go_one_level_deep() -> None:
    before = {"status": "Pending", "details": {"notes": "a", "currency": "EUR"}}
    after = {"status": "Active", "details": {"notes": "b", "currency": "EUR"}, "additionalInformation": "x"}
    assert changed_paths(before, after) == ["additionalInformation", "details.notes", "status"]


def test_update_without_change_is_none() -> None:
    document = created()
    assert editing.update(PARTNER, document, [], {"status": "pending", "customerProfile": {"name": "C"}}, LATER) is None


def test_an_empty_object_is_the_same_as_none() -> None:
    document = created()
    for details in ({}, {"notes": None}):
        assert editing.update(PARTNER, document, [], {"details": details}, LATER) is None
    with_address = created(customerProfile={"name": "C", "address": {}})
    assert "address" not in with_address["customerProfile"]
    updated, _ = editing.update(PARTNER, created(details={"notes": "n"}), [], {"details": {"notes": None}}, LATER) or (
        {},
        {},
    )
    assert "details" not in updated


def test_a_create_ignores_nulls() -> None:
    document = created(
        status=None,
        details=None,
        participants=None,
        createdDate=None,
        activities=None,
        customerProfile={"name": "C", "address": None},
    )
    assert document["status"] == "Pending"
    assert "details" not in document and "address" not in document["customerProfile"]
    assert [p["organizationId"] for p in document["participants"]] == [A]
    with pytest.raises(InvalidRequest, match="referralSource"):
        editing.create(PARTNER, "r2", {"referralSource": None, "customerProfile": {"name": "C"}}, NOW)


@pytest.mark.parametrize("status", ["Rejected", "Invited", "Missed", 2])
def test_the_creator_cannot_give_itself_another_status_than_accepted(status: object) -> None:
    participants = [{"organizationId": B}, {"organizationId": A, "status": status}]
    with pytest.raises(InvalidRequest) as raised:
        created(participants=participants)
    assert raised.value.target == "participants[1].status"
    users = [{"firstName": "Ada"}]
    document = created(participants=[{"organizationId": A, "status": "Accepted", "users": users}])
    assert document["participants"][0]["status"] == "Accepted" and document["participants"][0]["users"] == users


def test_error_messages_name_properties_not_values() -> None:
    for details in ({"closingDate": "\u0662\u0660\u0662\u0666-01-01"}, {"closingDate": "2026-02-30"}):
        with pytest.raises(InvalidRequest) as raised:
            editing.update(PARTNER, created(), [], {"details": details}, LATER)
        assert details["closingDate"] not in raised.value.message
    for email in ("secret\x82@example.com", "a@exa_mple.com", "a@[1.2.3.999]"):
        with pytest.raises(InvalidRequest) as raised:
            patch = {"participants": [{"organizationId": A, "users": [{"email": email}]}]}
            editing.update(PARTNER, created(), [], patch, LATER)
        assert "email address" in raised.value.message
        assert "\x82" not in raised.value.message and "exa_mple" not in raised.value.message
        assert "999" not in raised.value.message and "'_'" not in raised.value.message
    with pytest.raises(InvalidRequest) as raised:
        created(participants=[{"organizationId": B}, {"organizationId": B}])
    assert B not in raised.value.message and raised.value.target == "participants[1].organizationId"


def test_update_sets_updated_date_and_describes_the_change() -> None:
    document = created()
    updated, activity = editing.update(PARTNER, document, [], {"status": "Active"}, LATER) or ({}, {})
    assert updated["updatedDate"] == LATER and updated["createdDate"] == NOW
    assert activity == {
        "date": LATER,
        "organizationId": A,
        "action": "Updated",
        "fromStatus": "Pending",
        "toStatus": "Active",
        "changedProperties": ["status"],
        "changes": [{"property": "status", "from": "Pending", "to": "Active"}],
    }


def test_a_creation_records_every_tracked_value_from_nothing_and_each_first_participant_status() -> None:
    document, activity = editing.create(
        PARTNER,
        "r1",
        {
            "referralSource": "P2P",
            "customerProfile": {"name": "C", "address": {"city": "Bonn", "country": "DE"}},
            "details": {"dealValue": 25000, "currency": "EUR", "closingDate": "2026-12-31", "notes": "n"},
            "participants": [{"organizationId": B}],
        },
        NOW,
    )
    assert activity["changes"] == [
        {"property": "status", "to": "Pending"},
        {"property": "referralSource", "to": "P2P"},
        {"property": "details.dealValue", "to": 25000},
        {"property": "details.currency", "to": "EUR"},
        {"property": "details.closingDate", "to": "2026-12-31"},
        {"property": "customerProfile.address.country", "to": "DE"},
        {"property": f"participants[{A}].status", "to": "Accepted"},
        {"property": f"participants[{B}].status", "to": "Invited"},
    ]
    assert document["participants"][1]["status"] == "Invited"


def test_changes_give_from_and_to_for_tracked_properties_and_leave_out_an_absent_value() -> None:
    document = created(details={"dealValue": 100, "currency": "EUR"}, customerProfile={"name": "C"})
    patch = {
        "status": "Active",
        "details": {"dealValue": None, "currency": "USD", "closingDate": "2027-01-31"},
        "customerProfile": {"address": {"country": "FR"}},
    }
    updated, activity = editing.update(PARTNER, document, [], patch, LATER) or ({}, {})
    assert activity["changes"] == [
        {"property": "status", "from": "Pending", "to": "Active"},
        {"property": "details.dealValue", "from": 100},
        {"property": "details.currency", "from": "EUR", "to": "USD"},
        {"property": "details.closingDate", "to": "2027-01-31"},
        {"property": "customerProfile.address.country", "to": "FR"},
    ]
    assert activity["changedProperties"] == [
        "customerProfile.address",
        "details.closingDate",
        "details.currency",
        "details.dealValue",
        "status",
    ]
    _, removed = editing.update(PARTNER, updated, [], {"customerProfile": {"address": None}}, LATER) or ({}, {})
    assert removed["changes"] == [{"property": "customerProfile.address.country", "from": "FR"}]


def test_other_changes_are_named_in_changed_properties_only_with_no_values_in_the_history() -> None:
    document = created(participants=[{"organizationId": B}])
    secret = "Jane Roe jane@contoso.example +1 555 0100 confidential"
    patch = {
        "customerProfile": {"name": secret, "address": {"city": secret}, "contact": {"email": "jane@contoso.example"}},
        "customerRequirements": {"customerNeed": secret},
        "details": {"notes": secret},
        "additionalInformation": secret,
        "participants": [{"organizationId": A, "users": [{"firstName": "Jane", "email": "jane@contoso.example"}]}],
    }
    _, activity = editing.update(PARTNER, document, [], patch, LATER) or ({}, {})
    assert activity["changes"] == []
    assert activity["changedProperties"] == [
        "additionalInformation",
        "customerProfile.address",
        "customerProfile.contact",
        "customerProfile.name",
        "customerRequirements",
        "details",
        "participants",
    ]
    history = str(activity)
    assert "Jane" not in history and "contoso" not in history and "confidential" not in history


def test_a_participant_status_change_is_named_by_organization_and_an_invitation_starts_from_nothing() -> None:
    document = created(participants=[{"organizationId": B}])
    answered, activity = editing.update(
        OTHER, document, [], {"participants": [{"organizationId": B, "status": "Accepted"}]}, LATER
    ) or ({}, {})
    assert activity["changes"] == [{"property": f"participants[{B}].status", "from": "Invited", "to": "Accepted"}]
    _, invited = editing.update(
        OTHER, answered, [], {"participants": [{"organizationId": THIRD}], "status": "Lost"}, LATER
    ) or ({}, {})
    assert invited["changes"] == [
        {"property": "status", "from": "Pending", "to": "Lost"},
        {"property": f"participants[{THIRD}].status", "to": "Invited"},
    ]


def test_one_update_changes_at_most_ten_existing_participant_statuses_but_may_invite_many() -> None:
    document = created(participants=[{"organizationId": organization} for organization in INVITEES])
    assert len(document["participants"]) == Limits.PARTICIPANTS
    expire = [{"organizationId": organization, "status": "Expired"} for organization in INVITEES]
    limit = Limits.PARTICIPANT_STATUS_CHANGES
    _, activity = editing.update(ADMIN, document, [], {"participants": expire[:limit]}, LATER) or ({}, {})
    assert len(activity["changes"]) == limit
    with pytest.raises(InvalidRequest) as raised:
        editing.update(ADMIN, document, [], {"participants": expire[: limit + 1]}, LATER)
    assert raised.value.target == "participants"
    invited = created()
    many = [{"organizationId": organization} for organization in INVITEES]
    _, invitation = editing.update(PARTNER, invited, [], {"participants": many}, LATER) or ({}, {})
    assert len(invitation["changes"]) == len(INVITEES)


def test_the_largest_activity_an_update_can_write_stays_small() -> None:
    """The referral's row holds its newest activities beside a referral of up to REFERRAL_JSON_UNITS:
    shared/store.py keeps at least the newest 50 there, within 150 KB of UTF-8. The largest activity
    under the rules changes every tracked value to its longest form, the most participant statuses,
    and every other property; invitations are not limited per update, but there are 49 at most."""
    document = created(
        participants=[{"organizationId": organization} for organization in INVITEES],
        details={"dealValue": 1.2345678901234567e-05, "currency": "EUR", "closingDate": "2026-01-01", "notes": "n"},
        customerProfile={"name": "C", "id": "i", "address": {"country": "DE"}, "contact": {"lastName": "l"}},
        customerRequirements={"industries": ["x"], "products": ["p"], "services": ["s"], "solutions": "s"},
        additionalInformation="a",
    )
    patch = {
        "status": "Active",
        "referralSource": "WebDirect",
        "details": {"dealValue": 2.2345678901234567e-05, "currency": "USD", "closingDate": "2027-12-31", "notes": "m"},
        "customerProfile": {"name": "D", "id": "j", "address": {"country": "FR"}, "contact": {"lastName": "k"}},
        "customerRequirements": {"industries": ["y"], "products": ["q"], "services": ["t"], "solutions": "t"},
        "additionalInformation": "b",
        "participants": [
            {"organizationId": organization, "status": "Missed", "users": [{"firstName": "f"}]}
            for organization in INVITEES[: Limits.PARTICIPANT_STATUS_CHANGES]
        ],
    }
    _, largest = editing.update(ADMIN, document, [], patch, LATER) or ({}, {})
    assert len(largest["changes"]) == len(TRACKED_PROPERTIES) + Limits.PARTICIPANT_STATUS_CHANGES
    size = len(to_json(largest).encode("utf-8"))
    assert size < 2100, size  # about 2 KB (440 bytes without `changes`)
    invitation = len(to_json({"property": f"participants[{INVITEES[0]}].status", "to": "Invited"}))
    assert ACTIVITIES_PER_HISTORY_ROW * (size + 1) + len(INVITEES) * (invitation + 1) < 150_000


def test_activities_with_changes_and_without_them_are_valid_and_read_back_unchanged() -> None:
    _, activity = editing.update(PARTNER, created(), [], {"status": "Active"}, LATER) or ({}, {})
    written_before = {key: value for key, value in activity.items() if key != "changes"}
    for item in (activity, written_before):
        assert Activity.model_validate(item).to_json_dict() == item
    # GET-modify-POST sends them back, under any spelling of their names.
    assert canonicalize({"Activities": [{"Changes": [{"PROPERTY": "status", "From": "Pending", "TO": "Active"}]}]}) == {
        "activities": [{"changes": [{"property": "status", "from": "Pending", "to": "Active"}]}]
    }
    with pytest.raises(ValueError, match="changes"):
        Activity.model_validate({**activity, "changes": [{"property": "status", "from_": "Pending"}]})


def test_a_referral_larger_than_the_limit_is_refused() -> None:
    document = created()
    huge = {"details": {"notes": "n" * Limits.LONG_TEXT}, "additionalInformation": "a" * Limits.LONG_TEXT}
    participants = [
        {
            "organizationId": organization,
            "users": [{"firstName": "f" * 256, "lastName": "l" * 256, "email": f"u{i}@example.com"} for i in range(10)],
        }
        for organization in INVITEES
    ]
    with pytest.raises(PayloadTooLarge):  # only an admin writes users into other organizations' entries
        editing.update(ADMIN, document, [], {**huge, "participants": participants}, LATER)


def test_dealvalue_needs_a_currency_and_a_finite_non_negative_amount() -> None:
    for details in (
        {"dealValue": 5},
        {"dealValue": -1, "currency": "USD"},
        {"dealValue": "5", "currency": "USD"},
        {"dealValue": 1e16, "currency": "USD"},
        {"currency": "usd"},
        {"closingDate": "2026-02-30"},
    ):
        with pytest.raises(InvalidRequest):
            editing.update(PARTNER, created(), [], {"details": details}, LATER)


def test_text_rejects_control_characters_and_unpaired_surrogates_but_keeps_any_unicode() -> None:
    for bad in ("a\x00b", "bell\x07", "csi\x9b", "\ud800"):
        with pytest.raises(InvalidRequest):
            editing.update(PARTNER, created(), [], {"additionalInformation": bad}, LATER)
    text = "Zürich 東京 🚀 مرحبا\ttab\nline"
    updated, _ = editing.update(PARTNER, created(), [], {"additionalInformation": text}, LATER) or ({}, {})
    assert updated["additionalInformation"] == text


def test_non_participant_rules_are_enforced_by_policy() -> None:
    document = created(participants=[{"organizationId": B}])
    with pytest.raises(AccessDenied):
        editing.update(OTHER, document, [], {"status": "Active"}, LATER)
    updated, _ = editing.update(
        OTHER, document, [], {"participants": [{"organizationId": B, "status": "Accepted"}]}, LATER
    ) or ({}, {})
    assert [p["status"] for p in updated["participants"]] == ["Accepted", "Accepted"]
