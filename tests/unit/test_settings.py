"""Settings fail clearly, naming the setting, never its value."""

from __future__ import annotations

import pytest

from shared.errors import ConfigurationError
from shared.settings import ENTRA_COMMON_JWKS_URI, load_auth_settings, load_storage_settings

AUTH = {"AUTH_AUDIENCE": "api://x", "AUTH_TENANT_ID": "11111111-1111-4111-8111-111111111111"}


def test_auth_defaults_to_entra_common_keys_and_no_partners() -> None:
    config = load_auth_settings(AUTH)
    assert config.jwks_uri == ENTRA_COMMON_JWKS_URI and config.allowed_tenant_ids == frozenset()


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"AUTH_TENANT_ID": AUTH["AUTH_TENANT_ID"]}, "AUTH_AUDIENCE"),
        ({**AUTH, "AUTH_TENANT_ID": "contoso"}, "AUTH_TENANT_ID"),
        ({**AUTH, "AUTH_ALLOWED_TENANTS": "22222222-2222-4222-8222-222222222222,nope"}, "AUTH_ALLOWED_TENANTS"),
        ({**AUTH, "AUTH_JWKS_URI": "http://keys.example/jwks"}, "AUTH_JWKS_URI"),
        ({**AUTH, "AUTH_JWKS_URI": "file:relative.json"}, "AUTH_JWKS_URI"),
    ],
)
def test_invalid_auth_settings_name_the_setting(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        load_auth_settings(env)
    assert error.value.setting == setting and setting in error.value.message


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({}, "REFERRALS_STORAGE"),
        (
            {"REFERRALS_STORAGE": "x", "REFERRALS_STORAGE__tableServiceUri": "https://a.table.core.windows.net"},
            "REFERRALS_STORAGE",
        ),
        (
            {"REFERRALS_STORAGE__tableServiceUri": "http://a.table.core.windows.net"},
            "REFERRALS_STORAGE__tableServiceUri",
        ),
        (
            {
                "REFERRALS_STORAGE__tableServiceUri": "https://a.table.core.windows.net",
                "REFERRALS_STORAGE__clientId": "x",
            },
            "REFERRALS_STORAGE__clientId",
        ),
        ({"REFERRALS_STORAGE": "x", "REFERRALS_TABLE": "no-dashes"}, "REFERRALS_TABLE"),
    ],
)
def test_invalid_storage_settings_name_the_setting(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        load_storage_settings(env)
    assert error.value.setting == setting


def test_identity_settings_are_accepted() -> None:
    config = load_storage_settings(
        {
            "REFERRALS_STORAGE__tableServiceUri": "https://acct.table.core.windows.net",
            "REFERRALS_STORAGE__clientId": "66666666-6666-4666-8666-666666666666",
        }
    )
    assert config.connection_string is None and config.table_name == "Referrals"
