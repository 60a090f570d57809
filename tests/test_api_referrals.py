"""The HTTP contract of both functions, against a real Azurite."""

from __future__ import annotations

import json
import logging
from typing import Any

import azure.functions as func
import pytest

import update_referral
from shared import service
from shared.store import ReferralStore
from tests.conftest import HOME, PARTNER_A, PARTNER_B, Api, minimal_referral, new_id


def create(api: Api, referral_id: str | None = None, token: str | None = None, **extra: Any) -> Any:
    referral_id = referral_id or new_id()
    reply = api.post(referral_id, minimal_referral(**extra), token)
    assert reply.status == 201, reply.body
    return reply


def test_create_returns_201_with_location_etag_and_the_whole_referral(api: Api) -> None:
    referral_id = new_id()
    reply = api.post(referral_id, minimal_referral(details={"dealValue": 1200.5, "currency": "EUR"}))
    assert reply.status == 201
    assert reply.headers["Location"] == f"http://localhost:7071/api/v1/referrals/{referral_id}"
    etag = reply.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    body = reply.json
    assert body["id"] == referral_id
    assert body["status"] == "Pending"
    assert body["createdDate"] == body["updatedDate"] and body["createdDate"].endswith("Z")
    assert body["details"] == {"dealValue": 1200.5, "currency": "EUR"}
    [creator] = body["participants"]
    assert creator["organizationId"] == PARTNER_A and creator["status"] == "Accepted"
    [activity] = body["activities"]
    assert activity["action"] == "Created" and activity["toStatus"] == "Pending"
    assert activity["organizationId"] == PARTNER_A
    assert "fromStatus" not in activity


def test_location_names_the_referral_once_whatever_the_request_url_ends_with(api: Api) -> None:
    for suffix in ("/", "?code=key", "/?code=key"):
        referral_id = new_id()
        request = func.HttpRequest(
            method="POST",
            url=f"http://localhost:7071/api/v1/referrals/{referral_id}{suffix}",
            headers={"Authorization": f"Bearer {api.token()}", "Content-Type": "application/json"},
            params={},
            route_params={"referralId": referral_id},
            body=json.dumps(minimal_referral()).encode(),
        )
        response = update_referral.main(request)
        assert response.status_code == 201
        assert response.headers["Location"] == f"http://localhost:7071/api/v1/referrals/{referral_id}"


def test_get_returns_what_post_returned_with_the_same_etag(api: Api) -> None:
    created = create(api)
    fetched = api.get(created.json["id"])
    assert fetched.status == 200
    assert fetched.json == created.json
    assert fetched.headers["ETag"] == created.headers["ETag"]


def test_get_with_matching_if_none_match_is_304_without_body(api: Api) -> None:
    created = create(api)
    reply = api.get(created.json["id"], headers={"If-None-Match": created.headers["ETag"]})
    assert reply.status == 304
    assert reply.body == b""
    assert reply.headers["ETag"] == created.headers["ETag"]
    assert api.get(created.json["id"], headers={"If-None-Match": '"other"'}).status == 200
    assert api.get(created.json["id"], headers={"If-None-Match": "*"}).status == 304
    weak = api.get(created.json["id"], headers={"If-None-Match": "W/" + created.headers["ETag"]})
    assert weak.status == 304, "If-None-Match compares weakly"


def test_update_merges_nested_objects_and_replaces_lists(api: Api) -> None:
    created = create(
        api,
        customerProfile={"name": "Contoso", "address": {"city": "Berlin", "country": "DE"}},
        customerRequirements={"industries": ["Retail", "Health"]},
    )
    referral_id = created.json["id"]
    reply = api.post(
        referral_id,
        {
            "customerProfile": {"address": {"city": "Munich", "postalCode": None}},
            "customerRequirements": {"industries": ["Finance"]},
        },
    )
    assert reply.status == 200, reply.body
    assert reply.json["customerProfile"] == {"name": "Contoso", "address": {"city": "Munich", "country": "DE"}}
    assert reply.json["customerRequirements"] == {"industries": ["Finance"]}
    assert reply.headers["ETag"] != created.headers["ETag"]
    assert reply.json["updatedDate"] > created.json["updatedDate"]
    assert reply.json["activities"][-1]["changedProperties"] == [
        "customerProfile.address",
        "customerRequirements.industries",
    ]


