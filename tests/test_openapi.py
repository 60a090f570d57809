"""openapi.yaml is a valid OpenAPI 3.1 document and stays in step with the models.

The expectations are derived from the pydantic models (their fields, required-ness, enums and the
constraints in each field's metadata) and from `Limits`, so a field or a limit changed on one side
only fails here.
"""

from __future__ import annotations

import re
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any, Union

import annotated_types
import email_validator
import pycountry
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

import shared.errors
from shared import history, listing
from shared.model import (
    MAX_CHANGES,
    READ_ONLY_PROPERTIES,
    REFERRAL_ID_PATTERN,
    Activity,
    ActivityAction,
    ActivityChange,
    Address,
    Contact,
    CustomerProfile,
    CustomerRequirements,
    Limits,
    Participant,
    ParticipantStatus,
    Referral,
    ReferralDetails,
    ReferralSource,
    ReferralStatus,
)

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
SCHEMAS: dict[str, Any] = SPEC["components"]["schemas"]

# model -> (schema of the model as returned, schema of the model as sent in a merge patch)
MODELS: dict[type[BaseModel], tuple[str, str | None]] = {
    Referral: ("Referral", "ReferralPatch"),
    CustomerProfile: ("CustomerProfile", "CustomerProfilePatch"),
    Address: ("Address", "AddressPatch"),
    Contact: ("Contact", "ContactPatch"),
    CustomerRequirements: ("CustomerRequirements", "CustomerRequirementsPatch"),
    ReferralDetails: ("ReferralDetails", "ReferralDetailsPatch"),
    Participant: ("Participant", "ParticipantPatch"),
    Activity: ("Activity", None),
    ActivityChange: ("ActivityChange", None),
}
ENUMS: list[type[Enum]] = [ReferralStatus, ReferralSource, ParticipantStatus, ActivityAction]
# Properties a model does not hold but the wire documents do: the referral's activities.
EXTRA_PROPERTIES = {"Referral": {"activities"}, "ReferralPatch": {"activities"}}
# Required properties a patch may still send as null, where null removes the object that holds them:
# a participant's status (an admin's removal of an Invited entry, shared/editing.py).
NULL_REMOVES_THE_ENTRY = {("ParticipantPatch", "status")}


def test_the_spec_is_valid_openapi_3_1() -> None:
    assert SPEC["openapi"].startswith("3.1")
    validate(SPEC)


# ---- Deriving expectations from the models --------------------------------------------------------------


