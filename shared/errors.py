"""Errors a caller can act on.

Every failure the API reports is one of these: a stable `code`, a human `message`, and where it helps a
`target` (the JSON path of the offending property) and `details` (further errors). `shared.http`
renders them as `{"error": {...}}` with the matching HTTP status; nothing else reaches a caller.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status: int = 500
    code: str = "generalException"

    def __init__(
        self,
        message: str,
        *,
        target: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.target = target
        self.details = details
        self.headers = headers or {}

    def to_body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target is not None:
            error["target"] = self.target
        if self.details:
            error["details"] = self.details
        return {"error": error}


class InvalidRequest(ApiError):
    status = 400
    code = "invalidRequest"


class Unauthenticated(ApiError):
    status = 401
    code = "unauthenticated"

    def __init__(self, message: str, *, token_presented: bool = True) -> None:
        # RFC 6750 section 3: name the scheme; add error="invalid_token" only when a token was sent, so a
        # client knows to fetch a new one rather than to start sending one.
        challenge = 'Bearer error="invalid_token"' if token_presented else "Bearer"
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class AccessDenied(ApiError):
    status = 403
    code = "accessDenied"


class ItemNotFound(ApiError):
    status = 404
    code = "itemNotFound"


class InvalidStatusTransition(ApiError):
    status = 409
    code = "invalidStatusTransition"


class Gone(ApiError):
    """A link that worked once and no longer does: the client starts over (a deltaLink past its life)."""

    status = 410
    code = "deltaLinkExpired"


class PreconditionFailed(ApiError):
    status = 412
    code = "preconditionFailed"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payloadTooLarge"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupportedMediaType"


class ServiceNotAvailable(ApiError):
    status = 503
    code = "serviceNotAvailable"

    def __init__(self, message: str, *, retry_after_seconds: int = 2) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_seconds)})


class ConfigurationError(ApiError):
    """A setting is missing or invalid. Raised at first use and names the setting, never its value."""

    status = 500
    code = "generalException"

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"The service is misconfigured: setting {setting} {problem}.")
        self.setting = setting
