"""Webhooks (issue 14): subscriptions, signed CloudEvents, delivery that resumes after any outage.

Against Azurite, with real receivers: http.server threads on 127.0.0.1 (WEBHOOKS_ALLOW_LOOPBACK=true,
as in local settings). One delivery pass is one call of deliver_events' `main` with a timer request.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

import deliver_events
import subscriptions
from shared import delivery, outbound, service
from shared.store import get_store
from shared.timestamps import parse_utc
from tests.conftest import HOME, PARTNER_A, PARTNER_B, Api, Reply, minimal_referral, new_id, reset_process_state

URL = "http://localhost:7071/api/v1/subscriptions"


@dataclass
class Receipt:
    headers: dict[str, str]
    body: bytes
    answered: int  # the status the receiver answered (0: it let the request time out)

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: records every POST and answers as told."""

    server: ThreadingHTTPServer
    status: int = 200
    delay: float = 0.0  # seconds to wait before answering a POST (a timeout when past the client's)
    slow: float = 0.0  # seconds to wait before acknowledging a POST normally (a slow, healthy receiver)
    allowed_origin: str | None = "*"
    handshake_status: int = 200
    receipts: list[Receipt] = field(default_factory=list)
    options_requests: list[dict[str, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def acknowledged(self) -> list[Receipt]:
        return [receipt for receipt in self.receipts if 200 <= receipt.answered < 300]

    def referral_events(self) -> list[tuple[str, str]]:
        """(referralId, type) of every acknowledged event, in the order received."""
        return [(r.event["data"]["referralId"], r.event["type"]) for r in self.acknowledged()]


def start_receiver() -> Receiver:
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_OPTIONS(self) -> None:
            receiver = holder[0]
            receiver.options_requests.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(receiver.handshake_status)
            if receiver.allowed_origin is not None:
                self.send_header("WebHook-Allowed-Origin", receiver.allowed_origin)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            receiver = holder[0]
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            if receiver.delay:
                receiver.receipts.append(Receipt(headers, body, 0))
                time.sleep(receiver.delay)
                return
            time.sleep(receiver.slow)
            receiver.receipts.append(Receipt(headers, body, receiver.status))
            self.send_response(receiver.status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver = Receiver(server)
    holder.append(receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = start_receiver()
    yield made
    made.server.shutdown()
    made.server.server_close()


@pytest.fixture
def hooks_env(api_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFERRALS_TABLE", f"Hooks{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("WEBHOOKS_ALLOW_LOOPBACK", "true")
    monkeypatch.setattr(delivery, "BACKOFF_BASE_SECONDS", 0.0)  # every pass retries; backoff has its own test
    reset_process_state()


def call(
    api: Api, method: str, subscription_id: str | None = None, body: Any = None, token: str | None = None
) -> Reply:
    raw = b"" if body is None else json.dumps(body).encode()
    request = func.HttpRequest(
        method=method,
        url=URL + (f"/{subscription_id}" if subscription_id else ""),
        headers={"Authorization": f"Bearer {token or api.token()}", "Content-Type": "application/json"},
        params={},
        route_params={"subscriptionId": subscription_id} if subscription_id else {},
        body=raw,
    )
    response = subscriptions.main(request)
    return Reply(response.status_code, dict(response.headers), response.get_body())


def subscribe(api: Api, url: str, token: str | None = None, **extra: Any) -> dict[str, Any]:
    reply = call(api, "POST", body={"url": url, **extra}, token=token)
    assert reply.status == 201, reply.body
    return dict(reply.json)


def deliver() -> None:
    deliver_events.main(TimerRequest())


def create(api: Api, token: str | None = None, **extra: Any) -> str:
    referral_id = new_id()
    reply = api.post(referral_id, minimal_referral(**extra), token)
    assert reply.status == 201, reply.body
    return referral_id


# --- subscriptions -------------------------------------------------------------------------------


def test_create_read_list_delete_and_the_secret_only_once(api: Api, hooks_env: None, receiver: Receiver) -> None:
    created = subscribe(api, receiver.url, events=["referral-updated"])
    assert created["status"] == "Active" and created["events"] == ["referral-updated"]
    assert created["secret"].startswith("whsec_") and len(created["secret"]) >= 6 + 32
    assert receiver.options_requests[0]["webhook-request-origin"] == "localhost"
    one = call(api, "GET", created["id"])
    assert one.status == 200 and "secret" not in one.json
    assert one.json == {k: v for k, v in created.items() if k != "secret"}
    listed = call(api, "GET")
    assert [item["id"] for item in listed.json["value"]] == [created["id"]]
    assert "secret" not in json.dumps(listed.json)
    assert call(api, "DELETE", created["id"]).status == 204
    assert call(api, "GET", created["id"]).status == 404
    assert call(api, "DELETE", created["id"]).status == 404
    referral_id = create(api)
    assert api.post(referral_id, {"status": "Active"}).status == 200
    deliver()
    assert receiver.receipts == []  # nothing goes to a deleted subscription


def test_the_first_call_on_a_new_table_lists_no_subscriptions_and_delivers_nothing(
    api: Api, hooks_env: None
) -> None:
    # Both query the table; the store makes it first (`_existing_table`), or storage's TableNotFound
    # would be a 500 and a failed pass.
    deliver()
    listed = call(api, "GET")
    assert listed.status == 200 and listed.json["value"] == []


def test_an_organization_sees_only_its_own_subscriptions_at_most_ten(
    api: Api, hooks_env: None, receiver: Receiver
) -> None:
    mine = subscribe(api, receiver.url)
    other = api.token(PARTNER_B)
    assert call(api, "GET", mine["id"], token=other).status == 404
    assert call(api, "DELETE", mine["id"], token=other).status == 404
    assert call(api, "POST", mine["id"], {"status": "Active"}, token=other).status == 404
    assert call(api, "GET", token=other).json == {"value": []}
    for _ in range(9):
        subscribe(api, receiver.url)
    eleventh = call(api, "POST", body={"url": receiver.url})
    assert eleventh.status == 400 and eleventh.error_code == "invalidRequest"
    read_only = api.token(roles=["Referrals.Read"])
    assert call(api, "GET", token=read_only).status == 403


@pytest.mark.parametrize(
    "body",
    [{}, {"url": 5}, {"url": "x", "extra": 1}, {"events": []}, {"events": ["referral-deleted"]}],
)
def test_invalid_creation_bodies_are_400(api: Api, hooks_env: None, body: dict[str, Any]) -> None:
    reply = call(api, "POST", body=body)
    assert reply.status == 400 and reply.error_code == "invalidRequest"


@pytest.mark.parametrize("answer", ["wrong-origin", "no-header", "status-204", "unreachable"])
def test_a_refused_handshake_is_400_on_url(api: Api, hooks_env: None, receiver: Receiver, answer: str) -> None:
    url = receiver.url
    if answer == "wrong-origin":
        receiver.allowed_origin = "someone-else.example"
    elif answer == "no-header":
        receiver.allowed_origin = None
    elif answer == "status-204":
        receiver.handshake_status = 204
    else:
        receiver.server.shutdown()
        receiver.server.server_close()
    reply = call(api, "POST", body={"url": url})
    assert reply.status == 400 and reply.json["error"]["target"] == "url"
    assert call(api, "GET").json == {"value": []}


# --- events and signatures -----------------------------------------------------------------------


def test_events_are_signed_cloudevents_without_customer_data(api: Api, hooks_env: None, receiver: Receiver) -> None:
    secret = subscribe(api, receiver.url)["secret"]
    referral_id = create(api, customerProfile={"name": "Secret Customer GmbH"})
    assert api.post(referral_id, {"status": "Active"}).status == 200
    deliver()
    (receipt,) = receiver.acknowledged()  # the two changes merged into the latest
    event = Webhook(secret).verify(receipt.body, receipt.headers)
    # The receiver had not heard of the referral: the merged event is its creation, at its latest state.
    assert event["specversion"] == "1.0" and event["type"] == "referral-created"
    assert event["subject"] == f"/api/v1/referrals/{referral_id}"
    assert event["id"] == receipt.headers["webhook-id"]
    current = api.get(referral_id)
    assert event["data"] == {
        "referralId": referral_id,
        "etag": current.headers["ETag"],
        "status": "Active",
        "updatedDate": current.json["updatedDate"],
        "changedProperties": ["status"],
    }
    assert "Secret Customer" not in receipt.body.decode()
    assert receipt.headers["content-type"].startswith("application/cloudevents+json")
    for position in (0, len(receipt.body) // 2, len(receipt.body) - 1):
        tampered = bytearray(receipt.body)
        tampered[position] ^= 0x01
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(bytes(tampered), receipt.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(receipt.body, {**receipt.headers, "webhook-id": receipt.headers["webhook-id"] + "x"})


def test_a_new_referral_is_referral_created_and_a_healthy_receiver_gets_each_change_once(
    api: Api, hooks_env: None, receiver: Receiver
) -> None:
    subscribe(api, receiver.url)
    referral_id = create(api)
    written = time.monotonic()
    deliver()
    latency = time.monotonic() - written
    assert receiver.referral_events() == [(referral_id, "referral-created")]
    assert latency < 5  # the pass itself; the timer runs every 5 s, so well within 15 s of the write
    deliver()
    deliver()  # the read-back (DELTA_MARGIN) meets the change again: not sent twice
    assert len(receiver.receipts) == 1
    assert api.post(referral_id, {"status": "Active"}).status == 200
    deliver()
    assert receiver.referral_events() == [(referral_id, "referral-created"), (referral_id, "referral-updated")]
    ids = [receipt.event["id"] for receipt in receiver.receipts]
    assert len(set(ids)) == 2


def test_a_subscription_gets_only_the_event_types_it_asked_for(api: Api, hooks_env: None, receiver: Receiver) -> None:
    subscribe(api, receiver.url, events=["referral-updated"])
    referral_id = create(api)
    deliver()
    assert receiver.receipts == []
    assert api.post(referral_id, {"status": "Active"}).status == 200
    deliver()
    assert receiver.referral_events() == [(referral_id, "referral-updated")]


def test_a_creation_merged_with_later_changes_reaches_creation_and_update_subscribers_alike(
    api: Api, hooks_env: None
) -> None:
    created_only, updated_only, both = start_receiver(), start_receiver(), start_receiver()
    invitee = start_receiver()
    try:
        subscribe(api, created_only.url, events=["referral-created"])
        subscribe(api, updated_only.url, events=["referral-updated"])
        subscribe(api, both.url)
        subscribe(api, invitee.url, token=api.token(PARTNER_B), events=["referral-created"])
        referral_id = create(api, participants=[{"organizationId": PARTNER_B}])
        assert api.post(referral_id, {"status": "Active"}).status == 200  # before any pass told anyone
        etag = api.get(referral_id).headers["ETag"]
        deliver()
        assert created_only.referral_events() == [(referral_id, "referral-created")]
        assert updated_only.referral_events() == [(referral_id, "referral-updated")]
        assert both.referral_events() == [(referral_id, "referral-created")]
        assert invitee.referral_events() == [(referral_id, "referral-created")]  # invited from the start
        for made in (created_only, updated_only, both, invitee):
            assert made.acknowledged()[0].event["data"]["etag"] == etag  # the latest version, merged
        assert api.post(referral_id, {"status": "Won"}).status == 200
        deliver()
        assert created_only.referral_events() == [(referral_id, "referral-created")]  # no news of a creation
        assert updated_only.referral_events() == [(referral_id, "referral-updated")] * 2
        assert both.referral_events() == [(referral_id, "referral-created"), (referral_id, "referral-updated")]
    finally:
        for made in (created_only, updated_only, both, invitee):
            made.server.shutdown()
            made.server.server_close()


def test_a_creation_left_by_a_failed_pass_is_retried_as_the_same_created_event(
    api: Api, hooks_env: None, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A short read-back, so that the failed pass's position could move past the creation within the test.
    monkeypatch.setattr(service, "DELTA_MARGIN", timedelta(milliseconds=300))
    older = create(api)
    time.sleep(0.6)
    subscribe(api, receiver.url, events=["referral-created"])
    referral_id = create(api)
    # A change to a referral created before the subscription: no news to it, and the pass deals with
    # its row, between the new referral's creation and its change, without sending anything.
    assert api.post(older, {"status": "Active"}).status == 200
    assert api.post(referral_id, {"status": "Active"}).status == 200  # merged with the creation
    time.sleep(0.6)  # the creation is now older than the pass's start less the read-back
    receiver.status = 500
    deliver()
    (refused,) = receiver.receipts
    receiver.status = 200
    deliver()
    (received,) = receiver.acknowledged()
    assert received.event["type"] == refused.event["type"] == "referral-created"
    assert received.event["id"] == refused.event["id"]
    assert received.event["data"]["referralId"] == referral_id


def _stored(referral_id: str, created: str, updated: str, activities: list[dict[str, Any]] | None = None) -> Any:
    from shared.store import StoredReferral

    document = {"id": referral_id, "createdDate": created, "updatedDate": updated, "activities": activities or []}
    return StoredReferral(referral_id, json.dumps(document), '"v"', frozenset({PARTNER_A}), updated, "", "", 0)


def test_an_organization_invited_after_the_creation_hears_of_it_as_an_update_however_soon() -> None:
    from shared.store import StoredSubscription

    creation = {"action": "Created", "changes": [{"property": f"participants[{PARTNER_A}].status", "to": "Accepted"}]}
    invite = {"action": "Updated", "changes": [{"property": f"participants[{PARTNER_B}].status", "to": "Invited"}]}
    referral = _stored("r", "2026-12-02T10:00:05.000000Z", "2026-12-02T10:00:06.000000Z", [creation, invite])
    floor = "2026-12-02T10:00:00.000000Z"
    events = ("referral-created", "referral-updated")
    for organization, reads_all, expected in [
        (PARTNER_A, False, "referral-created"),
        (PARTNER_B, False, "referral-updated"),
        (PARTNER_B, True, "referral-created"),  # an admin's subscription sees every creation
    ]:
        subscription = StoredSubscription(organization, "s", "https://x.test/", events, "Active", "t", "k", "t", {},
                                          reads_all=reads_all)
        assert delivery.news_type(subscription, referral, {}, floor) == expected


@pytest.mark.parametrize(
    ("events", "created", "delivered", "expected"),
    [
        # Created within the read-back, nothing of it dealt with: the receiver's news is its creation.
        (("referral-created",), "2026-12-02T10:00:05.000000Z", {}, "referral-created"),
        (("referral-created", "referral-updated"), "2026-12-02T10:00:05.000000Z", {}, "referral-created"),
        (("referral-updated",), "2026-12-02T10:00:05.000000Z", {}, "referral-updated"),
        # Something of it was dealt with since its creation: only an update is news.
        (("referral-created",), "2026-12-02T10:00:05.000000Z", {"r": "2026-12-02T10:00:05.000000Z"}, None),
        (("referral-created", "referral-updated"), "2026-12-02T10:00:05.000000Z",
         {"r": "2026-12-02T10:00:05.000000Z"}, "referral-updated"),
        # Created before the floor (delivered, or before the subscription): its creation is old news.
        (("referral-created",), "2026-12-02T09:59:59.000000Z", {}, None),
        (("referral-created", "referral-updated"), "2026-12-02T09:59:59.000000Z", {}, "referral-updated"),
    ],
)
def test_the_event_type_is_what_is_news_to_the_subscription(
    events: tuple[str, ...], created: str, delivered: dict[str, str], expected: str | None
) -> None:
    from shared.store import StoredSubscription

    subscription = StoredSubscription(PARTNER_A, "s", "https://x.test/", events, "Active", "t", "k", "t", {})
    referral = _stored("r", created, "2026-12-02T10:00:09.000000Z")
    assert delivery.news_type(subscription, referral, delivered, "2026-12-02T10:00:00.000000Z") == expected
    # A first version is never an update.
    first = _stored("r", created, created)
    assert delivery.news_type(subscription, first, delivered, "2026-12-02T10:00:00.000000Z") in (
        "referral-created" if expected == "referral-created" else None,
        None,
    )


# --- isolation -----------------------------------------------------------------------------------


def test_isolation_events_only_for_referrals_the_organization_participates_in(api: Api, hooks_env: None) -> None:
    a, b, admins = start_receiver(), start_receiver(), start_receiver()
    try:
        subscribe(api, a.url)
        subscribe(api, b.url, token=api.token(PARTNER_B))
        subscribe(api, admins.url, token=api.admin_token())
        only_a = create(api)
        deliver()
        assert a.referral_events() == [(only_a, "referral-created")]
        assert b.receipts == []
        assert admins.referral_events() == [(only_a, "referral-created")]
        # From the moment it is invited, B gets the referral's changes.
        assert api.post(only_a, {"participants": [{"organizationId": PARTNER_B}]}).status == 200
        deliver()
        assert b.referral_events() == [(only_a, "referral-updated")]
        assert api.post(only_a, {"status": "Active"}).status == 200
        deliver()
        assert b.referral_events() == [(only_a, "referral-updated")] * 2
        assert len(a.acknowledged()) == 3 and len(admins.acknowledged()) == 3
        own_b = create(api, api.token(PARTNER_B))
        deliver()
        assert own_b not in {referral for referral, _ in a.referral_events()}
        assert (own_b, "referral-created") in b.referral_events()
        assert (own_b, "referral-created") in admins.referral_events()
    finally:
        for made in (a, b, admins):
            made.server.shutdown()
            made.server.server_close()


# --- failures, retries, suspension ---------------------------------------------------------------


def test_a_receiver_down_for_several_passes_then_up_gets_everything_duplicates_only_after_failures(
    api: Api, hooks_env: None, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscription = subscribe(api, receiver.url)
    first = create(api)
    deliver()
    receiver.status = 503
    written = [create(api) for _ in range(3)]
    assert api.post(first, {"status": "Active"}).status == 200
    for _ in range(3):
        deliver()  # each pass stops at the first failure
    failed_ids = [receipt.event["id"] for receipt in receiver.receipts if receipt.answered == 503]
    # One attempt a pass. Usually the same event each time; it can differ when `first`'s superseded
    # index row (deleted after the response, in the background) is still there on one pass and not
    # the next: that row shows `first` as it is now, ahead of the three new referrals.
    assert len(failed_ids) == 3
    monkeypatch.setattr(outbound, "TIMEOUT_SECONDS", 0.3)
    receiver.delay = 1.0  # answers too late: a timeout is a failure too
    deliver()
    assert receiver.receipts[-1].answered == 0
    receiver.delay, receiver.status = 0.0, 200
    deliver()
    got = {receipt.event["data"]["referralId"] for receipt in receiver.acknowledged()}
    assert got == {first, *written}
    acknowledged_ids = [receipt.event["id"] for receipt in receiver.acknowledged()]
    assert len(acknowledged_ids) == len(set(acknowledged_ids))  # nothing acknowledged came twice
    assert set(failed_ids) <= set(acknowledged_ids)  # every failed event came again, and got through
    retried = {receipt.event["id"] for receipt in receiver.receipts if not 200 <= receipt.answered < 300}
    duplicates = {
        i for i in (r.event["id"] for r in receiver.receipts) if sum(r.event["id"] == i for r in receiver.receipts) > 1
    }
    assert duplicates <= retried  # duplicates only of events whose attempt failed or timed out
    # Per referral, in updatedDate order: `first` came created, then (after its update) updated.
    first_events = [t for referral, t in receiver.referral_events() if referral == first]
    assert first_events == ["referral-created", "referral-updated"]
    stored = get_store().subscription(PARTNER_A, subscription["id"])
    assert stored is not None and stored.failures == 0 and stored.next_attempt_at is None


def test_backoff_spaces_out_attempts_with_jitter(
    api: Api, hooks_env: None, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "BACKOFF_BASE_SECONDS", 60.0)
    subscription = subscribe(api, receiver.url)
    create(api)
    receiver.status = 500
    deliver()
    deliver()  # not due yet: no second attempt
    assert len(receiver.receipts) == 1
    stored = get_store().subscription(PARTNER_A, subscription["id"])
    assert stored is not None and stored.failures == 1 and stored.next_attempt_at is not None
    wait = (parse_utc(stored.next_attempt_at) - parse_utc(stored.failing_since or "")).total_seconds()
    assert 29 <= wait <= 61


def test_suspended_after_the_retry_budget_and_resumed_from_where_it_stopped(
    api: Api, hooks_env: None, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOKS_RETRY_SECONDS", "1")
    reset_process_state()
    subscription = subscribe(api, receiver.url)
    receiver.status = 500
    ids = [create(api), create(api)]
    deliver()
    time.sleep(1.1)
    deliver()
    shown = call(api, "GET", subscription["id"]).json
    assert shown["status"] == "Suspended"
    attempts = len(receiver.receipts)
    deliver()
    assert len(receiver.receipts) == attempts  # a suspended subscription is not delivered to
    receiver.status = 200
    later = create(api)
    resumed = call(api, "POST", subscription["id"], {"status": "Active"})
    assert resumed.status == 200 and resumed.json["status"] == "Active"
    deliver()
    assert {referral for referral, _ in receiver.referral_events()} == {*ids, later}
    assert call(api, "POST", subscription["id"], {"status": "Suspended"}).status == 400


# --- outbound address checks ---------------------------------------------------------------------

REFUSED_ADDRESSES = [
    "10.1.2.3",  # private
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # link-local: the instance metadata endpoint
    "224.0.0.1",  # multicast
    "0.0.0.0",  # noqa: S104 (unspecified: refused, never bound)
    "240.0.0.1",  # reserved
    "100.64.0.1",  # shared address space: not globally routable
    "fe80::1",  # IPv6 link-local
    "fc00::1",  # IPv6 unique local (private)
    "ff02::1",  # IPv6 multicast
    "::",  # IPv6 unspecified
    "::ffff:10.0.0.1",  # IPv4-mapped private
]


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    real = outbound.resolve
    monkeypatch.setattr(outbound, "resolve", lambda host, port: answers[host] if host in answers else real(host, port))


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_every_refused_address_is_400_at_creation(
    api: Api, hooks_env: None, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    fake_dns(monkeypatch, {"hooks.partner.test": [address]})
    reply = call(api, "POST", body={"url": f"https://hooks.partner.test:{receiver.server.server_address[1]}/"})
    assert reply.status == 400 and reply.json["error"]["target"] == "url"
    assert receiver.options_requests == []
    # One refused address among good ones is enough to refuse.
    fake_dns(monkeypatch, {"hooks.partner.test": ["127.0.0.1", address]})
    reply = call(api, "POST", body={"url": f"http://hooks.partner.test:{receiver.server.server_address[1]}/"})
    assert reply.status == 400 and reply.json["error"]["target"] == "url"
    assert receiver.options_requests == []


def test_loopback_and_http_are_refused_unless_allowed_and_http_only_to_loopback(
    api: Api, hooks_env: None, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"public.partner.test": ["203.0.113.7"], "www.partner.test": ["93.184.215.14"]})
    assert call(api, "POST", body={"url": "http://www.partner.test/hooks"}).status == 400  # http, not loopback
    assert call(api, "POST", body={"url": "ftp://www.partner.test/hooks"}).status == 400
    assert call(api, "POST", body={"url": "https://user:pw@www.partner.test/hooks"}).status == 400
    assert call(api, "POST", body={"url": "https://public.partner.test/"}).status == 400  # TEST-NET: not global
    monkeypatch.setenv("WEBHOOKS_ALLOW_LOOPBACK", "false")
    reset_process_state()
    for url in (
        receiver.url,
        receiver.url.replace("http:", "https:"),
        f"http://[::1]:{receiver.server.server_address[1]}/",
    ):
        reply = call(api, "POST", body={"url": url})
        assert reply.status == 400 and reply.json["error"]["target"] == "url"
    assert receiver.options_requests == []


def test_delivery_refuses_a_name_that_resolves_to_a_private_address_after_creation(
    api: Api, hooks_env: None, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = receiver.server.server_address[1]
    fake_dns(monkeypatch, {"hooks.partner.test": ["127.0.0.1"]})
    subscription = subscribe(api, f"http://hooks.partner.test:{port}/hooks")
    assert receiver.options_requests[0]["host"] == f"hooks.partner.test:{port}"  # the name, pinned address
    referral_id = create(api)
    for address in REFUSED_ADDRESSES:
        fake_dns(monkeypatch, {"hooks.partner.test": [address]})
        deliver()
    assert receiver.receipts == []  # nothing was sent anywhere
    stored = get_store().subscription(PARTNER_A, subscription["id"])
    assert stored is not None and stored.failures == len(REFUSED_ADDRESSES)
    fake_dns(monkeypatch, {"hooks.partner.test": ["127.0.0.1"]})
    deliver()
    assert receiver.referral_events() == [(referral_id, "referral-created")]


def test_delivery_rechecks_loopback_when_the_setting_is_turned_off(
    api: Api, hooks_env: None, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscribe(api, receiver.url)
    create(api)
    monkeypatch.setenv("WEBHOOKS_ALLOW_LOOPBACK", "false")
    reset_process_state()
    deliver()
    assert receiver.receipts == []


def test_no_redirect_is_followed_and_at_most_4_kib_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path == "/redirect":
                self.send_response(307)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            payload = b"x" * 100_000
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        answer = outbound.send(base + "/redirect", "POST", {}, b"{}", allow_loopback=True)
        assert answer.status == 307  # a failure for delivery, never followed
        answer = outbound.send(base + "/big", "POST", {}, b"{}", allow_loopback=True)
        assert answer.status == 200 and len(answer.body) == outbound.MAX_RESPONSE_BYTES
    finally:
        server.shutdown()
        server.server_close()


def test_the_webhook_settings_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.errors import ConfigurationError
    from shared.settings import load_webhook_settings

    assert load_webhook_settings({}).allow_loopback is False
    assert load_webhook_settings({}).retry_seconds == 86400
    assert load_webhook_settings({"WEBHOOKS_ALLOW_LOOPBACK": "TRUE"}).allow_loopback is True
    for env in ({"WEBHOOKS_ALLOW_LOOPBACK": "yes"}, {"WEBHOOKS_RETRY_SECONDS": "0"}, {"WEBHOOKS_RETRY_SECONDS": "x"}):
        with pytest.raises(ConfigurationError):
            load_webhook_settings(env)


def test_admins_subscription_reads_every_referral_and_only_an_admins(api: Api, hooks_env: None) -> None:
    admins, home_non_admin = start_receiver(), start_receiver()
    try:
        subscribe(api, admins.url, token=api.admin_token())
        # Our own tenant without Referrals.Admin lists only its own referrals: so do its webhooks.
        subscribe(api, home_non_admin.url, token=api.token(HOME))
        ids = {create(api), create(api, api.token(PARTNER_B))}
        deliver()
        assert {referral for referral, _ in admins.referral_events()} == ids
        assert home_non_admin.receipts == []
    finally:
        for made in (admins, home_non_admin):
            made.server.shutdown()
            made.server.server_close()


def test_a_backlog_larger_than_a_pass_is_delivered_over_several_and_the_position_keeps_up(
    api: Api, hooks_env: None, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "MAX_EVENTS_PER_PASS", 2)
    monkeypatch.setattr(service, "DELTA_MARGIN", timedelta(seconds=0.2))
    subscription = subscribe(api, receiver.url)
    written = [create(api) for _ in range(7)]
    time.sleep(0.3)  # the backlog is older than the (shortened) read-back
    positions = []
    for _ in range(5):
        deliver()
        stored = get_store().subscription(PARTNER_A, subscription["id"])
        assert stored is not None
        positions.append(stored.watermark)
        assert len(stored.delivered) <= 2  # about one pass's worth, not the whole backlog
    assert [referral for referral, _ in receiver.referral_events()] == written  # oldest first, each once
    assert positions == sorted(positions) and positions[0] > subscription["createdDate"]


def test_https_goes_to_the_checked_address_with_the_name_as_tls_server_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection is pinned to the address that was checked, while TLS still names (and
    verifies) the host: a self-signed receiver on 127.0.0.1 sees the name in SNI and is refused for
    its certificate, never reached by a second DNS lookup."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.partner.test")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.partner.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server_names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")

    def record_server_name(_socket: ssl.SSLObject, server_name: str | None, _context: ssl.SSLContext) -> None:
        server_names.append(server_name)

    context.sni_callback = record_server_name
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept() -> None:
        connection, _ = listener.accept()
        with contextlib.suppress(OSError), context.wrap_socket(connection, server_side=True):
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    lookups: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(outbound, "resolve", resolve)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            outbound.send(f"https://hooks.partner.test:{port}/hooks", "POST", {}, b"{}", allow_loopback=True)
        thread.join(5)
    finally:
        listener.close()
    assert server_names == ["hooks.partner.test"]  # SNI is the name; the socket went to 127.0.0.1
    assert lookups == ["hooks.partner.test"]  # one lookup: the one that was checked


def test_concurrent_creations_never_make_more_than_ten(api: Api, hooks_env: None, receiver: Receiver) -> None:
    token = api.token()
    statuses: list[int] = []
    barrier = threading.Barrier(13)

    def attempt() -> None:
        barrier.wait()
        statuses.append(call(api, "POST", body={"url": receiver.url}, token=token).status)

    threads = [threading.Thread(target=attempt) for _ in range(13)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] * 10 + [400] * 3
    listed = call(api, "GET").json["value"]
    assert len(listed) == 10
    assert call(api, "DELETE", listed[0]["id"]).status == 204  # frees its slot
    subscribe(api, receiver.url)
    assert call(api, "POST", body={"url": receiver.url}).status == 400


# --- receivers that hold on, odd URLs, offboarding (a hostile test's findings) --------------------


@contextlib.contextmanager
def trickling_receiver(every_seconds: float) -> Iterator[str]:
    """A raw TCP receiver that reads the request, then sends its answer a byte every `every_seconds`:
    each read of the client's returns in time, but the answer never ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nWebHook-Allowed-Origin: *\r\n" * 20:
                    if stop.wait(every_seconds):
                        break
                    try:
                        connection.sendall(bytes([byte]))
                    except OSError:
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hooks"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_a_receiver_that_trickles_is_cut_off_at_the_deadline(api: Api, hooks_env: None) -> None:
    with trickling_receiver(every_seconds=0.2) as url:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            outbound.send(url, "POST", {}, b"{}", allow_loopback=True, timeout=1.0)
        assert time.monotonic() - started < 3.0  # per-read timeouts alone would wait out all 1,000 bytes
        started = time.monotonic()
        reply = call(api, "POST", body={"url": url})  # the handshake, with the 5 s total
        assert reply.status == 400 and reply.json["error"]["target"] == "url", reply.body
        assert time.monotonic() - started < outbound.TIMEOUT_SECONDS + 3.0


@pytest.mark.parametrize("path", ["/hé", "/%C3%A9"])
def test_a_receiver_url_must_be_ascii(api: Api, hooks_env: None, receiver: Receiver, path: str) -> None:
    url = receiver.url.removesuffix("/hooks") + path
    reply = call(api, "POST", body={"url": url})
    if path.isascii():
        assert reply.status == 201, reply.body  # percent-encoded: the same path, accepted
    else:
        assert reply.status == 400 and reply.json["error"]["target"] == "url", reply.body


def test_an_organization_taken_off_the_onboarded_list_gets_no_more_events(
    api: Api, hooks_env: None, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscribe(api, receiver.url, token=api.token(PARTNER_B))
    referral_id = create(api, participants=[{"organizationId": PARTNER_B}])
    deliver()
    assert receiver.referral_events() == [(referral_id, "referral-created")]
    monkeypatch.setenv("AUTH_ALLOWED_TENANTS", PARTNER_A)  # B is offboarded
    reset_process_state()
    assert api.post(referral_id, {"status": "Active"}).status == 200
    deliver()
    assert receiver.referral_events() == [(referral_id, "referral-created")]
    monkeypatch.setenv("AUTH_ALLOWED_TENANTS", f"{PARTNER_A},{PARTNER_B}")  # and onboarded again
    reset_process_state()
    deliver()
    assert receiver.referral_events() == [(referral_id, "referral-created"), (referral_id, "referral-updated")]


def test_a_slow_receiver_holds_a_pass_no_longer_than_its_bound_and_others_are_served_in_it(
    api: Api, hooks_env: None
) -> None:
    slow, other = start_receiver(), start_receiver()
    try:
        subscribe(api, slow.url)
        subscribe(api, other.url, token=api.token(PARTNER_B))
        slow.slow = 1.0  # each event acknowledged, a second later
        # 9 s of sending: more than a pass may start sends for (5 s), less than the 20 s it used to be.
        backlog = [create(api) for _ in range(9)]
        own_b = create(api, api.token(PARTNER_B))
        deliver()
        # The pass started no send after PASS_SECONDS: part of the backlog waits for the next pass (with
        # the 20 s the bound used to be, all of it went in one pass that held everyone's next events).
        first_pass = [referral for referral, _ in slow.referral_events()]
        assert 0 < len(first_pass) < len(backlog)
        assert other.referral_events() == [(own_b, "referral-created")]  # served in the same pass
        slow.slow = 0.0
        deliver()
        assert [referral for referral, _ in slow.referral_events()] == backlog  # the rest, in order, once
    finally:
        for made in (slow, other):
            made.server.shutdown()
            made.server.server_close()
