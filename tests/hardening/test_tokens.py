"""Hostile tokens, end to end through the functions: each gets 401 or 403 as the contract says, and
none of them reads or writes anything (the storage layer is watched and must not be called)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

import get_referral
from scripts.dev_tokens import DEV_AUDIENCE, SigningKey
from shared import auth
from shared.store import ReferralStore
from tests.conftest import HOME, NOT_ONBOARDED, PARTNER_A, PARTNER_B, Api, Reply, minimal_referral, new_id
from tests.hardening.conftest import list_referrals, record

# Every storage operation there is (new ones included): a refused token must reach none of them.
STORE_METHODS = [name for name, value in vars(ReferralStore).items() if callable(value) and not name.startswith("_")]


@pytest.fixture
def storage_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names of the storage operations called while the test runs (after the fixture is set up)."""
    calls: list[str] = []
    for name in STORE_METHODS:
        original = getattr(ReferralStore, name)

        def watched(
            self: ReferralStore, *args: Any, _name: str = name, _original: Any = original, **kwargs: Any
        ) -> Any:
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ReferralStore, name, watched)
    yield calls


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(tenant: str = PARTNER_A, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "aud": DEV_AUDIENCE,
        "iss": f"https://login.microsoftonline.com/{tenant}/v2.0",
        "tid": tenant,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "roles": ["Referrals.ReadWrite"],
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


_LOADED: dict[str, Any] = {}


def private_key(key: SigningKey) -> Any:
    """The key object, loaded once: parsing the PEM costs ~50 ms, which a flood of tokens cannot afford."""
    if key.kid not in _LOADED:
        _LOADED[key.kid] = serialization.load_pem_private_key(key.private_pem, password=None)
    return _LOADED[key.kid]


def signed(key: SigningKey, payload: dict[str, Any], **headers: Any) -> str:
    return jwt.encode(payload, private_key(key), algorithm="RS256", headers={"kid": key.kid, **headers})


def alg_none(key: SigningKey) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": key.kid}).encode())
    return f"{header}.{b64(json.dumps(claims()).encode())}."


def hs256_with_public_key(key: SigningKey) -> str:
    public = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(key.jwks["keys"][0]))
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    body = b64(json.dumps(claims()).encode())
    signature = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


OTHER_KEY = SigningKey.generate()  # not in the JWKS the API trusts

# name -> (token maker, expected status)
ATTACKS: dict[str, tuple[Callable[[SigningKey], str], int]] = {
    "alg none": (alg_none, 401),
    "HS256 keyed with the public key": (hs256_with_public_key, 401),
    "RS256 by another key under our kid": (lambda key: signed(OTHER_KEY, claims(), kid=key.kid), 401),
    "unknown kid": (lambda key: signed(OTHER_KEY, claims()), 401),
    "no kid": (lambda key: jwt.encode(claims(), private_key(key), algorithm="RS256"), 401),
    "expired (beyond the 60 s skew)": (lambda key: signed(key, claims(exp=int(time.time()) - 90)), 401),
    "not yet valid (beyond the 60 s skew)": (lambda key: signed(key, claims(nbf=int(time.time()) + 90)), 401),
    "wrong audience": (lambda key: signed(key, claims(aud="api://someone-else")), 401),
    "no audience": (lambda key: signed(key, claims(aud=None)), 401),
    "no expiry": (lambda key: signed(key, claims(exp=None)), 401),
    "v1 issuer": (lambda key: signed(key, claims(iss=f"https://sts.windows.net/{PARTNER_A}/")), 401),
    "issuer of another tenant than tid": (
        lambda key: signed(key, claims(iss=f"https://login.microsoftonline.com/{PARTNER_B}/v2.0")),
        401,
    ),
    "issuer of the home tenant, tid of a partner": (
        lambda key: signed(key, claims(iss=f"https://login.microsoftonline.com/{HOME}/v2.0")),
        401,
    ),
    "issuer with a trailing slash": (
        lambda key: signed(key, claims(iss=f"https://login.microsoftonline.com/{PARTNER_A}/v2.0/")),
        401,
    ),
    "tid not a GUID": (
        lambda key: signed(key, claims(tid="contoso", iss="https://login.microsoftonline.com/contoso/v2.0")),
        401,
    ),
    # Other spellings of an onboarded tenant's GUID (the dev tenants are all digits, so no upper case).
    "tid in braces": (lambda key: signed(key, claims("{" + PARTNER_A + "}")), 401),
    "tid as a URN": (lambda key: signed(key, claims("urn:uuid:" + PARTNER_A)), 401),
    "tid without hyphens": (lambda key: signed(key, claims(PARTNER_A.replace("-", ""))), 401),
    "no tid": (lambda key: signed(key, claims(tid=None)), 401),
    "a tenant not onboarded": (lambda key: signed(key, claims(NOT_ONBOARDED)), 403),
    "no permission at all": (lambda key: signed(key, claims(roles=None)), 403),
    "roles as a string, not a list": (lambda key: signed(key, claims(roles="Referrals.ReadWrite")), 403),
    "an unrelated role": (lambda key: signed(key, claims(roles=["Directory.ReadWrite.All"])), 403),
    "Referrals.Admin in a partner's token": (
        lambda key: signed(key, claims(PARTNER_B, roles=["Referrals.Admin"])),
        403,
    ),
    "Referrals.Admin as a delegated scope in our own tenant": (
        lambda key: signed(key, claims(HOME, roles=None, scp="Referrals.Admin")),
        403,
    ),
    "garbage": (lambda key: "not.a.jwt", 401),
    "two segments": (lambda key: "eyJhbGciOiJSUzI1NiJ9.eyJ0aWQiOiJ4In0", 401),
    "over 16 KiB": (lambda key: signed(key, claims(padding="x" * 17_000)), 401),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_hostile_tokens_are_refused_before_storage_is_touched(
    api: Api, signing_key: SigningKey, storage_calls: list[str], name: str
) -> None:
    make, status = ATTACKS[name]
    existing = new_id()
    created = api.post(existing, minimal_referral())
    assert created.status == 201
    storage_calls.clear()
    token = make(signing_key)
    fresh = new_id()
    replies = [
        api.get(existing, token),
        api.get(existing, token, headers={"If-None-Match": created.headers["ETag"]}),
        api.post(existing, {"status": "Lost"}, token),
        api.post(fresh, minimal_referral(), token),
        list_referrals(api, token=token),
    ]
    for reply in replies:
        assert_refused(reply, status)
    assert storage_calls == [], f"{name}: storage was called: {storage_calls}"
    assert api.get(existing).json == created.json
    assert api.get(fresh).status == 404


def assert_refused(reply: Reply, status: int) -> None:
    assert reply.status == status, reply.body
    assert reply.error_code == ("unauthenticated" if status == 401 else "accessDenied")
    assert reply.headers["x-ms-error-code"] == reply.error_code
    if status == 401:
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "authorization", ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc", "Bearer\tabc", "bearer"]
)
def test_missing_or_malformed_authorization_is_401_with_a_bearer_challenge(
    api: Api, storage_calls: list[str], authorization: str
) -> None:
    referral_id = new_id()
    reply = api.call(get_referral.main, "GET", referral_id, "", {"Authorization": authorization}, b"")
    assert_refused(reply, 401)
    assert storage_calls == []