def test_null_removes_an_optional_property(api: Api) -> None:
    created = create(api, additionalInformation="call after 5pm")
    reply = api.post(created.json["id"], {"additionalInformation": None})
    assert reply.status == 200
    assert "additionalInformation" not in reply.json


def test_pascal_case_names_and_enum_positions_from_the_seed_documents_are_accepted(api: Api) -> None:
    referral_id = new_id()
    reply = api.post(
        referral_id,
        {
            "Id": referral_id,
            "ReferralSource": 3,
            "Status": "ACTIVE",
            "CustomerProfile": {"Name": "Fabrikam", "Contact": {"Email": "ana@fabrikam.example"}},
        },
    )
    assert reply.status == 201, reply.body
    assert reply.json["referralSource"] == "P2P"
    assert reply.json["status"] == "Active"
    assert reply.json["customerProfile"]["contact"] == {"email": "ana@fabrikam.example"}


def test_status_change_appends_an_activity_and_same_status_again_is_a_no_op(api: Api) -> None:
    created = create(api)
    referral_id = created.json["id"]
    moved = api.post(referral_id, {"status": "Active"})
    assert moved.status == 200
    activity = moved.json["activities"][-1]
    assert (activity["action"], activity["fromStatus"], activity["toStatus"]) == ("Updated", "Pending", "Active")
    assert activity["changedProperties"] == ["status"]
    again = api.post(referral_id, {"status": "active"})
    assert again.status == 200
    assert again.headers["ETag"] == moved.headers["ETag"]
    assert again.json == moved.json


def test_invalid_status_transition_is_409(api: Api) -> None:
    created = create(api)
    reply = api.post(created.json["id"], {"status": "Won"})
    assert reply.status == 409
    assert reply.error_code == "invalidStatusTransition"
    assert reply.headers["x-ms-error-code"] == "invalidStatusTransition"
    assert reply.json["error"]["target"] == "status"


def test_final_status_cannot_change(api: Api) -> None:
    created = create(api)
    referral_id = created.json["id"]
    assert api.post(referral_id, {"status": "Lost"}).status == 200
    assert api.post(referral_id, {"status": "Active"}).status == 409


def test_creating_as_won_is_an_invalid_transition(api: Api) -> None:
    reply = api.post(new_id(), minimal_referral(status="Won"))
    assert reply.status == 409


def test_create_requires_referral_source_and_customer_name(api: Api) -> None:
    no_source = api.post(new_id(), {"customerProfile": {"name": "X"}})
    assert no_source.status == 400 and no_source.json["error"]["target"] == "referralSource"
    no_name = api.post(new_id(), {"referralSource": "P2P"})
    assert no_name.status == 400 and no_name.json["error"]["target"] == "customerProfile"


def test_unknown_property_is_400_naming_it(api: Api) -> None:
    reply = api.post(new_id(), minimal_referral(customerProfile={"name": "X", "shoeSize": 42}))
    assert reply.status == 400
    assert reply.json["error"]["target"] == "customerProfile.shoeSize"
    assert "shoeSize" in reply.json["error"]["message"]


def test_read_only_properties_round_trip_but_cannot_change(api: Api) -> None:
    created = create(api)
    document = created.json
    document["additionalInformation"] = "round trip"
    reply = api.post(document["id"], document, headers={"If-Match": created.headers["ETag"]})
    assert reply.status == 200, reply.body
    assert reply.json["additionalInformation"] == "round trip"
    changed = api.post(document["id"], {"createdDate": "2020-01-01T00:00:00.000000Z"})
    assert changed.status == 400 and changed.json["error"]["target"] == "createdDate"
    forged = api.post(document["id"], {"activities": []})
    assert forged.status == 400 and forged.json["error"]["target"] == "activities"


def test_body_id_different_from_path_is_400(api: Api) -> None:
    reply = api.post(new_id(), minimal_referral(id="something-else"))
    assert reply.status == 400 and reply.json["error"]["target"] == "id"


