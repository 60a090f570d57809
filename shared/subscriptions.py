"""Webhook subscriptions: create (with the CloudEvents validation handshake), read, list, delete, resume.

An organization sees and manages only its own subscriptions (another's is the same 404 as one that
does not exist), at most MAX_SUBSCRIPTIONS of them, and every operation needs Referrals.ReadWrite.
The secret is generated here, returned once by the creation response, and never again.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import uuid
from typing import Any

from shared import outbound
from shared.errors import InvalidRequest, ItemNotFound, ServiceNotAvailable
from shared.events import EVENT_TYPES, new_secret
from shared.guid import parse_guid
from shared.listing import index_owner
from shared.patching import canonical_names
from shared.policy import Caller, check_can_write
from shared.settings import settings
from shared.store import ALL_ORGANIZATIONS, ReferralStore, SlotTaken, StoredSubscription, WriteConflict
from shared.timestamps import utc_now

log = logging.getLogger("referrals.subscriptions")

MAX_SUBSCRIPTIONS = 10
ACTIVE = "Active"
SUSPENDED = "Suspended"
_CREATE_PROPERTIES = ("url", "events")


def view(subscription: StoredSubscription, *, with_secret: bool = False) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "id": subscription.subscription_id,
        "url": subscription.url,
        "events": list(subscription.events),
        "status": subscription.status,
        "createdDate": subscription.created_date,
    }
    if with_secret:
        shown["secret"] = subscription.secret
    return shown


def create(store: ReferralStore, caller: Caller, body: Any) -> StoredSubscription:
    check_can_write(caller)
    properties = canonical_names(body, _CREATE_PROPERTIES)
    url = properties.get("url")
    if not isinstance(url, str) or not url:
        raise InvalidRequest("'url' is required: the receiver's https:// URL.", target="url")
    events = properties.get("events", list(EVENT_TYPES))
    if (
        not isinstance(events, list)
        or not events
        or any(event not in EVENT_TYPES for event in events)
        or len(set(events)) != len(events)
    ):
        raise InvalidRequest(
            f"'events' is a non-empty list of distinct values of {list(EVENT_TYPES)}.", target="events"
        )
    if len(store.subscriptions(caller.organization_id)) >= MAX_SUBSCRIPTIONS:
        raise _too_many()
    handshake(url)
    # Each lost race means another creation took a slot: after MAX_SUBSCRIPTIONS of them none is free.
    for _ in range(MAX_SUBSCRIPTIONS + 1):
        taken = {item.slot for item in store.subscriptions(caller.organization_id)}
        free = [slot for slot in range(MAX_SUBSCRIPTIONS) if slot not in taken]
        if not free:
            raise _too_many()
        now = utc_now()
        subscription = StoredSubscription(
            organization=caller.organization_id,
            subscription_id=str(uuid.uuid4()),
            url=url,
            events=tuple(events),
            status=ACTIVE,
            created_date=now,
            secret=new_secret(),
            watermark=now,  # changes from now on (and DELTA_MARGIN before) are delivered
            delivered={},
            slot=random.choice(free),  # noqa: S311 (not security: spreads racing creations over slots)
            # What its organization may list: every referral only for an admin (`index_owner`).
            reads_all=index_owner(caller) == ALL_ORGANIZATIONS,
        )
        try:
            store.create_subscription(subscription)
            break
        except SlotTaken:
            continue  # a creation racing for the same slot took it: read the slots again
    else:
        raise ServiceNotAvailable("Subscriptions are being created concurrently; retry shortly.", retry_after_seconds=1)
    log.info(json.dumps({"event": "subscriptionCreated", "subscriptionId": subscription.subscription_id}))
    return subscription


def _too_many() -> InvalidRequest:
    return InvalidRequest(f"An organization has at most {MAX_SUBSCRIPTIONS} subscriptions.")


def handshake(url: str) -> None:
    """The CloudEvents webhook validation handshake (abuse protection): OPTIONS with
    WebHook-Request-Origin; the receiver must answer 200 with WebHook-Allowed-Origin naming us or *."""
    config = settings.webhooks()
    try:
        answer = outbound.send(
            url, "OPTIONS", {"WebHook-Request-Origin": config.origin}, allow_loopback=config.allow_loopback
        )
    except outbound.OutboundRefused as refused:
        raise InvalidRequest(f"The receiver cannot be used: {refused}", target="url") from None
    except (OSError, http.client.HTTPException):
        raise InvalidRequest("The receiver did not answer the validation handshake.", target="url") from None
    allowed = answer.headers.get("webhook-allowed-origin", "").strip()
    if answer.status != 200 or allowed not in (config.origin, "*"):
        raise InvalidRequest(
            "The receiver refused the validation handshake: it must answer OPTIONS with 200 and"
            f" WebHook-Allowed-Origin: {config.origin} (or *).",
            target="url",
        )


def subscription_id(raw: str | None) -> str:
    parsed = parse_guid(raw or "")
    if parsed is None:
        raise ItemNotFound("No such subscription.", target="subscriptionId")
    return parsed


def get(store: ReferralStore, caller: Caller, raw_id: str) -> StoredSubscription:
    check_can_write(caller)
    found = store.subscription(caller.organization_id, subscription_id(raw_id))
    if found is None:
        raise ItemNotFound("No such subscription.", target="subscriptionId")
    return found


def list_all(store: ReferralStore, caller: Caller) -> list[StoredSubscription]:
    check_can_write(caller)
    return sorted(store.subscriptions(caller.organization_id), key=lambda item: item.created_date)


def delete(store: ReferralStore, caller: Caller, raw_id: str) -> None:
    found = get(store, caller, raw_id)
    store.delete_subscription(found)


def resume(store: ReferralStore, caller: Caller, raw_id: str, body: Any) -> StoredSubscription:
    """POST {"status": "Active"}: a suspended subscription is delivered to again, from where it stopped."""
    found = get(store, caller, raw_id)
    properties = canonical_names(body, ["status"])
    if properties.get("status") != ACTIVE:
        raise InvalidRequest('A subscription is resumed with {"status": "Active"}.', target="status")
    for _ in range(3):  # a delivery pass may save its position meanwhile: read again, resume that
        resumed = found._replace(status=ACTIVE, failures=0, failing_since=None, next_attempt_at=None)
        if resumed == found:
            return found
        try:
            return store.save_subscription(resumed)
        except WriteConflict:
            found = get(store, caller, raw_id)
    raise ServiceNotAvailable("The subscription is being changed right now; retry shortly.", retry_after_seconds=1)