def test_tokens_just_within_the_clock_skew_are_accepted(api: Api, signing_key: SigningKey) -> None:
    now = int(time.time())
    for payload in (claims(exp=now - 30), claims(nbf=now + 30)):
        assert api.post(new_id(), minimal_referral(), signed(signing_key, payload)).status == 201


def test_read_permission_does_not_write(api: Api, signing_key: SigningKey, storage_calls: list[str]) -> None:
    referral_id = new_id()
    created = api.post(referral_id, minimal_referral())
    storage_calls.clear()
    for payload in (claims(roles=["Referrals.Read"]), claims(roles=None, scp="Referrals.Read User.Read")):
        token = signed(signing_key, payload)
        assert api.get(referral_id, token).status == 200
        assert_refused(api.post(referral_id, {"status": "Lost"}, token), 403)
        assert_refused(api.post(new_id(), minimal_referral(), token), 403)
    assert set(storage_calls) == {"read"}  # the GETs
    assert api.get(referral_id).json == created.json


def test_a_partner_admin_role_grants_nothing_beyond_its_own_referrals(api: Api, signing_key: SigningKey) -> None:
    theirs = new_id()
    assert api.post(theirs, minimal_referral()).status == 201  # organization A's
    token = signed(signing_key, claims(PARTNER_B, roles=["Referrals.Admin", "Referrals.ReadWrite"]))
    assert api.get(theirs, token).status == 404
    assert api.post(theirs, {"status": "Lost"}, token).status == 404
    listed = list_referrals(api, token=token)
    assert listed.status == 200
    assert theirs not in {referral["id"] for referral in listed.json["value"]}
    # ...whereas in our own tenant the role is the admin's.
    admin = signed(signing_key, claims(HOME, roles=["Referrals.Admin"]))
    assert api.get(theirs, admin).status == 200


def test_a_flood_of_unknown_kids_fetches_the_signing_keys_at_most_once_a_minute(
    api: Api, monkeypatch: pytest.MonkeyPatch, storage_calls: list[str]
) -> None:
    fetches: list[str] = []
    original = auth._fetch

    def counting(uri: str) -> bytes:
        fetches.append(uri)
        return original(uri)

    monkeypatch.setattr(auth, "_fetch", counting)
    assert api.get(new_id()).status == 404  # a valid token: the keys are fetched once
    assert len(fetches) == 1
    flood = 300
    started = time.monotonic()
    for _ in range(flood):
        forged = signed(OTHER_KEY, claims(), kid=uuid.uuid4().hex)
        assert_refused(api.get(new_id(), forged), 401)
    seconds = time.monotonic() - started
    assert len(fetches) <= 2, f"{len(fetches)} JWKS fetches for {flood} unknown kids"
    assert storage_calls.count("read") == 1
    record(f"tokens: {flood} unknown kids -> {len(fetches) - 1} extra JWKS fetch(es), {seconds:.2f} s in all")
