"""What the Functions host does to an HTTP request before the Python worker sees it, and to the worker's
answer after: the .NET side of the local host, one rule per function.

Each rule cites the behaviour of Azure/azure-functions-host it follows. The request rules are those of
`ToRpcHttp(HttpRequest, ...)` in src/WebJobs.Script.Grpc/MessageExtensions/GrpcMessageConversionExtensions.cs,
reading ASP.NET Core's `HttpRequest` (whose header and query collections are case-insensitive and whose
`StringValues.ToString()` joins repeated values with ","), under the capabilities that
azure-functions-runtime-v1 declares at worker init (RawHttpBodyBytes, RpcHttpBodyOnly,
RpcHttpTriggerMetadataRemoved; not IgnoreEmptyValuedRpcHttpHeaders nor UseNullableValueDictionaryForHttp).

Nothing here knows about referrals, or about the runtime: `scripts.runtime_driver` turns these values into
FunctionRpc messages.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote


@dataclass(frozen=True)
class HostRequest:
    """An HTTP request shaped as the host hands it to the worker (the fields of RpcHttp it fills)."""

    method: str
    url: str
    headers: dict[str, str]
    query: dict[str, str]
    route_params: dict[str, str]
    body: bytes | None  # None: the host sends no body at all


@dataclass(frozen=True)
class HostResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


# The Functions HTTP trigger's documented limits: "the URL length is limited to 4 KB (4,096 bytes)",
# set by the httpRuntime element of the host's Web.config; the host answers 414 and never calls the
# worker. Measured here on the request target as sent (path and query, percent-encoded).
MAX_URL_BYTES = 4096


def url_too_long(target: str) -> bool:
    """`target` as http.server reads the request line: ISO-8859-1, one character a byte."""
    return len(target) > MAX_URL_BYTES


def request_url(scheme: str, host: str, target: str) -> str:
    """`Url = $"{scheme}://{request.Host}{request.Path}{request.QueryString}"`: the query string exactly as
    sent, so a function that reads its URL sees every parameter, even those `query_parameters` drops."""
    return f"{scheme}://{host}{target}"


def header_map(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """`http.Headers.Add(pair.Key.ToLowerInvariant(), pair.Value.ToString())`: names lower-cased, and the
    values of a repeated header joined with "," (ASP.NET Core collects them into one StringValues).
    Empty values are kept: the runtime does not declare IgnoreEmptyValuedRpcHttpHeaders."""
    merged: dict[str, list[str]] = {}
    for name, value in headers:
        merged.setdefault(name.lower(), []).append(value)
    return {name: ",".join(values) for name, values in merged.items()}


def query_parameters(query_string: str) -> dict[str, str]:
    """`foreach (var pair in request.Query) if (!string.IsNullOrEmpty(value)) http.Query.Add(...)`:

    - names compare case-insensitively, and the first spelling seen is the one passed on (ASP.NET
      Core's QueryCollection uses OrdinalIgnoreCase keys);
    - the values of a repeated name are joined with "," (`?top=5&top=10` arrives as `top=5,10`);
    - a name whose joined value is empty is dropped (`?status=` arrives as no status at all).
    """
    collected: dict[str, tuple[str, list[str]]] = {}
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        collected.setdefault(name.lower(), (name, []))[1].append(value)
    joined = {spelling: ",".join(values) for spelling, values in collected.values()}
    return {name: value for name, value in joined.items() if value}


def route_parameters(values: Mapping[str, str | None]) -> dict[str, str]:
    """`if (pair.Value != null) http.Params.Add(pair.Key, pair.Value.ToString())`: an optional route
    parameter that matched nothing is absent, not an empty string. Values are percent-decoded as
    ASP.NET Core routing decodes path segments, except an encoded "/" (`%2F`), which stays encoded."""
    return {name: _decode_path_segment(value) for name, value in values.items() if value is not None}


def request_body(body: bytes) -> bytes | None:
    """`if (request.Body != null && request.ContentLength > 0)`, then, since the runtime asks for
    RawHttpBodyBytes, the body as bytes whatever its media type. An empty body is not sent."""
    return body if body else None


def response_from_worker(status_code: str, headers: Mapping[str, str], body: bytes) -> HostResponse:
    """The response is the worker's RpcHttp: its status code (a string on the wire), its headers as set,
    and its body bytes. The host, not the worker, frames it: Content-Length is the host's."""
    status = int(status_code)
    framing = {"content-length", "transfer-encoding", "connection"}
    return HostResponse(status, [(name, value) for name, value in headers.items() if name.lower() not in framing], body)


def failed_invocation() -> HostResponse:
    """A function that raised, or ran past `functionTimeout`: the host answers 500 with no body, and the
    exception stays in the logs."""
    return HostResponse(500, [], b"")


_ENCODED_SLASH = re.compile("%2f", re.IGNORECASE)


def _decode_path_segment(value: str) -> str:
    return "%2F".join(unquote(part, errors="strict") for part in _ENCODED_SLASH.split(value))
