"""Fuzzing from openapi.yaml with schemathesis, and property tests of the model with Hypothesis.

schemathesis generates requests for every operation from the spec (valid ones, and invalid ones that
break exactly one rule of it), sends them to the functions served by `scripts.local_host` on a
loopback port with valid tokens, and runs all of its checks on every response: no server error,
status codes, content types, headers and bodies as documented, invalid data rejected, valid data
accepted, authentication enforced. The seed is fixed, so `make test` runs the same bounded set of
cases every time; `make soak` runs many more with other seeds.

What "valid data accepted" cannot know from a schema, the test supplies: a POST that is a valid
merge patch but not a complete new referral goes to a referral that exists (a create needs
referralSource and customerProfile.name), participants name each organization once (JSON Schema
cannot say "unique by organizationId"), invitations name onboarded organizations and carry no users
(which tenants are onboarded is configuration), a page token is one the API minted (a made-up one is 400),
and If-Match naming another version is 412 (a state conflict, not invalid data).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    positive_data_acceptance,
    unsupported_method,
)

from scripts.host_http import MAX_URL_BYTES
from shared.editing import validate
from shared.errors import InvalidRequest
from shared.model import ActivityAction, ParticipantStatus, ReferralSource, ReferralStatus
from shared.patching import canonicalize
from tests.conftest import HOME, PARTNER_A, PARTNER_B, Api, minimal_referral
from tests.hardening.conftest import LiveHost, record

SPEC = Path(__file__).resolve().parents[2] / "openapi.yaml"
# Onboarded organizations other than the caller's (PARTNER_A): the ones a valid invitation names.
INVITABLE = (PARTNER_B, HOME)

# Statuses each check accepts. Valid data may still meet a state conflict (404 hidden, 409
# transition, 412 If-Match); invalid data must be refused with a 4xx the contract names.
# The schema allows page tokens of up to 4,096 characters, and the host refuses a URL over 4,096
# bytes (414) before the API sees it: a valid request can meet that limit too.
POSITIVE_STATUSES = ["200", "201", "304", "401", "403", "404", "409", "412", "414"]
NEGATIVE_STATUSES = ["400", "401", "403", "404", "405", "409", "412", "413", "414", "415"]


def fuzz_config(seed: int, max_examples: int) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": seed,
            "generation": {"mode": "all", "max-examples": max_examples, "database": "none"},
            "phases": {
                "examples": {"enabled": True},
                # Boundary values, and one violation of each keyword, deterministically (~2,400 cases).
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},  # random cases: `max_examples` per operation and mode
                "stateful": {"enabled": False},  # no links to follow: there is no DELETE or child resource
            },
            "checks": {
                "positive_data_acceptance": {"expected-statuses": POSITIVE_STATUSES},
                "negative_data_rejection": {"expected-statuses": NEGATIVE_STATUSES},
            },
            "suppress-health-check": ["too_slow", "filter_too_much"],
        }
    )


SEED, SOAK_SEED = 20260101, 20260202
COUNTS: dict[str, dict[str, int]] = {}
# Loaded at import: schemathesis parametrizes at collection. Where the API listens is known only once
# the `live` fixture runs, so each call names its base URL and credentials.
schema = schemathesis.openapi.from_path(SPEC, config=fuzz_config(SEED, max_examples=50))
soak_schema = schemathesis.openapi.from_path(SPEC, config=fuzz_config(SOAK_SEED, max_examples=1000))


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    for run, counts in COUNTS.items():
        summary = ", ".join(f"{key} {count}" for key, count in sorted(counts.items()))
        record(f"schemathesis {run}: {sum(counts.values())} cases: {summary}")


@schema.parametrize()
def test_the_api_conforms_to_its_openapi_spec(case: Case, live: LiveHost) -> None:
    send_and_check(case, live, f"seed {SEED}")


@pytest.mark.soak
@soak_schema.parametrize()
def test_soak_the_api_conforms_to_its_openapi_spec(case: Case, live: LiveHost) -> None:
    send_and_check(case, live, f"seed {SOAK_SEED} (soak)")


def send_and_check(case: Case, live: LiveHost, run: str) -> None:
    mode = case.meta.generation.mode if case.meta else None
    referral_route = case.operation.path.startswith("/v1/referrals/")
    positive_post = referral_route and case.method == "POST" and mode == GenerationMode.POSITIVE
    if positive_post and not _is_complete_referral(case.body):
        # A valid patch that is not a whole new referral: apply it to one that exists.
        referral_id = f"fuzz-{uuid.uuid4().hex}"
        # With a currency, as a referral with a dealValue has one: a patch may then send dealValue alone.
        existing = minimal_referral(details={"currency": "EUR"})
        created = live.request("POST", f"/v1/referrals/{referral_id}", json=existing, headers=live.headers())
        assert created.status_code == 201, created.text
        case.path_parameters["referralId"] = referral_id
    if (
        mode == GenerationMode.POSITIVE
        and isinstance(case.body, dict)
        and isinstance(case.body.get("participants"), list)
    ):
        # Invitations go to onboarded organizations only, and a partner's carry no users
        # (shared/policy.py); the caller's own entry is left out, since it must stay Accepted.
        for participant in cast(dict[str, Any], case.body)["participants"]:
            if isinstance(participant, dict) and isinstance(participant.get("organizationId"), str):
                organization = participant["organizationId"]
                participant["organizationId"] = INVITABLE[sum(map(ord, organization)) % len(INVITABLE)]
                participant.pop("users", None)
        # Each organization at most once: JSON Schema cannot say "unique by organizationId".
        unique = {p.get("organizationId"): p for p in reversed(case.body["participants"]) if isinstance(p, dict)}
        case.body["participants"] = [p for p in case.body["participants"] if unique.get(p.get("organizationId")) is p]
    if positive_post and _is_complete_referral(case.body):
        details = case.body.get("details")
        if isinstance(details, dict) and isinstance(details.get("dealValue"), int | float):
            # A new referral with a dealValue needs a currency: checked after merging, which JSON
            # Schema cannot say of a body that both creates and patches.
            details.setdefault("currency", "EUR")
    for name in ("skipToken", "deltaToken"):
        if mode == GenerationMode.POSITIVE and case.query and name in case.query:
            # A token is only ever one the API minted (signed) for this caller (any other is 400,
            # which test_api_listing.py and test_api_delta.py cover): a made-up one is not valid data.
            del case.query[name]
    counts = COUNTS.setdefault(run, {})
    key = f"{case.method} {case.operation.path} {mode.value if mode else 'explicit'}"
    counts[key] = counts.get(key, 0) + 1
    if _url_bytes(case, live) > MAX_URL_BYTES:
        # The host refuses it before any function runs, so nothing the API promises (authentication
        # first, the error envelope, ...) can be checked: the host's 414 is the whole answer.
        response = case.call(base_url=live.base_url, headers=live.headers(), session=live.session, timeout=30)
        assert response.status_code == 414, response.text
        return
    excluded: list[Any] = []
    if case.operation.path == "/v1/subscriptions" and case.method == "POST":
        # A schema-valid subscription still needs a receiver on the internet that answers the
        # validation handshake: 400 on `url` is the right answer here (test_webhooks.py creates real ones).
        excluded.append(positive_data_acceptance)
    if case.operation.path == "/v1/subscriptions":
        # One route (`v1/subscriptions/{subscriptionId?}`) serves the collection and each subscription,
        # so the host's Allow names DELETE, which only `/{subscriptionId}` documents.
        excluded += [unsupported_method, allow_header_conformance]
    case.call_and_validate(
        base_url=live.base_url, headers=live.headers(), session=live.session, timeout=30, excluded_checks=excluded
    )


def _url_bytes(case: Case, live: LiveHost) -> int:
    transport = case.as_transport_kwargs(base_url=live.base_url)
    prepared = requests.Request(transport["method"], transport["url"], params=transport.get("params")).prepare()
    return len(str(prepared.path_url).encode())


def _is_complete_referral(body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    profile = body.get("customerProfile")
    return "referralSource" in body and isinstance(profile, dict) and "name" in profile


# ---- Property tests on the model ----------------------------------------------------------------------

JSON_SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=40).filter(str.strip)
GUIDS = st.sampled_from([PARTNER_A, HOME, "33333333-3333-4333-8333-333333333333"])
CONTACT = st.fixed_dictionaries(
    {}, optional={"firstName": TEXT, "lastName": TEXT, "email": st.sampled_from(["a@b.example", "x.y@contoso.com"])}
)
# Documents shaped like referrals as the API stores them: canonical names and enum values, no nulls.
REFERRALS = st.fixed_dictionaries(
    {
        "id": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
        "createdDate": st.just("2026-01-01T00:00:00.000000Z"),
        "updatedDate": st.just("2026-01-02T00:00:00.000000Z"),
        "status": st.sampled_from(["Pending", "Active", "Won", "Lost"]),
        "referralSource": st.sampled_from(["WebDirect", "PartnerLed", "AgentLed", "P2P"]),
        "customerProfile": st.fixed_dictionaries(
            {"name": TEXT},
            optional={
                "id": TEXT,
                "address": st.fixed_dictionaries({}, optional={"city": TEXT, "country": st.sampled_from(["DE", "US"])}),
                "contact": CONTACT,
            },
        ),
        "participants": st.lists(
            st.fixed_dictionaries(
                {"id": TEXT, "organizationId": GUIDS, "status": st.sampled_from(["Invited", "Accepted", "Rejected"])},
                optional={"users": st.lists(CONTACT, max_size=2)},
            ),
            max_size=3,
        ),
    },
    optional={
        "customerRequirements": st.fixed_dictionaries(
            {}, optional={"industries": st.lists(TEXT, max_size=3), "customerNeed": TEXT}
        ),
        "details": st.fixed_dictionaries(
            {"currency": st.sampled_from(["EUR", "USD"])},
            optional={"dealValue": st.integers(0, 10**15) | st.floats(0, 1e15), "closingDate": st.just("2026-06-30")},
        ),
        "additionalInformation": TEXT,
    },
)


def _mutations(document: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """The document with one property replaced by any JSON value, added, or removed."""
    keys = sorted(document)
    return st.one_of(
        st.tuples(st.sampled_from(keys), JSON).map(lambda kv: {**document, kv[0]: kv[1]}),
        st.tuples(st.text(max_size=12), JSON).map(lambda kv: {**document, kv[0]: kv[1]}),
        st.sampled_from(keys).map(lambda k: {key: value for key, value in document.items() if key != k}),
    )


ENUM_POSITIONS = {
    member.value: (position, enum)
    for enum in (ReferralStatus, ReferralSource, ParticipantStatus, ActivityAction)
    for position, member in enumerate(enum)
}


def same(sent: Any, returned: Any) -> bool:
    """Equal, up to what the contract makes equivalent: null and an object with nothing in it are
    absent, and an enum is given by name in any case or by position but returned by name."""
    if isinstance(sent, dict) and isinstance(returned, dict):
        present = {key: value for key, value in sent.items() if not absent(value)}
        return present.keys() == returned.keys() and all(same(present[key], returned[key]) for key in present)
    if isinstance(sent, list) and isinstance(returned, list):
        return len(sent) == len(returned) and all(same(a, b) for a, b in zip(sent, returned, strict=True))
    if sent == returned and type(sent) is type(returned):
        return True
    if isinstance(returned, str) and returned in ENUM_POSITIONS:
        position, _ = ENUM_POSITIONS[returned]
        by_name = isinstance(sent, str) and sent.lower() == returned.lower()
        by_position = type(sent) in (int, float) and sent == position  # 2.0 is the position 2
        return by_name or by_position
    return False


def absent(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and all(absent(item) for item in value.values()))


def rejected_or_round_trips(document: Any) -> bool:
    """The service's own steps for a request body: canonical names, then the model. True when valid,
    and then the referral is returned as it was sent, and reads back as itself."""
    try:
        referral = validate(canonicalize(document))
    except InvalidRequest:
        return False
    returned = referral.to_json_dict()
    assert same(document, returned), "accepted, but not returned as sent"
    assert validate(returned).to_json_dict() == returned
    return True


def model_property(strategy: st.SearchStrategy[Any], examples: int, *, always_valid: bool = False) -> Any:
    @settings(max_examples=examples, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(strategy)
    def test(document: Any) -> None:
        accepted = rejected_or_round_trips(json.loads(json.dumps(document)))
        assert accepted or not always_valid, "a canonical referral was rejected"

    return test


MUTATED = REFERRALS.flatmap(_mutations)
test_a_canonical_referral_round_trips_unchanged = model_property(REFERRALS, 300, always_valid=True)
test_any_change_to_a_referral_is_rejected_or_round_trips = model_property(MUTATED, 300)
test_any_json_value_is_rejected_or_round_trips = model_property(JSON, 300)
test_soak_canonical_referrals = pytest.mark.soak(model_property(REFERRALS, 5000, always_valid=True))
test_soak_changed_referrals = pytest.mark.soak(model_property(MUTATED, 20000))
test_soak_any_json = pytest.mark.soak(model_property(JSON, 20000))


@settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(MUTATED | JSON)
def test_any_json_body_is_400_or_created_and_read_back_as_sent(api: Api, document: Any) -> None:
    """Through the functions: a body is refused with 400 (or 403/409 by the access and transition
    rules), or created and then returned by GET exactly as it was stored."""
    referral_id = f"prop-{uuid.uuid4().hex}"
    if isinstance(document, dict):
        document = {key: value for key, value in document.items() if key not in ("id", "createdDate", "updatedDate")}
    reply = api.post(referral_id, json.loads(json.dumps(document)), api.admin_token())
    assert reply.status in (201, 400, 409), reply.body
    if reply.status != 201:
        assert reply.json["error"]["code"] in ("invalidRequest", "invalidStatusTransition")
        assert api.get(referral_id, api.admin_token()).status == 404
        return
    stored = api.get(referral_id, api.admin_token())
    assert stored.json == reply.json
