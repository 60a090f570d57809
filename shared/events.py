"""Webhook events: what an event is, and how it is signed. Pure: a referral in, bytes and headers out.

An event is a CloudEvents 1.0 structured JSON document (built with the `cloudevents` package) that
names a change of a referral and holds no customer data: the receiver GETs the referral for that.
Its id is the referral id and the version's ETag, so it is unique per change and the same on every
retry of it (`webhook-id`, which receivers use to drop duplicates). Deliveries are signed as
Standard Webhooks specifies, with the `standardwebhooks` package.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime
from typing import Any

from cloudevents.core.bindings.http import to_structured_event
from cloudevents.core.v1.event import CloudEvent
from standardwebhooks.webhooks import Webhook

from shared.store import StoredReferral
from shared.timestamps import parse_utc

CREATED = "referral-created"
UPDATED = "referral-updated"
EVENT_TYPES = (CREATED, UPDATED)
SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)
SECRET_BYTES = 32


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def event_id(referral: StoredReferral) -> str:
    return f"{referral.referral_id}.{referral.etag.strip(chr(34))}"


def build_event(referral: StoredReferral, source: str, kind: str) -> tuple[str, bytes]:
    """The event of type `kind` for the referral's current version: its id and its structured JSON.
    The kind is the receiver's news, not the version's (`shared.delivery.news_type`): a creation that
    merged with later changes is still the referral's creation to a receiver that never heard of it."""
    document, activities = referral.document()
    newest = activities[-1] if activities else {}
    data: dict[str, Any] = {
        "referralId": referral.referral_id,
        "etag": referral.etag,
        "status": document.get("status"),
        "updatedDate": document.get("updatedDate"),
        "changedProperties": list(newest.get("changedProperties", [])),
    }
    identifier = event_id(referral)
    event = CloudEvent(
        {
            "specversion": "1.0",
            "id": identifier,
            "source": source,
            "type": kind,
            "subject": f"/api/v1/referrals/{referral.referral_id}",
            "time": parse_utc(referral.updated_date),
            "datacontenttype": "application/json",
        },
        data,
    )
    return identifier, to_structured_event(event).body


def signed_headers(secret: str, message_id: str, body: bytes, now: datetime | None = None) -> dict[str, str]:
    """The Standard Webhooks headers for one delivery of `body`."""
    moment = now or datetime.now(UTC)
    signature = Webhook(secret).sign(message_id, moment, body.decode("utf-8"))
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
        "Content-Type": "application/cloudevents+json; charset=utf-8",
    }
