"""Hostile input: every malformed, oversized, mistyped or overreaching request gets a 4xx with the
error envelope, and changes nothing.

Most cases call the functions in-process (as the Functions host does, with the route parameter
already decoded); the ones about HTTP framing (lying Content-Length, chunked bodies, encoded slashes)
go over a socket to `scripts.local_host`.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tests.conftest import PARTNER_A, PARTNER_B, Api, Reply, minimal_referral, new_id
from tests.hardening.conftest import LiveHost

NOT_ONBOARDED_ORG = "44444444-4444-4444-8444-444444444444"


def assert_error(reply: Reply, status: int, code: str | None = None, target: str | None = None) -> None:
    assert reply.status == status, (reply.status, reply.body[:300])
    body = json.loads(reply.body)
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) <= {"code", "message", "target", "details"}
    assert isinstance(error["message"], str) and error["message"]
    assert reply.headers["x-ms-error-code"] == error["code"]
    assert reply.headers["x-ms-request-id"]
    assert "Traceback" not in reply.body.decode("utf-8", "replace")
    if code is not None:
        assert error["code"] == code, error
    if target is not None:
        assert error.get("target") == target, error


HOSTILE_IDS = [
    "a'b",
    'a"b',
    "a/b",
    "a%2Fb",
    "..",
    ".hidden",
    "-dash",
    "abc\n",
    "abc\r\n",
    "a\x00b",
    "PartitionKey eq 'x'",
    "x' or '1' eq '1",
    "x or true",
    "$filter=PartitionKey",
    "a*",
    "a;b",
    "a b",
    "a" * 129,
    "a" * 10_000,
    "ünïcödé",
    "ａｂｃ",  # full-width letters
    "١٢٣",  # Arabic-Indic digits: \d would match them, [0-9] does not
    "a\u202eb",
    "😀",
    "a\ud800",
]


@pytest.mark.parametrize("referral_id", HOSTILE_IDS, ids=lambda value: repr(value[:24]))
def test_hostile_ids_are_400_for_get_and_post(api: Api, referral_id: str) -> None:
    assert_error(api.get(referral_id), 400, "invalidRequest", "referralId")
    assert_error(api.post(referral_id, minimal_referral()), 400, "invalidRequest", "referralId")


def test_an_empty_id_on_post_is_400(api: Api) -> None:
    assert_error(api.post("", minimal_referral()), 400, "invalidRequest", "referralId")


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


BAD_BODIES: dict[str, tuple[bytes, int, str | None]] = {
    # name: (raw body, status, error target)
    "ten thousand nested arrays": (b"[" * 10_000 + b"]" * 10_000, 400, None),
    "a hundred thousand nested arrays": (b"[" * 100_000, 400, None),
    "nesting deeper than 32 levels": (json.dumps(nested(40)).encode(), 400, None),
    "deep nesting inside a property": (
        json.dumps(minimal_referral(customerProfile={"name": "x", "address": {"city": nested(35)}})).encode(),
        400,
        None,
    ),
    "a top-level array of 50,000 numbers": (json.dumps([1] * 50_000).encode(), 400, None),
    "10,000 industries": (
        json.dumps(minimal_referral(customerRequirements={"industries": ["x"] * 10_000})).encode(),
        400,
        "customerRequirements.industries",
    ),
    "51 participants": (
        json.dumps(
            minimal_referral(participants=[{"organizationId": f"00000000-0000-4000-8000-{n:012d}"} for n in range(51)])
        ).encode(),
        400,
        "participants",
    ),
    "a body over 256 KiB": (json.dumps(minimal_referral(additionalInformation="x" * 270_000)).encode(), 413, None),
    "dealValue 1e309 (infinity)": (
        b'{"referralSource":"P2P","customerProfile":{"name":"x"},"details":{"dealValue":1e309,"currency":"EUR"}}',
        400,
        "details.dealValue",
    ),
    "dealValue above the maximum": (
        json.dumps(minimal_referral(details={"dealValue": 1e16, "currency": "EUR"})).encode(),
        400,
        "details.dealValue",
    ),
    "dealValue negative": (
        json.dumps(minimal_referral(details={"dealValue": -0.01, "currency": "EUR"})).encode(),
        400,
        "details.dealValue",
    ),
    "an integer of 5,000 digits": (
        b'{"referralSource":"P2P","customerProfile":{"name":"x"},"details":{"dealValue":' + b"9" * 5000 + b"}}",
        400,
        None,
    ),
    "NaN": (b'{"referralSource":"P2P","customerProfile":{"name":"x"},"details":{"dealValue":NaN}}', 400, None),
    "status position 99": (json.dumps(minimal_referral(status=99)).encode(), 400, "status"),
    "status position -1": (json.dumps(minimal_referral(status=-1)).encode(), 400, "status"),
    "status position 1.5": (json.dumps(minimal_referral(status=1.5)).encode(), 400, "status"),
    "status position 2**64": (json.dumps(minimal_referral(status=2**64)).encode(), 400, "status"),
    "duplicate keys": (
        b'{"referralSource":"P2P","referralSource":"PartnerLed","customerProfile":{"name":"x"}}',
        400,
        None,
    ),
    "duplicate nested keys": (b'{"referralSource":"P2P","customerProfile":{"name":"x","name":"y"}}', 400, None),
    "duplicate keys in other case": (
        b'{"referralSource":"P2P","customerProfile":{"name":"x"},"CustomerProfile":{"name":"y"}}',
        400,
        "CustomerProfile",
    ),
    "status true": (json.dumps(minimal_referral(status=True)).encode(), 400, "status"),
    "customerProfile a string": (json.dumps({"referralSource": "P2P", "customerProfile": "x"}).encode(), 400, None),
    "customerProfile a list": (json.dumps({"referralSource": "P2P", "customerProfile": []}).encode(), 400, None),
    "participants an object": (json.dumps(minimal_referral(participants={})).encode(), 400, "participants"),
    "industries a string": (
        json.dumps(minimal_referral(customerRequirements={"industries": "Retail"})).encode(),
        400,
        "customerRequirements.industries",
    ),
    "dealValue a string": (
        json.dumps(minimal_referral(details={"dealValue": "5", "currency": "EUR"})).encode(),
        400,
        "details.dealValue",
    ),
    "name a number": (json.dumps({"referralSource": "P2P", "customerProfile": {"name": 5}}).encode(), 400, None),
    "a JSON string": (b'"referral"', 400, None),
    "JSON null": (b"null", 400, None),
    "an empty body": (b"", 400, None),
    "not UTF-8": (b'{"referralSource":"P2P","customerProfile":{"name":"\xff\xfe"}}', 400, None),
    "a lone surrogate": (
        b'{"referralSource":"P2P","customerProfile":{"name":"\\ud800"}}',
        400,
        "customerProfile.name",
    ),
    "a lone surrogate in a property name": (b'{"referralSource":"P2P","x\\ud800":1}', 400, "x\ud800"),
    "a lone surrogate in a repeated organization": (
        b'{"referralSource":"P2P","customerProfile":{"name":"C"},'
        b'"participants":[{"organizationId":"\\udc00"},{"organizationId":"\\udc00"}]}',
        400,
        "participants[1].organizationId",
    ),
    "a control character": (json.dumps(minimal_referral(additionalInformation="a\x07b")).encode(), 400, None),
    "a C1 control character": (json.dumps(minimal_referral(additionalInformation="a\x9bb")).encode(), 400, None),
    "an unknown property": (json.dumps(minimal_referral(__proto__={"admin": True})).encode(), 400, "__proto__"),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_hostile_bodies_are_refused_and_create_nothing(api: Api, name: str) -> None:
    body, status, target = BAD_BODIES[name]
    referral_id = new_id()
    reply = api.post(referral_id, body)
    assert_error(reply, status, target=target)
    assert_error(api.get(referral_id), 404, "itemNotFound")


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/json-patch+json", "application/xml", ""],
)
def test_bodies_of_other_media_types_are_415(api: Api, content_type: str) -> None:
    referral_id = new_id()
    reply = api.post(referral_id, minimal_referral(), headers={"Content-Type": content_type})
    assert_error(reply, 415, "unsupportedMediaType", "Content-Type")
    assert_error(api.get(referral_id), 404)


# ---- Mass assignment ------------------------------------------------------------------------------------


@pytest.fixture
def shared_referral(api: Api) -> dict[str, Any]:
    """A referral of organization A that has invited organization B."""
    referral_id = new_id()
    reply = api.post(referral_id, minimal_referral(participants=[{"organizationId": PARTNER_B}]))
    assert reply.status == 201, reply.body
    return reply.json | {"_etag": reply.headers["ETag"]}


def entry(referral: dict[str, Any], organization: str) -> dict[str, Any]:
    return next(p for p in referral["participants"] if p["organizationId"] == organization)


MASS_ASSIGNMENTS: dict[str, tuple[str, Any, int, str | None]] = {
    # name: (who sends it, patch (a function of the referral), status, target)
    "another id": ("A", lambda r: {"id": "ref-other"}, 400, "id"),
    "another createdDate": ("A", lambda r: {"createdDate": "2000-01-01T00:00:00.000000Z"}, 400, "createdDate"),
    "another updatedDate": ("A", lambda r: {"updatedDate": "2999-01-01T00:00:00.000000Z"}, 400, "updatedDate"),
    "forged activities": ("A", lambda r: {"activities": []}, 400, "activities"),
    "accepting B's invitation for B": (
        "A",
        lambda r: {"participants": [{"organizationId": PARTNER_B, "status": "Accepted"}]},
        403,
        "participants",
    ),
    "editing B's users": (
        "A",
        lambda r: {"participants": [{"organizationId": PARTNER_B, "users": [{"firstName": "Mallory"}]}]},
        403,
        "participants",
    ),
    "choosing its own participant id": (
        "A",
        lambda r: {"participants": [{"organizationId": PARTNER_A, "id": "mine"}]},
        400,
        "participants[0].id",
    ),
    "choosing who invited it": (
        "A",
        lambda r: {"participants": [{"organizationId": PARTNER_A, "invitedByParticipantId": "x"}]},
        400,
        "participants[0].invitedByParticipantId",
    ),
    "inviting an organization as already Accepted": (
        "A",
        lambda r: {"participants": [{"organizationId": NOT_ONBOARDED_ORG, "status": "Accepted"}]},
        403,
        "participants",
    ),
    "an invited organization changing the referral": ("B", lambda r: {"additionalInformation": "mine now"}, 403, None),
    "an invited organization accepting for itself and editing": (
        "B",
        lambda r: {"participants": [{"organizationId": PARTNER_B, "status": "Accepted"}], "status": "Lost"},
        403,
        None,
    ),
    "an invited organization changing A's entry": (
        "B",
        lambda r: {"participants": [{"organizationId": PARTNER_A, "status": "Rejected"}]},
        403,
        "participants",
    ),
    "a partner changing the referral source to WebDirect": ("A", lambda r: {"referralSource": "WebDirect"}, 403, None),
}


@pytest.mark.parametrize("name", list(MASS_ASSIGNMENTS))
def test_mass_assignment_is_refused_and_changes_nothing(api: Api, shared_referral: dict[str, Any], name: str) -> None:
    who, patch, status, target = MASS_ASSIGNMENTS[name]
    token = api.token(PARTNER_A if who == "A" else PARTNER_B)
    referral_id = shared_referral["id"]
    reply = api.post(referral_id, patch(shared_referral), token)
    assert_error(reply, status, target=target)
    after = api.get(referral_id)
    assert after.headers["ETag"] == shared_referral["_etag"]
    assert after.json == {k: v for k, v in shared_referral.items() if k != "_etag"}


def test_a_partner_cannot_create_a_referral_that_others_accepted_or_of_a_source_it_may_not(api: Api) -> None:
    accepted_for_b = minimal_referral(participants=[{"organizationId": PARTNER_B, "status": "Accepted"}])
    assert_error(api.post(referral_id := new_id(), accepted_for_b), 403, "accessDenied", "participants")
    assert_error(api.get(referral_id), 404)
    for source in ("WebDirect", "AgentLed", 0, 2):
        assert_error(api.post(referral_id, minimal_referral(referralSource=source)), 403, "accessDenied")
    assert_error(api.get(referral_id), 404)


# ---- HTTP framing, over a socket -------------------------------------------------------------------------


def raw_exchange(live: LiveHost, request: bytes, *, half_close: bool = True) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes to the local host; the first response's status, headers and body."""
    with socket.create_connection(("127.0.0.1", live.port), timeout=20) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, headers, rest[:length]