def test_invalid_referral_ids_are_400(api: Api) -> None:
    for bad in ["-starts-with-dash", "has space", "quote'", "a" * 129, "slash%2Fx", "ünï"]:
        reply = api.get(bad)
        assert reply.status == 400, bad
        assert reply.json["error"]["target"] == "referralId"


def test_if_match_mismatch_or_absent_referral_is_412(api: Api) -> None:
    created = create(api)
    referral_id = created.json["id"]
    stale = api.post(referral_id, {"status": "Active"}, headers={"If-Match": '"stale"'})
    assert stale.status == 412 and stale.error_code == "preconditionFailed"
    weak = api.post(referral_id, {"status": "Active"}, headers={"If-Match": "W/" + created.headers["ETag"]})
    assert weak.status == 412, "If-Match compares strongly: a weak tag never matches"
    ok = api.post(referral_id, {"status": "Active"}, headers={"If-Match": created.headers["ETag"]})
    assert ok.status == 200
    absent = api.post(new_id(), minimal_referral(), headers={"If-Match": '"x"'})
    assert absent.status == 412


def test_media_type_size_and_malformed_json(api: Api) -> None:
    referral_id = new_id()
    wrong_type = api.post(referral_id, b"{}", headers={"Content-Type": "text/plain"})
    assert wrong_type.status == 415 and wrong_type.error_code == "unsupportedMediaType"
    too_large = api.post(referral_id, b" " * (256 * 1024 + 1))
    assert too_large.status == 413 and too_large.error_code == "payloadTooLarge"
    malformed = api.post(referral_id, b'{"status": ')
    assert malformed.status == 400 and malformed.error_code == "invalidRequest"
    duplicate = api.post(referral_id, b'{"status": "Active", "status": "Lost"}')
    assert duplicate.status == 400
    case_duplicate = api.post(referral_id, b'{"status": "Active", "Status": "Lost"}')
    assert case_duplicate.status == 400


def test_every_response_has_a_request_id_and_echoes_the_client_request_id(api: Api) -> None:
    reply = api.get(new_id(), headers={"x-ms-client-request-id": "crm-42"})
    assert reply.status == 404
    assert reply.headers["x-ms-request-id"]
    assert reply.headers["x-ms-client-request-id"] == "crm-42"


def test_validation_errors_name_the_property(api: Api) -> None:
    cases = {
        "customerProfile.contact.email": {"customerProfile": {"name": "X", "contact": {"email": "not-an-email"}}},
        "customerProfile.address.country": {"customerProfile": {"name": "X", "address": {"country": "XX"}}},
        "details": {"customerProfile": {"name": "X"}, "details": {"dealValue": 5}},
        "details.currency": {"customerProfile": {"name": "X"}, "details": {"dealValue": 5, "currency": "ABC"}},
        "details.dealValue": {"customerProfile": {"name": "X"}, "details": {"dealValue": -1, "currency": "USD"}},
        "customerProfile.name": {"customerProfile": {"name": "x" * 257}},
    }
    for target, body in cases.items():
        reply = api.post(new_id(), {"referralSource": "P2P", **body})
        assert reply.status == 400, (target, reply.body)
        assert reply.json["error"]["target"].startswith(target), (target, reply.json)


def test_error_envelope_never_contains_a_stack_trace(api: Api) -> None:
    reply = api.post(new_id(), b"[1, 2")
    text = reply.body.decode()
    assert set(json.loads(text)) == {"error"}
    assert "Traceback" not in text


def test_missing_token_is_401_with_bearer_challenge(api: Api) -> None:
    reply = api.get(new_id(), token="")
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert reply.error_code == "unauthenticated"


def test_other_organization_gets_404_for_get_and_post(api: Api) -> None:
    created = create(api)
    referral_id = created.json["id"]
    other = api.token(PARTNER_B)
    assert api.get(referral_id, other).status == 404
    hidden = api.post(referral_id, {"status": "Active"}, other)
    assert hidden.status == 404 and hidden.error_code == "itemNotFound"
    assert api.get(referral_id).json["status"] == "Pending"


