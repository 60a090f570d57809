"""Configuration read from the environment, validated once per process, at first use.

A missing or invalid setting raises `ConfigurationError` naming the setting (never its value), so a
misconfigured deployment fails clearly on its first request instead of half-working.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlparse

from shared.errors import ConfigurationError
from shared.guid import parse_guid
from shared.lazy import Lazy

ENTRA_COMMON_JWKS_URI = "https://login.microsoftonline.com/common/discovery/v2.0/keys"
DEFAULT_TABLE = "Referrals"
# Table names: 3-63 alphanumerics, starting with a letter (Table Storage's own rule).
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


# NamedTuples, not dataclasses: see `shared/__init__.py`.
class StorageSettings(NamedTuple):
    """Either a connection string (Azurite, local use) or a table endpoint used with an Entra identity."""

    connection_string: str | None
    table_service_uri: str | None
    managed_identity_client_id: str | None
    table_name: str


class WebhookSettings(NamedTuple):
    """Outbound webhook delivery (`shared.outbound`, `shared.delivery`)."""

    allow_loopback: bool  # local development and tests only: http:// receivers on loopback addresses
    retry_seconds: int  # how long a failing subscription is retried before it is Suspended
    origin: str  # who we are in the CloudEvents validation handshake (WebHook-Request-Origin)


DEFAULT_WEBHOOK_RETRY_SECONDS = 24 * 3600
_HOST_NAME = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$")


class AuthSettings(NamedTuple):
    audience: str
    home_tenant_id: str
    allowed_tenant_ids: frozenset[str]
    jwks_uri: str

    @property
    def onboarded_tenant_ids(self) -> frozenset[str]:
        """The organizations that can call the API: our tenant and the partner tenants. With
        AUTH_ALLOWED_TENANTS empty, that is our tenant alone. Invitations go only to these."""
        return self.allowed_tenant_ids | {self.home_tenant_id}


def load_storage_settings(env: Mapping[str, str]) -> StorageSettings:
    connection_string = env.get("REFERRALS_STORAGE", "").strip() or None
    service_uri = env.get("REFERRALS_STORAGE__tableServiceUri", "").strip() or None
    client_id = env.get("REFERRALS_STORAGE__clientId", "").strip() or None
    table_name = env.get("REFERRALS_TABLE", "").strip() or DEFAULT_TABLE

    if connection_string and service_uri:
        raise ConfigurationError(
            "REFERRALS_STORAGE", "and REFERRALS_STORAGE__tableServiceUri are both set; set only one"
        )
    if not connection_string and not service_uri:
        raise ConfigurationError(
            "REFERRALS_STORAGE",
            "is missing (set a connection string, or REFERRALS_STORAGE__tableServiceUri for an identity)",
        )
    if service_uri:
        parsed = urlparse(service_uri)
        secure = parsed.scheme == "https" or (parsed.scheme == "http" and parsed.hostname in _LOOPBACK_HOSTS)
        if not secure or not parsed.hostname:
            raise ConfigurationError("REFERRALS_STORAGE__tableServiceUri", "must be an https:// table service endpoint")
    if client_id and parse_guid(client_id) is None:
        raise ConfigurationError("REFERRALS_STORAGE__clientId", "must be a GUID")
    if not _TABLE_NAME.match(table_name):
        raise ConfigurationError("REFERRALS_TABLE", "must be 3-63 letters and digits, starting with a letter")
    return StorageSettings(connection_string, service_uri, client_id, table_name)


def load_auth_settings(env: Mapping[str, str]) -> AuthSettings:
    audience = env.get("AUTH_AUDIENCE", "").strip()
    if not audience:
        raise ConfigurationError("AUTH_AUDIENCE", "is missing")
    home_tenant = parse_guid(env.get("AUTH_TENANT_ID", "").strip())
    if home_tenant is None:
        raise ConfigurationError("AUTH_TENANT_ID", "must be a tenant GUID")
    allowed: set[str] = set()
    for item in env.get("AUTH_ALLOWED_TENANTS", "").split(","):
        if not item.strip():
            continue
        tenant = parse_guid(item.strip())
        if tenant is None:
            raise ConfigurationError("AUTH_ALLOWED_TENANTS", "must be comma-separated tenant GUIDs")
        allowed.add(tenant)
    jwks_uri = env.get("AUTH_JWKS_URI", "").strip() or ENTRA_COMMON_JWKS_URI
    parsed = urlparse(jwks_uri)
    if parsed.scheme == "file":
        if not parsed.path.startswith("/"):
            raise ConfigurationError("AUTH_JWKS_URI", "must be an absolute file:// URI")
    elif parsed.scheme != "https" or not parsed.hostname:
        raise ConfigurationError("AUTH_JWKS_URI", "must be an https:// or file:// URI")
    return AuthSettings(audience, home_tenant, frozenset(allowed), jwks_uri)


def load_webhook_settings(env: Mapping[str, str]) -> WebhookSettings:
    flag = env.get("WEBHOOKS_ALLOW_LOOPBACK", "").strip().lower() or "false"
    if flag not in ("true", "false"):
        raise ConfigurationError("WEBHOOKS_ALLOW_LOOPBACK", "must be true or false")
    retry = env.get("WEBHOOKS_RETRY_SECONDS", "").strip() or str(DEFAULT_WEBHOOK_RETRY_SECONDS)
    if not retry.isdigit() or not 0 < int(retry) <= 30 * 86400:
        raise ConfigurationError("WEBHOOKS_RETRY_SECONDS", "must be a whole number of seconds, 1 to 2592000")
    # Azure sets WEBSITE_HOSTNAME to the app's default host name: the origin a receiver allows.
    origin = env.get("WEBSITE_HOSTNAME", "").strip() or "localhost"
    if not _HOST_NAME.match(origin):
        raise ConfigurationError("WEBSITE_HOSTNAME", "must be a host name")
    return WebhookSettings(flag == "true", int(retry), origin)


class _Settings:
    """Settings loaded from `os.environ` on first use and kept for the life of the process."""

    def __init__(self) -> None:
        self._storage = Lazy(lambda: load_storage_settings(os.environ))
        self._auth = Lazy(lambda: load_auth_settings(os.environ))
        self._webhooks = Lazy(lambda: load_webhook_settings(os.environ))

    def storage(self) -> StorageSettings:
        return self._storage.get()

    def auth(self) -> AuthSettings:
        return self._auth.get()

    def webhooks(self) -> WebhookSettings:
        return self._webhooks.get()

    def reset(self) -> None:
        self._storage.reset()
        self._auth.reset()
        self._webhooks.reset()


settings = _Settings()
