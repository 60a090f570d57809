"""Local signing key and bearer tokens shaped like Microsoft Entra ID v2 access tokens.

For local runs, tests and benchmarks only: the API trusts these because AUTH_JWKS_URI points at the
JWKS written here (a file:// URI). A deployed app keeps the default, Entra's own keys.

    python -m scripts.dev_tokens                     # a ReadWrite token of the first partner tenant
    python -m scripts.dev_tokens --tenant ID --roles Referrals.Read --minutes 30
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parent.parent
LOCAL_DIR = ROOT / ".local"
# Local defaults; the same values are in local.settings.example.json.
DEV_AUDIENCE = "api://referrals-local"
DEV_HOME_TENANT = "11111111-1111-4111-8111-111111111111"
DEV_PARTNER_TENANTS = ("22222222-2222-4222-8222-222222222222", "33333333-3333-4333-8333-333333333333")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_pem: bytes
    jwks: dict[str, Any]

    @classmethod
    def generate(cls) -> SigningKey:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        kid = uuid.uuid4().hex
        public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
        public_jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(kid, pem, {"keys": [public_jwk]})

    def write(self, directory: Path) -> Path:
        """Write the key pair; returns the JWKS path (use as file://<path>)."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "dev-signing-key.pem").write_bytes(self.private_pem)
        (directory / "dev-signing-key.kid").write_text(self.kid)
        jwks_path = directory / "dev-jwks.json"
        jwks_path.write_text(json.dumps(self.jwks, indent=2))
        return jwks_path

    @classmethod
    def load_or_create(cls, directory: Path = LOCAL_DIR) -> SigningKey:
        pem_path = directory / "dev-signing-key.pem"
        if pem_path.exists():
            return cls(
                (directory / "dev-signing-key.kid").read_text().strip(),
                pem_path.read_bytes(),
                json.loads((directory / "dev-jwks.json").read_text()),
            )
        key = cls.generate()
        key.write(directory)
        return key

    def token(
        self,
        tenant: str = DEV_PARTNER_TENANTS[0],
        *,
        audience: str = DEV_AUDIENCE,
        roles: list[str] | None = None,
        scopes: str | None = None,
        lifetime_seconds: int = 3600,
        **overrides: Any,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": f"https://login.microsoftonline.com/{tenant}/v2.0",
            "tid": tenant,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime_seconds,
            "oid": str(uuid.uuid4()),
            "azp": str(uuid.uuid4()),
            "ver": "2.0",
        }
        if roles is not None:
            claims["roles"] = roles
        if scopes is not None:
            claims["scp"] = scopes
        claims.update(overrides)
        return jwt.encode(claims, self.private_pem, algorithm="RS256", headers={"kid": self.kid})


def main() -> None:
    parser = argparse.ArgumentParser(description="Print a local bearer token for the Referrals API.")
    parser.add_argument("--tenant", default=DEV_PARTNER_TENANTS[0], help="tid of the token (the organization)")
    parser.add_argument("--roles", default="Referrals.ReadWrite", help="comma-separated app roles")
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--audience", default=DEV_AUDIENCE)
    options = parser.parse_args()
    key = SigningKey.load_or_create()
    roles = [role for role in options.roles.split(",") if role]
    print(key.token(options.tenant, audience=options.audience, roles=roles, lifetime_seconds=options.minutes * 60))


if __name__ == "__main__":
    main()
