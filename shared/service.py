"""Use cases: read a referral, create or update one. Storage, concurrency and access checks meet here.

Updates are optimistic: read, apply the request to what was read, write only if nothing changed in
between (a conditional write on the storage ETag), and on a lost race read again and re-apply, so
every check runs against the version actually written. Two requests never overwrite each other.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from shared import editing
from shared.errors import AccessDenied, ItemNotFound, PreconditionFailed, ServiceNotAvailable
from shared.patching import JsonObject
from shared.policy import Caller, can_see
from shared.store import AlreadyExists, ReferralStore, StoredReferral, WriteConflict

log = logging.getLogger("referrals.service")

# Enough for dozens of writers racing on one referral; each lost round costs one read and one write.
MAX_WRITE_ATTEMPTS = 12


@dataclass(frozen=True)
class WriteResult:
    referral: StoredReferral
    created: bool


def get_referral(store: ReferralStore, caller: Caller, referral_id: str) -> StoredReferral:
    stored = store.read(referral_id)
    if stored is None or not can_see(caller, stored.organizations):
        raise _not_found(referral_id)
    return stored


def create_or_update(
    store: ReferralStore,
    caller: Caller,
    referral_id: str,
    patch: JsonObject,
    if_match: list[str] | None,
) -> WriteResult:
    """Apply `patch` to the referral, creating it when absent. `if_match`: the ETags the caller allows."""
    if not caller.can_write:
        raise AccessDenied("This token does not grant Referrals.ReadWrite.")
    if "id" in patch and patch["id"] != referral_id:
        raise editing.InvalidRequest("The body's 'id' differs from the id in the path.", target="id")

    for attempt in range(MAX_WRITE_ATTEMPTS):
        if attempt:
            _back_off(attempt)
        now = editing.utc_now()
        current = store.read(referral_id)
        if current is None:
            if if_match is not None:
                raise PreconditionFailed(f"Referral '{referral_id}' does not exist.", target="If-Match")
            document, created_activity = editing.create(caller, referral_id, patch, now)
            try:
                return WriteResult(store.create(referral_id, document, created_activity), created=True)
            except AlreadyExists:
                continue  # created concurrently: apply the request as an update of that one

        if not can_see(caller, current.organizations):
            raise _not_found(referral_id)
        if if_match is not None and "*" not in if_match and current.etag not in if_match:
            raise PreconditionFailed(
                "The referral has changed since it was read (If-Match does not match its ETag).",
                target="If-Match",
            )
        document, shown = current.document()
        change = editing.update(caller, document, shown, patch, now)
        if change is None:
            return WriteResult(current, created=False)
        updated, new_activity = change
        try:
            return WriteResult(store.replace(current, updated, [*shown, new_activity]), created=False)
        except WriteConflict:
            continue

    log.warning('{"event":"writeContention","referralId":"%s"}', referral_id)
    raise ServiceNotAvailable("The referral is being changed by many requests at once; retry shortly.", retry_after_seconds=1)


def _back_off(attempt: int) -> None:
    # Full jitter: racing writers spread out instead of colliding again in lockstep.
    time.sleep(random.uniform(0, min(0.25, 0.01 * 2**attempt)))


def _not_found(referral_id: str) -> ItemNotFound:
    return ItemNotFound(f"Referral '{referral_id}' was not found.", target="referralId")