def expected(annotation: Any, metadata: list[Any] | tuple[Any, ...] = ()) -> dict[str, Any]:
    """What a field's annotation and metadata say about its JSON: type, bounds, items, model or enum."""
    bounds: dict[str, Any] = {}
    for item in metadata:
        _collect(item, bounds)
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        return _merge(expected(inner, extra), bounds)
    if origin in (Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if set(options) == {int, float}:
            return _merge({"type": "number"}, bounds)
        if len(options) > 1:  # a value of one of several shapes (ActivityChange's from/to)
            return {"anyOf": [expected(option) for option in options]}
        return _merge(expected(options[0]), bounds)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        return _merge({"type": "array", "items": expected(item_type)}, bounds)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {"model": annotation}
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return {"enum": annotation}
    if annotation is str:
        return _merge({"type": "string"}, bounds)
    raise AssertionError(f"unexpected annotation {annotation!r}")


def _collect(item: Any, bounds: dict[str, Any]) -> None:
    if isinstance(item, FieldInfo):
        for inner in item.metadata:
            _collect(inner, bounds)
    elif isinstance(item, annotated_types.MaxLen):
        bounds["max"] = item.max_length
    elif isinstance(item, annotated_types.MinLen):
        bounds["min"] = item.min_length
    elif isinstance(item, annotated_types.Ge):
        bounds["minimum"] = item.ge
    elif isinstance(item, annotated_types.Le):
        bounds["maximum"] = item.le


def _merge(shape: dict[str, Any], bounds: dict[str, Any]) -> dict[str, Any]:
    result = dict(shape)
    if "max" in bounds:
        result["maxItems" if shape.get("type") == "array" else "maxLength"] = bounds["max"]
    if "min" in bounds:
        result["minItems" if shape.get("type") == "array" else "minLength"] = bounds["min"]
    for name in ("minimum", "maximum"):
        if name in bounds:
            result[name] = bounds[name]
    return result


# ---- Reading the spec -----------------------------------------------------------------------------------


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """Follow $ref (merging sibling keywords such as description or readOnly)."""
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = {**SCHEMAS[name], **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def ref_name(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref")
    return ref.removeprefix("#/components/schemas/") if ref else None


def without_null(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The schema of a property's non-null values, and whether null is allowed."""
    options = schema.get("anyOf")
    if options and {"type": "null"} in options:
        rest = [option for option in options if option != {"type": "null"}]
        assert len(rest) == 1, schema
        return rest[0], True
    return schema, False


def check_property(owner: str, name: str, want: dict[str, Any], schema: dict[str, Any], patch: bool) -> None:
    where = f"{owner}.{name}"
    if "model" in want:
        names = MODELS[want["model"]]
        assert ref_name(schema) == names[1 if patch else 0], where
        return
    if "enum" in want:
        enum_name = want["enum"].__name__
        assert ref_name(schema) == (f"{enum_name}Input" if patch else enum_name), where
        return
    resolved = resolve(schema)
    if "anyOf" in want:
        assert len(resolved["anyOf"]) == len(want["anyOf"]), where
        for index, (option, option_schema) in enumerate(zip(want["anyOf"], resolved["anyOf"], strict=True)):
            check_property(owner, f"{name}|{index}", option, option_schema, patch)
        return
    assert resolved.get("type") == want["type"], where
    for keyword in ("maxLength", "minLength", "maxItems", "minItems", "minimum", "maximum"):
        assert resolved.get(keyword) == want.get(keyword), f"{where}: {keyword}"
    if want["type"] == "array":
        check_property(owner, f"{name}[]", want["items"], resolved["items"], patch)


def wire_fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """A model's fields by their names on the wire (an alias where the field has one: `from`)."""
    return {info.alias or name: info for name, info in model.model_fields.items()}


@pytest.mark.parametrize("model", list(MODELS), ids=lambda model: model.__name__)
def test_every_model_field_is_in_its_schema_with_the_same_limits_and_vice_versa(model: type[BaseModel]) -> None:
    name, _ = MODELS[model]
    schema = SCHEMAS[name]
    properties = schema["properties"]
    fields = wire_fields(model)
    assert set(properties) == set(fields) | EXTRA_PROPERTIES.get(name, set())
    assert schema["additionalProperties"] is False  # the models forbid extra properties
    required = {field for field, info in fields.items() if info.is_required()}
    assert set(schema.get("required", [])) == required | EXTRA_PROPERTIES.get(name, set())
    for field, info in fields.items():
        check_property(name, field, expected(info.annotation, info.metadata), properties[field], patch=False)


@pytest.mark.parametrize("model", [m for m, names in MODELS.items() if names[1]], ids=lambda model: model.__name__)
def test_every_model_field_is_in_its_merge_patch_schema_nullable_when_optional(model: type[BaseModel]) -> None:
    name = MODELS[model][1]
    assert name is not None
    schema = SCHEMAS[name]
    properties = schema["properties"]
    assert set(properties) == set(model.model_fields) | EXTRA_PROPERTIES.get(name, set())
    assert schema["additionalProperties"] is False
    for field, info in model.model_fields.items():
        prop = properties[field]
        if prop.get("readOnly"):
            continue  # sent back unchanged only; checked below against the read-only lists
        value_schema, nullable = without_null(prop)
        # JSON merge patch: null removes a property, so only optional properties may be null.
        assert nullable == (not info.is_required() or (name, field) in NULL_REMOVES_THE_ENTRY), f"{name}.{field}"
        check_property(name, field, expected(info.annotation, info.metadata), value_schema, patch=True)


def test_read_only_properties_are_the_models_read_only_ones() -> None:
    patch = SCHEMAS["ReferralPatch"]["properties"]
    assert {name for name, prop in patch.items() if prop.get("readOnly")} == set(READ_ONLY_PROPERTIES)
    participant = SCHEMAS["ParticipantPatch"]["properties"]
    assert {name for name, prop in participant.items() if prop.get("readOnly")} == {"id", "invitedByParticipantId"}
    assert SCHEMAS["ParticipantPatch"]["required"] == ["organizationId"]


@pytest.mark.parametrize("enum", ENUMS, ids=lambda enum: enum.__name__)
def test_enums_match_by_name_and_position(enum: type[Enum]) -> None:
    names = [member.value for member in enum]
    assert SCHEMAS[enum.__name__]["enum"] == names
    accepted = SCHEMAS.get(f"{enum.__name__}Input")
    if enum is ActivityAction:
        assert accepted is None  # never sent
        return
    assert accepted is not None
    canonical, by_name, by_position = accepted["anyOf"]
    assert canonical == {"$ref": f"#/components/schemas/{enum.__name__}"}
    assert (by_position["type"], by_position["minimum"], by_position["maximum"]) == ("integer", 0, len(names) - 1)
    pattern = ecma(by_name["pattern"])
    for value in names:
        for spelling in (value, value.lower(), value.upper(), value.swapcase()):
            assert pattern.search(spelling), spelling
        assert not pattern.search(value + "x") and not pattern.search(" " + value)


def test_enum_patterns_accept_exactly_what_the_models_accept() -> None:
    for enum in (ReferralStatus, ReferralSource, ParticipantStatus):
        pattern = ecma(SCHEMAS[f"{enum.__name__}Input"]["anyOf"][1]["pattern"])
        names = {member.value.lower() for member in enum}
        for candidate in [*(m.value for m in enum), "pending ", "P 2P", "Wonn", "won", "ACTIVE", "lost\n", "Ａctive"]:
            assert bool(pattern.search(candidate)) == (candidate.lower() in names), candidate


def test_country_and_currency_codes_are_the_ones_the_model_accepts() -> None:
    assert set(SCHEMAS["CountryCode"]["enum"]) == {country.alpha_2 for country in pycountry.countries}
    assert set(SCHEMAS["CurrencyCode"]["enum"]) == {currency.alpha_3 for currency in pycountry.currencies}


def test_limits_outside_the_models_match() -> None:
    assert SCHEMAS["Referral"]["properties"]["activities"]["maxItems"] == Limits.ACTIVITIES_RETURNED
    assert SCHEMAS["ReferralPatch"]["properties"]["activities"]["maxItems"] == Limits.ACTIVITIES_RETURNED
    assert SCHEMAS["ReferralId"]["maxLength"] == Limits.ID
    assert SCHEMAS["ReferralId"]["pattern"] == REFERRAL_ID_PATTERN.pattern
    assert f"{Limits.REQUEST_BODY_BYTES:,} bytes" in SPEC["info"]["description"]
    assert f"{Limits.REFERRAL_JSON_UNITS:,} UTF-16" in SPEC["components"]["responses"]["PayloadTooLarge"]["description"]
    parameters = {p["name"]: p["schema"] for p in SPEC["paths"]["/v1/referrals"]["get"]["parameters"] if "name" in p}
    assert (parameters["top"]["minimum"], parameters["top"]["maximum"]) == (1, listing.MAX_TOP)
    assert parameters["top"]["default"] == listing.DEFAULT_TOP
    assert SCHEMAS["ReferralPage"]["properties"]["value"]["maxItems"] == listing.MAX_TOP
    operation = SPEC["paths"]["/v1/referrals/{referralId}/activities"]["get"]
    parameters = {p["name"]: p["schema"] for p in operation["parameters"] if "name" in p}
    assert (parameters["top"]["minimum"], parameters["top"]["maximum"]) == (1, history.MAX_TOP)
    assert parameters["top"]["default"] == history.DEFAULT_TOP
    assert parameters["skipToken"]["maxLength"] == history.MAX_TOKEN_LENGTH
    assert SCHEMAS["ActivityPage"]["properties"]["value"]["maxItems"] == history.MAX_TOP
    assert SCHEMAS["Activity"]["properties"]["changes"]["maxItems"] == MAX_CHANGES
    update = SPEC["paths"]["/v1/referrals/{referralId}"]["post"]["description"]
    assert f"at most {Limits.PARTICIPANT_STATUS_CHANGES} participants" in " ".join(update.split())
    open_slots = Limits.PARTICIPANTS - Limits.RESERVED_PARTICIPANTS
    assert f"at most {Limits.PENDING_INVITATIONS_PER_INVITER} of its invitations pending" in " ".join(update.split())
    assert f"past {open_slots} participants: the last {Limits.RESERVED_PARTICIPANTS} places" in " ".join(update.split())


def test_error_codes_are_the_ones_the_service_raises() -> None:
    codes = {
        error.code
        for error in vars(shared.errors).values()
        if isinstance(error, type) and issubclass(error, shared.errors.ApiError)
    }
    assert set(SCHEMAS["ErrorCode"]["enum"]) == codes


EXPECTED_RESPONSES = {
    ("/v1/referrals", "get"): {"200", "400", "401", "403", "410", "414", "500", "503"},
    ("/v1/referrals/{referralId}", "get"): {"200", "304", "400", "401", "403", "404", "414", "500", "503"},
    ("/v1/referrals/{referralId}/activities", "get"): {"200", "400", "401", "403", "404", "414", "500", "503"},
    ("/v1/referrals/{referralId}", "post"): {
        "200",
        "201",
        "400",
        "401",
        "403",
        "404",
        "409",
        "412",
        "413",
        "414",
        "415",
        "500",
        "503",
    },
    ("/v1/subscriptions", "get"): {"200", "401", "403", "414", "500", "503"},
    ("/v1/subscriptions", "post"): {"201", "400", "401", "403", "413", "414", "415", "500", "503"},
    ("/v1/subscriptions/{subscriptionId}", "get"): {"200", "401", "403", "404", "414", "500", "503"},
    ("/v1/subscriptions/{subscriptionId}", "post"): {
        "200", "400", "401", "403", "404", "413", "414", "415", "500", "503"
    },
    ("/v1/subscriptions/{subscriptionId}", "delete"): {"204", "401", "403", "404", "414", "500", "503"},
}


@pytest.mark.parametrize("operation", list(EXPECTED_RESPONSES), ids=lambda op: f"{op[1].upper()} {op[0]}")
def test_every_operation_documents_its_responses_and_headers(operation: tuple[str, str]) -> None:
    path, method = operation
    responses = SPEC["paths"][path][method]["responses"]
    assert set(responses) == EXPECTED_RESPONSES[operation]
    for status, response in responses.items():
        if "$ref" in response:
            response = SPEC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
        if status == "414":
            assert "content" not in response  # the host's answer, not the API's: nothing is promised
            continue
        headers = response["headers"]
        assert "x-ms-request-id" in headers and "x-ms-client-request-id" in headers, status
        if status.startswith(("4", "5")):
            assert "x-ms-error-code" in headers, status
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    if "200" in responses and method == "get" and path == "/v1/referrals/{referralId}":
        assert "ETag" in responses["200"]["headers"] and "ETag" in responses["304"]["headers"]
    if method == "post" and path.startswith("/v1/referrals"):
        assert {"ETag", "Location"} <= set(responses["201"]["headers"])
    if method == "post" and path == "/v1/subscriptions":
        assert "Location" in responses["201"]["headers"]
    assert "WWW-Authenticate" in SPEC["components"]["responses"]["Unauthenticated"]["headers"]
    assert "Retry-After" in SPEC["components"]["responses"]["ServiceNotAvailable"]["headers"]


def test_security_is_the_bearer_token_and_the_function_key() -> None:
    schemes = SPEC["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert (schemes["functionKey"]["type"], schemes["functionKey"]["in"]) == ("apiKey", "header")
    assert SPEC["security"] == [{"bearerAuth": []}]  # the key is the Functions host's, see its description


# ---- Patterns agree with the validators they describe ---------------------------------------------------


def ecma(pattern: str) -> re.Pattern[str]:
    """A JSON Schema pattern (ECMA-262) in Python: there `$` also matches before a final newline."""
    return re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern)


TEXT = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["", " ", "\t", "a\x00", "\x7f", "\u3000", "\u00a0x", "\x85", "a\x9b", "\x80", "\ufeff", "x\n", "\u2028", "ok"]
)


def _accepts(model: type[BaseModel], document: dict[str, Any]) -> bool:
    try:
        model.model_validate(document)
    except ValidationError:
        return False
    return True


@settings(max_examples=300, derandomize=True, deadline=None)
@given(TEXT)
def test_text_patterns_match_the_text_validators(text: str) -> None:
    short = ecma(SCHEMAS["ShortText"]["pattern"])
    required = ecma(SCHEMAS["RequiredText"]["pattern"])
    assert bool(short.search(text)) == _accepts(Contact, {"firstName": text})
    assert bool(required.search(text)) == _accepts(CustomerProfile, {"name": text})


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.uuids().map(str) | st.text("0123456789abcdefABCDEF-{}", min_size=30, max_size=40))
def test_organization_id_pattern_matches_the_validator(value: str) -> None:
    pattern = ecma(SCHEMAS["OrganizationId"]["pattern"])
    entry = {"id": "p", "organizationId": value, "status": "Invited"}
    assert bool(pattern.search(value)) == _accepts(Participant, entry)
    assert bool(pattern.search(value.upper())) == _accepts(Participant, {**entry, "organizationId": value.upper()})


def email_schema_accepts(value: str) -> bool:
    email = SCHEMAS["Email"]
    must, must_not = email["allOf"][0]["pattern"], email["allOf"][1]["not"]["pattern"]
    return len(value) <= email["maxLength"] and bool(ecma(must).search(value)) and not ecma(must_not).search(value)


def test_the_special_use_domains_are_email_validators() -> None:
    names = re.findall(r"\(\?:(.*)\)", SCHEMAS["Email"]["allOf"][1]["not"]["pattern"])[0].split("|")
    spelled = {"".join(pair[1] for pair in re.findall(r"\[(\w)(\w)\]", name)) for name in names}
    assert spelled == set(email_validator.SPECIAL_USE_DOMAIN_NAMES)


@settings(max_examples=500, derandomize=True, deadline=None)
@given(
    st.emails()
    | st.emails().map(lambda value: value.rsplit(".", 1)[0] + ".onion")
    | st.sampled_from(['"quoted"@contoso.com', "a@[10.0.0.1]", "a@localhost", "a@b", "a@b.c5", "a@b.Test"])
)
def test_the_email_schema_accepts_what_the_model_accepts(value: str) -> None:
    """For addresses valid per RFC 5321 (`format: email`, which this does not evaluate), the schema's
    further rules accept exactly what email-validator accepts."""
    assert email_schema_accepts(value) == _accepts(Contact, {"email": value}), value


def test_every_path_operation_is_one_the_responses_test_checks() -> None:
    methods = {"get", "post", "put", "patch", "delete", "options", "head"}
    documented = {(path, method) for path, item in SPEC["paths"].items() for method in item if method in methods}
    assert documented == set(EXPECTED_RESPONSES)


def test_the_webhook_events_are_documented_as_the_service_builds_them() -> None:
    from shared.events import EVENT_TYPES, build_event, signed_headers
    from shared.store import StoredReferral

    assert set(SPEC["webhooks"]) == set(EVENT_TYPES)
    assert SCHEMAS["EventType"]["enum"] == list(EVENT_TYPES)
    body = '{"id":"r1","createdDate":"2026-01-01T00:00:00.000000Z","updatedDate":"2026-01-02T00:00:00.000000Z",'
    body += '"status":"Active","activities":[{"changedProperties":["status"]}]}'
    referral = StoredReferral("r1", body, '"v1"', frozenset(), "2026-01-02T00:00:00.000000Z", "", "", 0)
    event_id, payload = build_event(referral, "https://example.test/api/v1/referrals", "referral-updated")
    import json

    event = json.loads(payload)
    schema = SCHEMAS["ReferralChangeEvent"]
    assert set(event) == set(schema["required"]) == set(schema["properties"])
    assert set(event["data"]) == set(SCHEMAS["ReferralChange"]["required"])
    assert event["type"] == "referral-updated" and event["id"] == event_id
    operation = SPEC["webhooks"]["referral-updated"]["post"]
    headers = {parameter["name"] for parameter in operation["parameters"]}
    assert headers == {
        name for name in signed_headers("whsec_" + "A" * 43 + "=", event_id, payload) if name != "Content-Type"
    }
    assert "application/cloudevents+json" in operation["requestBody"]["content"]


def test_the_subscription_schemas_match_the_service() -> None:
    from shared import subscriptions
    from shared.events import new_secret
    from shared.store import StoredSubscription

    item = StoredSubscription("o", "id", "https://x.test/", ("referral-created",), "Active", "t", new_secret(), "t", {})
    assert set(subscriptions.view(item)) == set(SCHEMAS["Subscription"]["properties"])
    created = subscriptions.view(item, with_secret=True)
    assert re.fullmatch(
        SCHEMAS["SubscriptionCreated"]["allOf"][1]["properties"]["secret"]["pattern"], created["secret"]
    )
    assert SCHEMAS["SubscriptionList"]["properties"]["value"]["maxItems"] == subscriptions.MAX_SUBSCRIPTIONS