def test_admin_sees_and_changes_every_referral(api: Api) -> None:
    created = create(api)
    referral_id = created.json["id"]
    admin = api.admin_token()
    assert api.get(referral_id, admin).status == 200
    reply = api.post(referral_id, {"referralSource": "AgentLed"}, admin)
    assert reply.status == 200 and reply.json["referralSource"] == "AgentLed"
    assert reply.json["activities"][-1]["organizationId"] == HOME


def test_each_request_logs_one_structured_line_without_customer_data(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    referral_id = new_id()
    secret_email = "private.person@contoso.example"
    with caplog.at_level(logging.INFO, logger="referrals"):
        reply = api.post(
            referral_id,
            minimal_referral(customerProfile={"name": "Hidden Name", "contact": {"email": secret_email}}),
            headers={"x-ms-client-request-id": "crm-7"},
        )
    assert reply.status == 201
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "referrals.http"]
    assert lines == [
        {
            "event": "request",
            "method": "POST",
            "status": 201,
            "durationMs": lines[0]["durationMs"],
            "requestId": reply.headers["x-ms-request-id"],
            "clientRequestId": "crm-7",
            "organizationId": PARTNER_A,
            "referralId": referral_id,
        }
    ]
    everything = " ".join(record.getMessage() for record in caplog.records)
    assert secret_email not in everything and "Hidden Name" not in everything


def test_if_match_star_updates_an_existing_referral(api: Api) -> None:
    referral_id = create(api).json["id"]
    reply = api.post(referral_id, {"status": "Active"}, headers={"If-Match": "*"})
    assert reply.status == 200 and reply.json["status"] == "Active"


def test_entity_tag_lists_are_matched_member_by_member(api: Api) -> None:
    reply = create(api)
    referral_id, etag = reply.json["id"], reply.headers["ETag"]
    assert api.get(referral_id, headers={"If-None-Match": f'"other", {etag}'}).status == 304
    assert api.post(referral_id, {"status": "Active"}, headers={"If-Match": f'"other", {etag}'}).status == 200


def test_responses_are_never_cached(api: Api) -> None:
    referral_id = new_id()
    for reply in (api.post(referral_id, minimal_referral()), api.get(referral_id), api.get(new_id())):
        assert reply.headers["Cache-Control"] == "no-store"


def test_a_create_cannot_date_itself(api: Api) -> None:
    # Back- or future-dating would place a referral anywhere in every listing.
    for name in ("createdDate", "updatedDate"):
        referral_id = new_id()
        reply = api.post(referral_id, minimal_referral(**{name: "2000-01-01T00:00:00.000000Z"}))
        assert reply.status == 400 and reply.json["error"]["target"] == name
        assert api.get(referral_id).status == 404


def test_a_new_participant_entry_cannot_carry_fields_the_service_sets(api: Api) -> None:
    for field in ("id", "invitedByParticipantId"):
        reply = api.post(new_id(), minimal_referral(participants=[{"organizationId": PARTNER_B, field: "x"}]))
        assert reply.status == 400 and reply.json["error"]["target"] == f"participants[0].{field}"


def test_updated_date_advances_even_when_the_clock_lags(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    created = create(api).json
    monkeypatch.setattr(service, "utc_now", lambda: "2000-01-01T00:00:00.000000Z")
    updated = api.post(created["id"], {"status": "Active"}).json
    assert updated["updatedDate"] > created["updatedDate"]
    assert [activity["date"] for activity in updated["activities"]] == sorted(
        activity["date"] for activity in updated["activities"]
    )


def test_an_unexpected_error_is_a_500_that_reveals_nothing(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret internals at /srv/app/shared/store.py")

    monkeypatch.setattr(ReferralStore, "read", crash)
    reply = api.get(new_id())
    assert reply.status == 500 and reply.error_code == "generalException"
    assert "secret internals" not in reply.body.decode() and "Traceback" not in reply.body.decode()


def test_a_create_ignores_a_null_id(api: Api) -> None:
    referral_id = new_id()
    reply = api.post(referral_id, minimal_referral(id=None))
    assert reply.status == 201 and reply.json["id"] == referral_id
