"""Webhook delivery: one pass over every Active subscription, resuming each from its stored position.

Nothing on the write path waits for this or writes anything for it: delivery reads the changes from
the organization's index (for a subscription an admin created: every referral's), through the same verified read as
a delta listing (`shared.service.verified_index`), so what a delta link would show is what is sent.

A subscription's position is a watermark W and the versions already delivered at or after
W - DELTA_MARGIN (referralId -> updatedDate). A pass started at moment S reads the index from
W - DELTA_MARGIN, oldest first, skips what was delivered, and sends each referral's current state
(several undelivered changes of one referral merge into its latest; none is dropped). Each 2xx
answer adds the version to the delivered set; when the pass has delivered everything it met, W
becomes S and versions dated before S - DELTA_MARGIN are forgotten (a pass that stops early still
moves W as far as is safe: `_advanced`). A change committed after S is
dated after S - DELTA_MARGIN (`shared.service.DELTA_MARGIN`), so the next pass reads it: nothing is
lost, and the delivered set keeps the read-back from sending anything twice to a healthy receiver.

A failure (non-2xx, timeout, refused connection, or an address the outbound check refuses) stops
that subscription's pass and keeps its position; it is retried after an exponential backoff with
jitter (`NextAttemptAt`), for `WEBHOOKS_RETRY_SECONDS` (24 h) from the first failure in a row, and
then the subscription is Suspended until it is resumed. A retried event is the same event (same id).
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from shared import outbound, service
from shared.errors import ApiError
from shared.events import CREATED, UPDATED, build_event, signed_headers
from shared.listing import ListQuery
from shared.model import ActivityAction
from shared.policy import Caller
from shared.settings import settings
from shared.store import ReferralStore, StoredReferral, StoredSubscription, WriteConflict
from shared.subscriptions import ACTIVE, SUSPENDED
from shared.timestamps import format_utc, parse_utc, utc_now

log = logging.getLogger("referrals.delivery")

# Backoff after the n-th failure in a row: BASE * 2^(n-1), at most MAX, times a random 0.5-1.
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 15 * 60.0
# No send starts after this many seconds of a pass, and a send takes at most outbound.TIMEOUT_SECONDS
# in all: a pass lasts at most ~10 s however slow one organization's receiver is, so a change made as
# a pass begins reaches a healthy receiver of another organization by the pass after (README: 15 s).
# What is left is sent on the next pass.
PASS_SECONDS = 5.0
MAX_EVENTS_PER_PASS = 500  # per subscription: the rest on the next pass
PARALLEL_SUBSCRIPTIONS = 8
INDEX_PAGE_SIZE = 100
# The position is saved when something changed, or at least this often (so W keeps up with time and
# the read-back stays short) rather than on every idle pass.
IDLE_SAVE_INTERVAL = timedelta(seconds=60)


@dataclass(frozen=True)
class Outcome:
    subscription_id: str
    sent: int
    failed: bool
    suspended: bool


def run_pass(store: ReferralStore) -> list[Outcome]:
    """One delivery pass over every Active subscription that is due; returns when it is done."""
    deadline = time.monotonic() + PASS_SECONDS
    now = utc_now()
    # Onboarding is checked on every pass, as authentication checks it on every request: an
    # organization taken off AUTH_ALLOWED_TENANTS gets no more events, and its position is kept
    # (should it be onboarded again, delivery goes on from there).
    onboarded = settings.auth().onboarded_tenant_ids
    due = [
        subscription
        for subscription in store.subscriptions()
        if subscription.status == ACTIVE
        and (subscription.next_attempt_at or "") <= now
        and subscription.organization in onboarded
    ]
    if not due:
        return []
    with ThreadPoolExecutor(max_workers=min(PARALLEL_SUBSCRIPTIONS, len(due))) as pool:
        results = list(pool.map(lambda subscription: _deliver_safely(store, subscription, deadline), due))
    return [result for result in results if result is not None]


def _deliver_safely(store: ReferralStore, subscription: StoredSubscription, deadline: float) -> Outcome | None:
    try:
        return deliver(store, subscription, deadline)
    except (ApiError, WriteConflict) as error:
        # Storage is away (or refused the position), or the subscription changed meanwhile (resumed,
        # deleted): the position stays as stored and the next pass goes on from it.
        log.warning(
            json.dumps(
                {
                    "event": "deliveryDeferred",
                    "subscriptionId": subscription.subscription_id,
                    "error": type(error).__name__,
                }
            )
        )
        return None


def reader(subscription: StoredSubscription) -> Caller:
    """Who the subscription reads as: its organization, or every referral for one an admin created."""
    return Caller(subscription.organization, can_read=True, can_write=False, is_admin=subscription.reads_all)


def deliver(store: ReferralStore, subscription: StoredSubscription, deadline: float) -> Outcome:
    started = utc_now()
    config = settings.webhooks()
    caller = reader(subscription)
    floor = format_utc(parse_utc(subscription.watermark) - service.DELTA_MARGIN)
    delivered = dict(subscription.delivered)
    sent = 0
    failed = False
    complete = True
    # The updatedDate of the last index row dealt with (sent, skipped or not visible): every row
    # before it was, in RowKey order, so the position may advance to it even when the pass stops.
    processed_until: str | None = None
    source = f"https://{config.origin}/api/v1/referrals"
    for batch, _ in service.verified_index(store, caller, ListQuery(), floor, INDEX_PAGE_SIZE):
        for item in batch:
            current = item.shown
            if current is not None and delivered.get(current.referral_id, "") < current.updated_date:
                kind = news_type(subscription, current, delivered, floor)
                stop = sent >= MAX_EVENTS_PER_PASS or time.monotonic() >= deadline
                if not stop and kind is not None:
                    failed = stop = not _send(subscription, current, kind, source, config.allow_loopback)
                if stop:
                    complete = False
                    if kind == CREATED and processed_until is not None:
                        # Left to the next pass, whose floor must not pass this creation: it is news
                        # there too, the same event of the same type.
                        processed_until = min(processed_until, str(current.document()[0]["createdDate"]))
                    break
                if kind is not None:
                    sent += 1
                delivered[current.referral_id] = current.updated_date
            processed_until = item.row.updated_date
        if not complete:
            break

    updated = subscription._replace(**_advanced(subscription, delivered, started, processed_until, complete))
    if failed:
        updated = _failed(updated, started, config.retry_seconds)
    else:
        updated = updated._replace(failures=0, failing_since=None, next_attempt_at=None)
    idle_for = parse_utc(started) - parse_utc(subscription.watermark)
    if (
        updated.delivered != subscription.delivered
        or _state(updated) != _state(subscription)
        or (idle_for >= IDLE_SAVE_INTERVAL and updated.watermark != subscription.watermark)
    ):
        store.save_subscription(updated)
    return Outcome(subscription.subscription_id, sent, failed, updated.status == SUSPENDED)


def news_type(
    subscription: StoredSubscription, referral: StoredReferral, delivered: dict[str, str], floor: str
) -> str | None:
    """The type of the event this subscription gets for the referral's current version, or None.

    Undelivered changes of a referral merge into its current version. When they include its creation
    (dated within this pass's read-back, nothing of the referral dealt with since: a version dealt with
    is in `delivered`, which keeps everything dated from `floor` on) and the subscription saw that
    creation, the event is the creation: a subscription to creations alone would otherwise miss every
    referral changed again before a pass told it. A subscription to updates alone still hears of the
    updates merged in. An organization invited later hears of the referral as an update, however soon.
    """
    document, shown = referral.document()
    created = str(document.get("createdDate", ""))
    news_of_creation = (
        referral.referral_id not in delivered and created >= floor and _saw_creation(subscription, referral, shown)
    )
    if news_of_creation and CREATED in subscription.events:
        return CREATED
    if document.get("updatedDate") != created and UPDATED in subscription.events:
        return UPDATED
    return None


def _saw_creation(subscription: StoredSubscription, referral: StoredReferral, shown: list[dict[str, Any]]) -> bool:
    """Whether the subscription could see the referral's first version: an admin's sees every one; an
    organization's, one it participated in from the start, as the creation activity records it (every
    first participant appears there with its first status). Once that activity is archived (many
    changes since), it counts as seen: rather one created event too many than one missed."""
    if subscription.reads_all:
        return True
    if referral.archived_rows:
        return True  # the oldest activities, the creation first, are archived
    oldest = json.loads(referral.older_json) if referral.older_json else shown
    if not oldest or oldest[0].get("action") != ActivityAction.CREATED:
        return True
    return f"participants[{subscription.organization}].status" in {
        change.get("property") for change in oldest[0].get("changes", [])
    }


def _advanced(
    subscription: StoredSubscription,
    delivered: dict[str, str],
    started: str,
    processed_until: str | None,
    complete: bool,
) -> dict[str, Any]:
    """The position after a pass that started at `started`: the new watermark, and the delivered
    versions still needed to skip the next pass's read-back.

    Every change committed before `started` had its row in the index when the pass began, and one
    committed after is dated after `started` - DELTA_MARGIN. So when the pass dealt with every row
    dated before D (`processed_until`), every change dated before min(D, started - DELTA_MARGIN) has
    been delivered: the watermark may move to min(D + DELTA_MARGIN, started), and to `started` when
    the pass met no more rows. It never moves back. A stopped pass thus still moves the position, and
    the delivered set stays about one pass's worth, however long a backlog is.
    """
    watermark = subscription.watermark
    if complete:
        watermark = started
    elif processed_until is not None:
        reach = format_utc(parse_utc(processed_until) + service.DELTA_MARGIN)
        watermark = max(watermark, min(reach, started))
    cutoff = format_utc(parse_utc(watermark) - service.DELTA_MARGIN)
    kept = {referral: date for referral, date in delivered.items() if date >= cutoff}
    return {"watermark": watermark, "delivered": kept}


def _state(subscription: StoredSubscription) -> tuple[object, ...]:
    return (subscription.status, subscription.failures, subscription.failing_since, subscription.next_attempt_at)


def _failed(subscription: StoredSubscription, now: str, retry_seconds: int) -> StoredSubscription:
    failures = subscription.failures + 1
    failing_since = subscription.failing_since or now
    if parse_utc(now) - parse_utc(failing_since) >= timedelta(seconds=retry_seconds):
        log.warning(json.dumps({"event": "subscriptionSuspended", "subscriptionId": subscription.subscription_id}))
        return subscription._replace(
            status=SUSPENDED, failures=failures, failing_since=failing_since, next_attempt_at=None
        )
    delay = min(BACKOFF_BASE_SECONDS * 2 ** (failures - 1), BACKOFF_MAX_SECONDS) * random.uniform(0.5, 1.0)  # noqa: S311
    next_attempt = format_utc(parse_utc(now) + timedelta(seconds=delay))
    return subscription._replace(
        failures=failures, failing_since=failing_since, next_attempt_at=next_attempt
    )


def _send(
    subscription: StoredSubscription, referral: StoredReferral, kind: str, source: str, allow_loopback: bool
) -> bool:
    """One signed delivery; whether the receiver acknowledged it (2xx). Its answer is never logged."""
    identifier, body = build_event(referral, source, kind)
    headers = signed_headers(subscription.secret, identifier, body)
    started = time.perf_counter()
    outcome: str
    status: int | None = None
    try:
        answer = outbound.send(subscription.url, "POST", headers, body, allow_loopback=allow_loopback)
        status = answer.status
        outcome = "delivered" if 200 <= answer.status < 300 else "rejected"
    except outbound.OutboundRefused:
        outcome = "addressRefused"
    except (OSError, http.client.HTTPException) as error:
        outcome = "timeout" if isinstance(error, TimeoutError) else "unreachable"
    log.info(
        json.dumps(
            {
                "event": "webhookDelivery",
                "subscriptionId": subscription.subscription_id,
                "organizationId": subscription.organization,
                "eventId": identifier,
                "outcome": outcome,
                "status": status,
                "durationMs": round((time.perf_counter() - started) * 1000, 2),
            }
        )
    )
    return outcome == "delivered"
