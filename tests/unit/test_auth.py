"""Token validation without storage: signature, claims, tenants, permissions, caches."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from scripts.dev_tokens import SigningKey
from shared.auth import CLOCK_SKEW_SECONDS, SigningKeys, TokenValidator
from shared.errors import AccessDenied, ServiceNotAvailable, Unauthenticated
from shared.settings import AuthSettings

HOME = "11111111-1111-4111-8111-111111111111"
PARTNER = "22222222-2222-4222-8222-222222222222"
STRANGER = "44444444-4444-4444-8444-444444444444"
AUDIENCE = "api://referrals-test"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def keys(key: SigningKey, tmp_path: Path) -> SigningKeys:
    return SigningKeys(key.write(tmp_path).as_uri())


@pytest.fixture
def validator(keys: SigningKeys) -> TokenValidator:
    return TokenValidator(AuthSettings(AUDIENCE, HOME, frozenset({PARTNER}), "unused"), keys)


def token(key: SigningKey, tenant: str = PARTNER, roles: list[str] | None = None, **claims: object) -> str:
    return key.token(tenant, audience=AUDIENCE, roles=roles or ["Referrals.ReadWrite"], **claims)


def bearer(value: str) -> str:
    return f"Bearer {value}"


def test_valid_token_gives_the_tenant_as_organization(validator: TokenValidator, key: SigningKey) -> None:
    caller = validator.authenticate(bearer(token(key)))
    assert (caller.organization_id, caller.can_read, caller.can_write, caller.is_admin) == (PARTNER, True, True, False)


# Times are offsets from the moment the test runs, not from collection: a full suite runs for
# minutes, and a "not yet valid" token minted from collection time comes of age within the skew.
@pytest.mark.parametrize(
    "claims",
    [
        {"exp": -2 * CLOCK_SKEW_SECONDS},
        {"nbf": 10 * CLOCK_SKEW_SECONDS},
        {"aud": "api://someone-else"},
        {"iss": "https://login.microsoftonline.com/44444444-4444-4444-8444-444444444444/v2.0"},
        {"iss": "https://sts.windows.net/22222222-2222-4222-8222-222222222222/"},
        {"tid": "not-a-guid", "iss": "https://login.microsoftonline.com/not-a-guid/v2.0"},
    ],
    ids=["expired", "not-yet-valid", "audience", "issuer-of-another-tenant", "v1-issuer", "tenant-not-a-guid"],
)
def test_invalid_claims_are_401(validator: TokenValidator, key: SigningKey, claims: dict[str, object]) -> None:
    now = int(time.time())
    minted = {name: now + value if name in ("exp", "nbf") else value for name, value in claims.items()}
    with pytest.raises(Unauthenticated):
        validator.authenticate(bearer(token(key, **minted)))


def test_alg_none_and_hs256_with_the_public_key_are_401(validator: TokenValidator, key: SigningKey) -> None:
    claims = jwt.decode(token(key), options={"verify_signature": False})
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": key.kid}).encode()).rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(Unauthenticated):
        validator.authenticate(bearer(f"{header}.{body}."))
    # The classic confusion attack: HMAC keyed with the public key. PyJWT refuses to mint it, so by hand.
    public_pem = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(key.jwks["keys"][0])).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": key.kid}).encode()).rstrip(b"=").decode()
    signature = hmac.new(public_pem, f"{hs_header}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{hs_header}.{body}." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
    with pytest.raises(Unauthenticated):
        validator.authenticate(bearer(forged))


def test_missing_header_is_401_without_invalid_token_error(validator: TokenValidator) -> None:
    with pytest.raises(Unauthenticated) as missing:
        validator.authenticate(None)
    assert missing.value.headers["WWW-Authenticate"] == "Bearer"
    with pytest.raises(Unauthenticated):
        validator.authenticate("Basic dXNlcjpwYXNz")


def test_tenant_not_onboarded_is_403(validator: TokenValidator, key: SigningKey) -> None:
    with pytest.raises(AccessDenied):
        validator.authenticate(bearer(token(key, STRANGER)))


def test_admin_role_counts_only_in_our_own_tenant(validator: TokenValidator, key: SigningKey) -> None:
    assert validator.authenticate(bearer(token(key, HOME, ["Referrals.Admin"]))).is_admin
    partner_admin = validator.authenticate(bearer(token(key, PARTNER, ["Referrals.Admin", "Referrals.Read"])))
    assert not partner_admin.is_admin and not partner_admin.can_write
    with pytest.raises(AccessDenied):
        validator.authenticate(bearer(token(key, PARTNER, ["Referrals.Admin"])))


def test_token_without_permissions_is_403(validator: TokenValidator, key: SigningKey) -> None:
    with pytest.raises(AccessDenied):
        validator.authenticate(bearer(token(key, roles=["Something.Else"])))


def test_unknown_kid_refetches_the_keys_at_most_once_a_minute(
    validator: TokenValidator, keys: SigningKeys, key: SigningKey
) -> None:
    validator.authenticate(bearer(token(key)))
    fetched = keys.fetch_count
    stranger = SigningKey.generate()
    for _ in range(50):
        with pytest.raises(Unauthenticated):
            validator.authenticate(bearer(stranger.token(PARTNER, audience=AUDIENCE, roles=["Referrals.Read"])))
    assert keys.fetch_count - fetched <= 1


def test_new_signing_key_is_picked_up_after_the_refetch_interval(tmp_path: Path, key: SigningKey) -> None:
    now = [0.0]
    keys = SigningKeys(key.write(tmp_path).as_uri(), clock=lambda: now[0])
    validator = TokenValidator(AuthSettings(AUDIENCE, HOME, frozenset({PARTNER}), "unused"), keys)
    validator.authenticate(bearer(token(key)))
    rotated = SigningKey.generate()
    rotated.write(tmp_path)
    with pytest.raises(Unauthenticated):
        validator.authenticate(bearer(rotated.token(PARTNER, audience=AUDIENCE, roles=["Referrals.Read"])))
    now[0] += 61
    assert validator.authenticate(bearer(rotated.token(PARTNER, audience=AUDIENCE, roles=["Referrals.Read"])))


def test_keys_that_never_loaded_are_503_until_they_load_not_401(tmp_path: Path, key: SigningKey) -> None:
    # A valid token must not be called invalid because the key endpoint failed: clients would drop it.
    jwks = key.write(tmp_path)
    hidden = jwks.rename(tmp_path / "hidden.json")
    now = [0.0]
    keys = SigningKeys(jwks.as_uri(), clock=lambda: now[0])
    validator = TokenValidator(AuthSettings(AUDIENCE, HOME, frozenset({PARTNER}), "unused"), keys)
    for moment in (0.0, 5.0, 59.0):
        now[0] = moment
        with pytest.raises(ServiceNotAvailable):
            validator.authenticate(bearer(token(key)))
    assert keys.fetch_count == 1  # a failing endpoint is still asked at most once a minute
    hidden.rename(jwks)
    now[0] = 61.0
    assert validator.authenticate(bearer(token(key))).organization_id == PARTNER


def test_keys_are_refetched_after_a_day_so_a_withdrawn_key_stops_working(tmp_path: Path) -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    now = [0.0]
    keys = SigningKeys(old.write(tmp_path).as_uri(), clock=lambda: now[0])
    validator = TokenValidator(AuthSettings(AUDIENCE, HOME, frozenset({PARTNER}), "unused"), keys)
    validator.authenticate(bearer(token(old)))
    new.write(tmp_path)  # the same JWKS location now holds only the new key
    now[0] = 24 * 3600 + 1
    with pytest.raises(Unauthenticated):
        validator.authenticate(bearer(token(old, roles=["Referrals.Read"])))  # not the cached token
    assert validator.authenticate(bearer(token(new))).organization_id == PARTNER


def test_the_token_cache_is_bounded(tmp_path: Path, key: SigningKey) -> None:
    keys = SigningKeys(key.write(tmp_path).as_uri())
    validator = TokenValidator(AuthSettings(AUDIENCE, HOME, frozenset({PARTNER}), "unused"), keys, cache_size=2)
    tokens = [token(key, jti=str(index)) for index in range(3)]
    for value in tokens:
        validator.authenticate(bearer(value))
    keys.key_for = lambda kid: None  # type: ignore[method-assign]  # from now on, only the cache can answer
    validator.authenticate(bearer(tokens[2]))  # among the two kept
    with pytest.raises(Unauthenticated):
        validator.authenticate(bearer(tokens[0]))  # evicted, so validated again


def test_validated_token_is_remembered_until_it_expires(
    validator: TokenValidator, keys: SigningKeys, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    short = token(key, exp=int(time.time()) + 5)
    assert validator.authenticate(bearer(short)).organization_id == PARTNER
    monkeypatch.setattr(keys, "key_for", lambda kid: None)  # any re-validation now fails
    assert validator.authenticate(bearer(short)).organization_id == PARTNER  # served from the cache
    later = time.time() + 5 + 61
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(Unauthenticated):
        validator.authenticate(bearer(short))
