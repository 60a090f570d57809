"""Bearer tokens -> `Caller`: Microsoft Entra ID v2 access tokens, validated in-process with PyJWT.

A token is accepted when it is RS256-signed by a key of the configured JWKS, its `aud` is our
audience, its `iss` is Entra's v2 issuer for its own `tid`, and it is within `nbf`/`exp` (60 s skew).
The caller's organization is `tid`; it must be our tenant or an onboarded partner tenant.

Two caches keep this off the hot path: the signing keys (refetched on an unknown `kid` at most once a
minute, so a flood of forged kids cannot flood the JWKS endpoint), and validated tokens by their exact
text, bounded, each only until its own `exp`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt

from shared.errors import AccessDenied, ServiceNotAvailable, Unauthenticated
from shared.guid import parse_guid
from shared.lazy import Lazy
from shared.policy import Caller
from shared.settings import AuthSettings, settings

log = logging.getLogger("referrals.auth")

CLOCK_SKEW_SECONDS = 60
MAX_TOKEN_BYTES = 16 * 1024
READ = "Referrals.Read"
READ_WRITE = "Referrals.ReadWrite"
ADMIN = "Referrals.Admin"
_ALGORITHM = "RS256"


class SigningKeys:
    """The JWKS, fetched on first use, kept for a day, refetched for an unknown kid at most once a minute."""

    def __init__(
        self,
        uri: str,
        *,
        refetch_interval: float = 60.0,
        max_age: float = 24 * 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._uri = uri
        self._refetch_interval = refetch_interval
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self.fetch_count = 0

    def key_for(self, kid: str) -> Any | None:
        with self._lock:
            now = self._clock()
            stale = self._fetched_at is None or now - self._fetched_at > self._max_age
            may_refetch = self._fetched_at is None or now - self._fetched_at >= self._refetch_interval
            if stale or (kid not in self._keys and may_refetch):
                self._refresh(now)
            if not self._keys:
                # Never loaded (the last fetch failed and the next may not run yet): the token may be
                # perfectly valid, so this is the service's fault, not the caller's.
                raise ServiceNotAvailable("Token signing keys cannot be loaded right now.")
            return self._keys.get(kid)

    def _refresh(self, now: float) -> None:
        self.fetch_count += 1
        try:
            document = json.loads(_fetch(self._uri))
            keys = {
                jwk.key_id: jwk.key
                for jwk in jwt.PyJWKSet.from_dict(document).keys
                if jwk.key_id and jwk.key_type == "RSA"
            }
        except (OSError, ValueError, jwt.PyJWTError) as error:
            log.warning(json.dumps({"event": "jwksFetchFailed", "error": type(error).__name__}))
            self._fetched_at = now  # rate-limits retries of a failing endpoint too
            return
        self._keys = keys
        self._fetched_at = now


def _fetch(uri: str) -> bytes:
    """The JWKS document. A `file:` URI (local runs and tests) is read directly: urllib's file handler
    guesses a media type first, initializing the mimetypes database, ~65 ms on a cold start."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path)).read_bytes()
    with urllib.request.urlopen(uri, timeout=5) as response:  # noqa: S310 (https only here, checked in settings)
        body: bytes = response.read()
    return body


class TokenValidator:
    def __init__(self, config: AuthSettings, keys: SigningKeys, *, cache_size: int = 4096) -> None:
        self._config = config
        self._keys = keys
        self._cache: OrderedDict[str, tuple[Caller, float]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller behind an `Authorization` header; 401 when it is not a valid token, 403 when the
        tenant is not onboarded or the token carries no permission of this API."""
        token = _bearer_token(authorization)
        now = time.time()
        with self._lock:
            cached = self._cache.get(token)
            if cached is not None and now <= cached[1] + CLOCK_SKEW_SECONDS:
                self._cache.move_to_end(token)
                return cached[0]
        claims = self._verified_claims(token)
        caller = self._caller(claims)
        with self._lock:
            self._cache[token] = (caller, float(claims["exp"]))
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return caller

    def _verified_claims(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("The bearer token is malformed.") from None
        if header.get("alg") != _ALGORITHM:
            raise Unauthenticated("The bearer token must be signed with RS256.")
        kid = header.get("kid")
        key = self._keys.key_for(kid) if isinstance(kid, str) and len(kid) <= 256 else None
        if key is None:
            raise Unauthenticated("The bearer token is signed with an unknown key.")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[_ALGORITHM],
                audience=self._config.audience,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "iss", "aud", "tid"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("The bearer token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("The bearer token is not valid yet.") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("The bearer token is not for this API (aud).") from None
        except jwt.PyJWTError:
            raise Unauthenticated("The bearer token is invalid.") from None
        tenant = parse_guid(claims["tid"])
        if tenant is None or tenant != claims["tid"]:
            raise Unauthenticated("The bearer token's tenant (tid) is not a GUID.")
        if claims["iss"] != f"https://login.microsoftonline.com/{tenant}/v2.0":
            raise Unauthenticated("The bearer token's issuer is not Entra ID v2 for its tenant.")
        return claims

    def _caller(self, claims: dict[str, Any]) -> Caller:
        tenant: str = claims["tid"]
        home = tenant == self._config.home_tenant_id
        onboarded = self._config.onboarded_tenant_ids
        if tenant not in onboarded:
            raise AccessDenied("This organization is not onboarded to the Referrals API.")
        roles = claims.get("roles")
        scopes = claims.get("scp")
        granted = set(roles) if isinstance(roles, list) else set()
        # Admin only as an app role of our own tenant: any tenant's admin can grant roles to itself.
        is_admin = home and ADMIN in granted
        if isinstance(scopes, str):
            granted.update(scopes.split())
        can_write = READ_WRITE in granted or is_admin
        can_read = can_write or READ in granted
        if not can_read:
            raise AccessDenied("The bearer token grants no permission of the Referrals API.")
        return Caller(tenant, can_read=can_read, can_write=can_write, is_admin=is_admin, onboarded=onboarded)


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("An Authorization: Bearer token is required.", token_presented=False)
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("An Authorization: Bearer token is required.", token_presented=False)
    if len(token) > MAX_TOKEN_BYTES:
        raise Unauthenticated("The bearer token is too long.")
    return token


def _build_validator() -> TokenValidator:
    config = settings.auth()
    return TokenValidator(config, SigningKeys(config.jwks_uri))


_validator = Lazy(_build_validator)
# The process-wide validator (and with it the key and token caches), created on first use.
get_validator = _validator.get
reset_validator = _validator.reset