def http_request(live: LiveHost, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST /api{path} HTTP/1.1", f"Host: 127.0.0.1:{live.port}"]
    lines += [f"{name}: {value}" for name, value in live.headers(**headers).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def assert_raw_error(status: int, headers: dict[str, str], body: bytes, expected: int) -> None:
    assert status == expected, (status, body[:200])
    error = json.loads(body)["error"]
    assert headers["x-ms-error-code"] == error["code"] and error["message"]


def test_a_content_length_longer_than_the_body_is_400(live: LiveHost) -> None:
    referral_id = new_id()
    body = json.dumps(minimal_referral()).encode()
    request = http_request(
        live,
        f"/v1/referrals/{referral_id}",
        body,
        {"Content-Type": "application/json", "Content-Length": str(len(body) + 100)},
    )
    assert_raw_error(*raw_exchange(live, request), 400)
    assert live.request("GET", f"/v1/referrals/{referral_id}", headers=live.headers()).status_code == 404


def test_a_content_length_shorter_than_the_body_is_400(live: LiveHost) -> None:
    referral_id = new_id()
    body = json.dumps(minimal_referral()).encode()
    request = http_request(
        live,
        f"/v1/referrals/{referral_id}",
        body,
        {"Content-Type": "application/json", "Content-Length": str(len(body) - 10)},
    )
    assert_raw_error(*raw_exchange(live, request), 400)  # the truncated JSON is malformed
    assert live.request("GET", f"/v1/referrals/{referral_id}", headers=live.headers()).status_code == 404


@pytest.mark.parametrize(("length", "expected"), [("-5", 400), ("twelve", 400), ("99999999999999", 413), ("1e3", 400)])
def test_an_invalid_or_enormous_content_length_is_refused_without_reading(
    live: LiveHost, length: str, expected: int
) -> None:
    request = http_request(
        live, f"/v1/referrals/{new_id()}", b"{}", {"Content-Type": "application/json", "Content-Length": length}
    )
    assert_raw_error(*raw_exchange(live, request), expected)


def test_a_chunked_body_is_refused(live: LiveHost) -> None:
    request = http_request(
        live,
        f"/v1/referrals/{new_id()}",
        b"2\r\n{}\r\n0\r\n\r\n",
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    status, headers, body = raw_exchange(live, request)
    assert 400 <= status < 500
    assert_raw_error(status, headers, body, status)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/referrals/a%2Fb",
        "/v1/referrals/a%2fb",
        "/v1/referrals/%2e%2e",
        "/v1/referrals/x%27%20or%20%271%27%20eq%20%271",
        "/v1/referrals/a%00b",
        "/v1/referrals/%F0%9F%98%80",
    ],
)
def test_encoded_ids_over_http_are_400(live: LiveHost, path: str) -> None:
    reply = live.request("GET", path, headers=live.headers())
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["target"] == "referralId"


@pytest.mark.parametrize("path", ["/v1/referrals/a/b", "/v1/referrals/a/b/c", "/v2/referrals/x", "/v1/other"])
def test_paths_no_function_serves_are_404_with_the_envelope(live: LiveHost, path: str) -> None:
    reply = live.request("GET", path, headers=live.headers())
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "itemNotFound"


# ---- Regressions: what these tests found ------------------------------------------------------------


def test_a_client_request_id_with_a_line_break_is_ignored_not_echoed(api: Api) -> None:
    for value in ("crm-42\n", "crm-42\r\nSet-Cookie: x=y", "a" * 129):
        reply = api.get(new_id(), headers={"x-ms-client-request-id": value})
        assert_error(reply, 404, "itemNotFound")
        assert "x-ms-client-request-id" not in reply.headers
    assert api.get(new_id(), headers={"x-ms-client-request-id": "crm-42"}).headers["x-ms-client-request-id"] == "crm-42"


def test_an_enum_position_written_as_a_whole_float_is_that_position(api: Api) -> None:
    reply = api.post(new_id(), minimal_referral(status=1.0, referralSource=3.0))
    assert reply.status == 201, reply.body
    assert (reply.json["status"], reply.json["referralSource"]) == ("Active", "P2P")


def test_a_wrongly_typed_amount_names_the_property_not_pydantic_union_members(api: Api) -> None:
    reply = api.post(new_id(), minimal_referral(details={"dealValue": "5", "currency": "EUR"}))
    assert_error(reply, 400, "invalidRequest", "details.dealValue")
    assert all(detail["target"] == "details.dealValue" for detail in reply.json["error"].get("details", []))


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "QUERY"])
def test_other_methods_are_405_with_allow(live: LiveHost, method: str) -> None:
    for path, allowed in (("/v1/referrals/x", "GET, POST"), ("/v1/referrals", "GET")):
        reply = live.request(method, path, headers=live.headers())
        assert reply.status_code == 405, (method, path, reply.status_code)
        assert reply.headers["Allow"] == allowed
        assert reply.json()["error"]["code"] == "invalidRequest"
