"""HTTP edge shared by both functions: request ids, authentication, body parsing, responses, errors.

`handle` wraps an entry point: it gives every response an `x-ms-request-id`, echoes a client's
`x-ms-client-request-id`, turns `ApiError` into the error envelope, turns anything unexpected into a
500 `generalException` without a stack trace, and writes one structured log line per request that
names the request, the organization and the referral, and never customer data.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import azure.functions as func

from shared import budget
from shared.auth import get_validator
from shared.errors import (
    ApiError,
    ConfigurationError,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from shared.history import HistoryQuery, history_token
from shared.listing import ListQuery
from shared.model import REFERRAL_ID_PATTERN, Limits
from shared.policy import Caller
from shared.service import HistoryPage, Page
from shared.store import StoredReferral, to_json

log = logging.getLogger("referrals.http")

JSON_TYPE = "application/json"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_JSON_MEDIA_TYPES = {"application/json", "application/merge-patch+json"}
MAX_JSON_DEPTH = 32
# More query parameters than any operation defines, with room for the function key: beyond it, 400.
MAX_QUERY_PARAMETERS = 16


class Call:
    """One request as the use cases see it: who is calling, about which referral, with what."""

    def __init__(self, request: func.HttpRequest) -> None:
        self.request = request
        self.request_id = str(uuid.uuid4())
        client_id = request.headers.get("x-ms-client-request-id", "")
        # fullmatch: `$` also matches before a trailing newline, which must never reach a response header.
        self.client_request_id = client_id if _CLIENT_REQUEST_ID.fullmatch(client_id) else None
        self.caller: Caller | None = None
        self.referral_id: str | None = None

    def authenticate(self) -> Caller:
        self.caller = get_validator().authenticate(self.request.headers.get("Authorization"))
        return self.caller

    def path_referral_id(self) -> str:
        referral_id = str(self.request.route_params.get("referralId", ""))
        if not REFERRAL_ID_PATTERN.fullmatch(referral_id):  # not .match: `$` accepts a trailing "\n"
            raise InvalidRequest(
                "A referral id is 1-128 letters, digits, '-', '_' or '.', starting with a letter or digit.",
                target="referralId",
            )
        self.referral_id = referral_id
        return referral_id

    def query_parameters(self) -> list[tuple[str, str]]:
        """The query exactly as the caller sent it, read from the request URL.

        Not from `request.params`: the Functions host drops parameters whose value is empty and joins a
        repeated name's values with ",", so `?status=` would arrive as no filter and `?top=5&top=10` as
        `top=5,10`. Read from the URL, every parameter keeps its meaning: an empty value is a value (and
        invalid wherever one is required), and a name given twice, compared case-insensitively as
        property names in a body are, is 400 rather than one value winning.
        """
        try:
            pairs = parse_qsl(
                urlsplit(self.request.url).query,
                keep_blank_values=True,
                errors="strict",
                max_num_fields=MAX_QUERY_PARAMETERS,
            )
        except UnicodeDecodeError:
            raise InvalidRequest("The query string is not valid UTF-8.") from None
        except ValueError:
            raise InvalidRequest(f"A request takes at most {MAX_QUERY_PARAMETERS} query parameters.") from None
        seen: set[str] = set()
        for name, _ in pairs:
            if name.lower() in seen:
                raise InvalidRequest(f"Query parameter '{name}' appears more than once.", target=name)
            seen.add(name.lower())
        return pairs

    def json_body(self) -> Any:
        """The request body as JSON: 415 for another media type, 413 over the limit, 400 when malformed."""
        media_type = (self.request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if media_type not in _JSON_MEDIA_TYPES:
            raise UnsupportedMediaType("The request body must be application/json.", target="Content-Type")
        body = self.request.get_body() or b""
        if len(body) > Limits.REQUEST_BODY_BYTES:
            raise PayloadTooLarge(f"The request body is larger than {Limits.REQUEST_BODY_BYTES} bytes.")
        return parse_json(body)

    def if_match(self) -> list[str] | None:
        """If-Match's entity tags, compared strongly (RFC 9110 13.1.1): a weak tag never matches."""
        tags = self._entity_tags("If-Match")
        return None if tags is None else [tag for tag in tags if not tag.startswith("W/")]

    def is_conditional_get(self) -> bool:
        return self._entity_tags("If-None-Match") is not None

    def none_match(self, etag: str) -> bool:
        """Whether If-None-Match names `etag` (or is `*`), compared weakly (RFC 9110 13.1.2): W/"x" is "x"."""
        tags = [tag.removeprefix("W/") for tag in self._entity_tags("If-None-Match") or []]
        return etag in tags or "*" in tags

    def _entity_tags(self, header: str) -> list[str] | None:
        value = self.request.headers.get(header)
        if value is None:
            return None
        return [tag.strip() for tag in value.split(",") if tag.strip()]

    def referral_response(self, stored: StoredReferral, status: int = 200) -> func.HttpResponse:
        headers = {"ETag": stored.etag}
        if status == 201:
            headers["Location"] = self._location(stored.referral_id)
        return self.respond(status, stored.body.encode("utf-8"), headers)

    def page_response(self, page: Page, query: ListQuery) -> func.HttpResponse:
        # The stored bodies are already JSON: splice the referrals in (without their activities,
        # `StoredReferral.summary`) rather than re-encode them.
        parts = ['{"value":[', ",".join(referral.summary() for referral in page.referrals), "]"]
        if page.next_token is not None:
            parts.append(',"nextLink":' + json.dumps(self._listing_link(query, "skipToken", page.next_token)))
        if page.delta_token is not None:
            parts.append(',"deltaLink":' + json.dumps(self._listing_link(query, "deltaToken", page.delta_token)))
        parts.append("}")
        return self.respond(200, "".join(parts).encode("utf-8"))

    def _listing_link(self, query: ListQuery, name: str, token: str) -> str:
        """An absolute link to more of a listing: the same filters, and a token.
        The function key (`code`) is not copied into it: send it as the x-functions-key header."""
        parameters = {
            "status": query.status,
            "referralSource": query.referral_source,
            "updatedSince": query.updated_since,
            "top": str(query.top),
            name: token,
        }
        base = self.request.url.split("?", 1)[0]
        return f"{base}?{urlencode({name: value for name, value in parameters.items() if value is not None})}"

    def history_response(self, page: HistoryPage, query: HistoryQuery) -> func.HttpResponse:
        result: dict[str, Any] = {"value": page.activities}
        if page.next_start is not None and self.caller is not None and self.referral_id is not None:
            token = history_token(self.caller, self.referral_id, page.next_start, page.activities[-1]["date"])
            # As in a listing's nextLink, the function key (`code`) is not copied into the link.
            base = self.request.url.split("?", 1)[0]
            result["nextLink"] = f"{base}?{urlencode({'top': str(query.top), 'skipToken': token})}"
        return self.respond(200, to_json(result).encode("utf-8"))

    def not_modified(self, etag: str) -> func.HttpResponse:
        return self.respond(304, b"", {"ETag": etag}, content_type=None)

    def respond(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        content_type: str | None = f"{JSON_TYPE}; charset=utf-8",
    ) -> func.HttpResponse:
        all_headers = {"x-ms-request-id": self.request_id, "Cache-Control": "no-store", **(headers or {})}
        if self.client_request_id:
            all_headers["x-ms-client-request-id"] = self.client_request_id
        if content_type:
            all_headers["Content-Type"] = content_type
        return func.HttpResponse(body=body, status_code=status, headers=all_headers)

    def error_response(self, error: ApiError) -> func.HttpResponse:
        try:
            body = json.dumps(error.to_body(), ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            # A property name echoed from the request holds an unpaired surrogate (legal as a JSON
            # escape, not encodable as UTF-8): send it escaped, as it came.
            body = json.dumps(error.to_body()).encode("ascii")
        return self.respond(error.status, body, {"x-ms-error-code": error.code, **error.headers})

    def _location(self, referral_id: str) -> str:
        url = self.request.url.split("?", 1)[0].rstrip("/")
        base = url.rsplit("/", 1)[0] if url.endswith(f"/{referral_id}") else url
        return f"{base}/{referral_id}"


def parse_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("The request body is not UTF-8.") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except InvalidRequest:
        raise
    except (ValueError, RecursionError) as error:
        raise InvalidRequest(f"The request body is not valid JSON ({_json_problem(error)}).") from None
    if _nesting_depth(value) > MAX_JSON_DEPTH:
        raise InvalidRequest(f"The request body nests deeper than {MAX_JSON_DEPTH} levels.")
    return value


def _nesting_depth(value: Any) -> int:
    """How deep arrays and objects nest, counted without recursion (the parser itself stops near 1000)."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidRequest(f"Property '{key}' appears more than once.", target=key)
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise InvalidRequest(f"'{name}' is not a JSON number.")


def _json_problem(error: Exception) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at line {error.lineno} column {error.colno}"
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return "a number is out of range"


def handle(request: func.HttpRequest, use_case: Callable[[Call], func.HttpResponse]) -> func.HttpResponse:
    started = time.perf_counter()
    call = Call(request)
    with budget.request():  # the request's time budget, which every storage call it makes shares
        response = _answer(call, use_case)
    log.info(
        json.dumps(
            {
                "event": "request",
                "method": request.method,
                "status": response.status_code,
                "durationMs": round((time.perf_counter() - started) * 1000, 2),
                "requestId": call.request_id,
                "clientRequestId": call.client_request_id,
                "organizationId": call.caller.organization_id if call.caller else None,
                "referralId": call.referral_id,
            }
        )
    )
    return response


def _answer(call: Call, use_case: Callable[[Call], func.HttpResponse]) -> func.HttpResponse:
    """The use case's response, or the error envelope for whatever it raised."""
    try:
        return use_case(call)
    except ApiError as error:
        if isinstance(error, ConfigurationError):
            log.error(
                json.dumps({"event": "configurationError", "setting": error.setting, "requestId": call.request_id})
            )
        return call.error_response(error)
    except Exception:
        log.exception(json.dumps({"event": "unhandledError", "requestId": call.request_id}))
        return call.error_response(ApiError("An unexpected error occurred; it has been logged."))
