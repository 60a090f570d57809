"""Shared fixtures: a real Azurite started by the tests themselves, signing keys, and an API client
that calls the functions' `main` with real `azure.functions.HttpRequest` objects."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

import get_referral
import update_referral
from scripts.azurite import Azurite
from scripts.dev_tokens import DEV_AUDIENCE, DEV_HOME_TENANT, DEV_PARTNER_TENANTS, SigningKey
from shared.auth import reset_validator
from shared.settings import settings
from shared.store import ReferralStore, get_store, reset_store

HOME = DEV_HOME_TENANT
PARTNER_A, PARTNER_B = DEV_PARTNER_TENANTS
NOT_ONBOARDED = "44444444-4444-4444-8444-444444444444"
# More onboarded partner tenants, for tests that fill a referral's participant list (`onboarded`).
MORE_PARTNERS = [f"00000000-0000-4000-8000-{index:012d}" for index in range(1, 60)]


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    server = Azurite.start_table()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    key = SigningKey.generate()
    key.write(tmp_path_factory.mktemp("keys"))
    return key


@pytest.fixture(scope="session")
def jwks_path(signing_key: SigningKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return signing_key.write(tmp_path_factory.mktemp("jwks"))


def api_environment(connection_string: str, jwks_path: Path) -> dict[str, str]:
    return {
        "REFERRALS_STORAGE": connection_string,
        "REFERRALS_TABLE": "Referrals",
        "AUTH_AUDIENCE": DEV_AUDIENCE,
        "AUTH_TENANT_ID": HOME,
        "AUTH_ALLOWED_TENANTS": f"{PARTNER_A},{PARTNER_B}",
        "AUTH_JWKS_URI": jwks_path.as_uri(),
    }


def reset_process_state() -> None:
    settings.reset()
    reset_store()
    reset_validator()


@pytest.fixture
def api_env(azurite: Azurite, jwks_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in api_environment(azurite.connection_string, jwks_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("REFERRALS_STORAGE__tableServiceUri", raising=False)
    reset_process_state()
    yield
    reset_process_state()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str:
        return str(self.json["error"]["code"])


class Api:
    """Calls the functions the way the Functions host does."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key

    def token(self, tenant: str = PARTNER_A, roles: list[str] | None = None, **claims: Any) -> str:
        return self.key.token(tenant, roles=roles if roles is not None else ["Referrals.ReadWrite"], **claims)

    def admin_token(self) -> str:
        return self.token(HOME, roles=["Referrals.Admin"])

    def get(self, referral_id: str, token: str | None = None, headers: dict[str, str] | None = None) -> Reply:
        return self.call(get_referral.main, "GET", referral_id, token, headers, b"")

    def post(
        self,
        referral_id: str,
        body: Any,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        return self.call(update_referral.main, "POST", referral_id, token, all_headers, raw)

    def call(
        self,
        main: Any,
        method: str,
        referral_id: str,
        token: str | None,
        headers: dict[str, str] | None,
        body: bytes,
    ) -> Reply:
        all_headers = dict(headers or {})
        if token is None:
            token = self.token()
        if token:
            all_headers.setdefault("Authorization", f"Bearer {token}")
        request = func.HttpRequest(
            method=method,
            url=f"http://localhost:7071/api/v1/referrals/{referral_id}",
            headers=all_headers,
            params={},
            route_params={"referralId": referral_id},
            body=body,
        )
        response = main(request)
        return Reply(response.status_code, dict(response.headers), response.get_body())


@pytest.fixture
def onboarded(api_env: None, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """MORE_PARTNERS onboarded too (AUTH_ALLOWED_TENANTS), so that they can be invited."""
    monkeypatch.setenv("AUTH_ALLOWED_TENANTS", ",".join([PARTNER_A, PARTNER_B, *MORE_PARTNERS]))
    reset_process_state()
    return MORE_PARTNERS


@pytest.fixture
def api(api_env: None, signing_key: SigningKey) -> Api:
    return Api(signing_key)


@pytest.fixture
def store(api_env: None) -> ReferralStore:
    return get_store()


def new_id() -> str:
    return f"ref-{uuid.uuid4().hex[:16]}"


def minimal_referral(**extra: Any) -> dict[str, Any]:
    return {"referralSource": "PartnerLed", "customerProfile": {"name": "Contoso Ltd"}, **extra}
