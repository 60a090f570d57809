"""Use cases: read, list, create or update referrals. Storage, concurrency and access checks meet here.

Updates are optimistic: read, apply the request to what was read, write only if nothing changed in
between (a conditional write on the storage ETag), and on a lost race read again and re-apply, so
every check runs against the version actually written. Two requests never overwrite each other.

Listing reads a per-organization index (see `shared.store`), which lives in other partitions than
the referral, so one write cannot cover both. The order of writes makes a crash between them
harmless:

1. Before the referral is written, each participant's index (and the admins' index) gets a row for
   the new version, keyed by and carrying that version's ETag (so racing writers never share a row).
2. The referral is written, conditionally. Only now is the change visible, and only now does the
   request report success.
3. The rows of the previous version are deleted, best effort, after the response (off the caller's
   critical path; a process that stops first leaves rows that the next listing repairs). A write that
   storage reports as lost keeps its rows until a read shows whether it landed after all (a retried
   request whose first response was lost reports its own success as a conflict).

So the row of the referral's current version always exists: a successful write is never hidden.
A listing reads index rows, then the referrals they name, and shows a referral only when the row's
version is the referral's current version and the caller is a participant of that version: a row
written in step 1 for a write that then failed, or left over from step 3, is never shown, so neither
a stale status nor a referral someone may no longer see ever appears. Such rows are repaired on read:
a row older than the referral's version is deleted at once; a row newer than it (a write in flight,
or one that failed) is deleted once it is older than any request can run.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from shared import editing
from shared.budget import MAX_CLOCK_SKEW_SECONDS, REQUEST_BUDGET_SECONDS
from shared.errors import (
    Gone,
    InvalidRequest,
    ItemNotFound,
    PreconditionFailed,
    ServiceNotAvailable,
)
from shared.history import HistoryQuery, invalid_token
from shared.listing import ListQuery, check_token, delta_token, index_owner, page_token
from shared.patching import JsonObject
from shared.policy import Caller, can_see, check_can_write
from shared.store import (
    ALL_ORGANIZATIONS,
    AlreadyExists,
    IndexEntry,
    ReferralStore,
    StoredReferral,
    WriteConflict,
    new_etag,
)
from shared.timestamps import format_utc, parse_utc, utc_now

log = logging.getLogger("referrals.service")

# Each lost round costs one read and one write. With 8 writers racing on one referral, about 1 request
# in 40 still loses every round and gets 503 with Retry-After (a hostile test's figure): nothing is
# lost, the caller retries. More attempts would hold requests longer under contention.
MAX_WRITE_ATTEMPTS = 12
# An index row newer than its referral is a write in flight, or one that failed. Requests end within
# the host's functionTimeout (30 s), so a row older than this can only be a failed write's.
IN_FLIGHT_GRACE = timedelta(minutes=5)
# A listing examines at most this many index rows per requested item before it returns a short page.
MAX_ROWS_EXAMINED_PER_ITEM = 10
# A delta reads back this far before the moment its link stands for. A write whose response reached
# its caller after that moment committed after it, and was dated at most a request's time budget
# before committing (`_stamp_after` runs inside the request), by a clock at most
# MAX_CLOCK_SKEW_SECONDS from the one that dated the link: so its version is dated after the floor.
DELTA_MARGIN = timedelta(seconds=REQUEST_BUDGET_SECONDS + MAX_CLOCK_SKEW_SECONDS)
# How long a deltaLink can be followed. Past this, 410 deltaLinkExpired: start over with a listing.
DELTA_LINK_LIFETIME = timedelta(days=30)
# A page's JSON stays under this: a listing of 100 referrals at their size limit would be ~60 MB.
MAX_PAGE_BYTES = 4 * 1024 * 1024 - 8 * 1024  # 8 KiB for the envelope and its links


class WriteResult(NamedTuple):
    referral: StoredReferral
    created: bool


class _UnsettledWrite(NamedTuple):
    """A write storage reported as lost. It may still have landed: a storage client that retries a
    request whose response was lost gets 412/409 from its own first attempt. The next read settles it.
    """

    version: str
    rows: list[IndexEntry]  # its index rows: deleted once it is known to have lost
    superseded: list[IndexEntry]  # the previous version's rows: deleted once it is known to have won
    created: bool


class Page(NamedTuple):
    referrals: list[StoredReferral]
    next_token: str | None  # the skipToken of the next page; None on the last page
    delta_token: str | None  # on the last page: the deltaToken of what changes from the run's start on


class HistoryPage(NamedTuple):
    activities: list[JsonObject]
    next_start: int | None  # the number of the next page's first activity; None on the last page


def get_referral(store: ReferralStore, caller: Caller, referral_id: str) -> StoredReferral:
    stored = store.read(referral_id)
    if stored is None or not can_see(caller, stored.organizations):
        raise _not_found(referral_id)
    return stored


def get_history(store: ReferralStore, caller: Caller, referral_id: str, query: HistoryQuery) -> HistoryPage:
    """A page of every activity of a referral the caller may see, archived ones included, oldest first.

    The referral is read first: visibility is decided on it, and it fixes how far the history went
    when this page was asked for (`ReferralStore.history_window`). A resumed page also reads the
    activity before it and checks it is the one the token recorded.
    """
    current = get_referral(store, caller, referral_id)
    if query.start == 0:
        activities, total = store.history_window(current, 0, query.top)
    else:
        window, total = store.history_window(current, query.start - 1, query.top + 1)
        if query.start >= total or window[0]["date"] != query.previous_date:
            raise invalid_token()  # history only grows: a token the API minted names an activity it has
        activities = window[1:]
    end = query.start + len(activities)
    return HistoryPage(activities, end if end < total else None)


def current_etag(store: ReferralStore, caller: Caller, referral_id: str) -> str:
    """The ETag of a referral the caller may see: a conditional GET answers 304 from this alone."""
    version = store.read_version(referral_id)
    if version is None or not can_see(caller, version[1]):
        raise _not_found(referral_id)
    return version[0]


def create_or_update(
    store: ReferralStore,
    caller: Caller,
    referral_id: str,
    patch: JsonObject,
    if_match: list[str] | None,
) -> WriteResult:
    """Apply `patch` to the referral, creating it when absent. `if_match`: the ETags the caller allows."""
    check_can_write(caller)
    if patch.get("id") is not None and patch["id"] != referral_id:
        raise InvalidRequest("The body's 'id' differs from the id in the path.", target="id")

    unsettled: _UnsettledWrite | None = None
    for attempt in range(MAX_WRITE_ATTEMPTS):
        if attempt:
            _back_off(attempt)
        version = new_etag()
        current = store.read(referral_id)
        if unsettled is not None:
            if current is not None and current.etag == unsettled.version:
                # The write reported as lost had landed: the storage client retried a request whose
                # response was lost, and the retry found its own write. Report it as what it was.
                store.delete_index_entries(unsettled.superseded, wait=False)
                return WriteResult(current, created=unsettled.created)
            store.delete_index_entries(unsettled.rows, wait=False)
            unsettled = None
        now = _stamp_after(current)
        if current is None:
            if if_match is not None:
                raise PreconditionFailed(f"Referral '{referral_id}' does not exist.", target="If-Match")
            document, created_activity = editing.create(caller, referral_id, patch, now)
            rows = _index_entries(referral_id, version, document)
            store.put_index_entries(rows)
            try:
                return WriteResult(store.create(referral_id, version, document, created_activity), created=True)
            except AlreadyExists:
                # Created concurrently (or by this very write, if its response was lost): read again.
                unsettled = _UnsettledWrite(version, rows, superseded=[], created=True)
                continue

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
        rows = _index_entries(referral_id, version, updated)
        superseded = _index_entries(referral_id, current.etag, document)
        store.put_index_entries(rows)
        try:
            written = store.replace(current, version, updated, [*shown, new_activity])
        except WriteConflict:
            unsettled = _UnsettledWrite(version, rows, superseded, created=False)
            continue
        store.delete_index_entries(superseded, wait=False)
        return WriteResult(written, created=False)

    log.warning(json.dumps({"event": "writeContention", "referralId": referral_id}))
    raise ServiceNotAvailable(
        "The referral is being changed by many requests at once; retry shortly.", retry_after_seconds=1
    )


def list_referrals(store: ReferralStore, caller: Caller, query: ListQuery) -> Page:
    """A page of the caller's referrals, oldest `updatedDate` first, each verified against the
    referral itself and without its activities; the skipToken of the next page, or on the last page
    the deltaToken of the changes from the run's start on.

    A run is a full listing, or a delta (a deltaToken's changes: the referrals whose current version
    is dated at or after DELTA_MARGIN before the moment it stands for). Its pages move through the
    index oldest first, and an update moves a referral's row ahead (later), never behind: so the
    pages of a run, followed to the last, show every referral the caller may see, that matches the
    query and whose write succeeded before the run began. A row whose referral has moved on since
    shows the referral as it is now (`_listed`): a referral in mid-update shows at its old version or
    its new one, never at neither, and may show again on a later page at a later version.
    """
    key = store.page_token_key()
    check_token(query, caller, key)
    started, floor = query.started, query.floor
    if query.delta_since is not None:
        if parse_utc(utc_now()) - parse_utc(query.delta_since) > DELTA_LINK_LIFETIME:
            raise Gone(
                "This deltaLink has expired; list the referrals again and follow the new deltaLink.",
                target="deltaToken",
            )
        floor = format_utc(parse_utc(query.delta_since) - DELTA_MARGIN)
    started = started or utc_now()
    referrals, end, more = _scan(store, caller, query, floor)
    if more and end is not None:
        return Page(referrals, page_token(query, caller, key, end, started, floor), None)
    return Page(referrals, None, delta_token(query, caller, key, started))


class Verified(NamedTuple):
    """An index row and what it shows the caller: the referral as it is now, or None."""

    row: IndexEntry
    shown: StoredReferral | None


def verified_index(
    store: ReferralStore, caller: Caller, query: ListQuery, since: str | None, page_size: int
) -> Iterator[tuple[list[Verified], bool]]:
    """The caller's index rows after `query.after_key` and at or after `since`, oldest first, in
    batches, each row verified against its referral (`_listed`), with whether more rows follow. Rows
    that can be deleted without losing anything (`_is_leftover`) are repaired as they are met.
    Listings (`_scan`) and webhook delivery (`shared.delivery`) both read the index through this."""
    owner = index_owner(caller)
    pages = store.scan_index(
        owner,
        after_key=query.after_key,
        updated_since=since,
        status=query.status,
        referral_source=query.referral_source,
        page_size=page_size,
    )
    for rows, more_rows in pages:
        referrals = store.read_many([row.referral_id for row in rows])
        batch = [Verified(row, _listed(row, referrals[row.referral_id], caller, owner, query, since)) for row in rows]
        stale = [
            item.row
            for item in batch
            if (item.shown is None or item.shown.etag != item.row.version)
            and _is_leftover(item.row, referrals[item.row.referral_id])
        ]
        store.delete_index_entries(stale, wait=False)
        yield batch, more_rows


def _scan(
    store: ReferralStore, caller: Caller, query: ListQuery, floor: str | None
) -> tuple[list[StoredReferral], str | None, bool]:
    """The referrals of one page, the row key it ends at, and whether a next page could hold more."""
    since = max(filter(None, (query.updated_since, floor)), default=None)
    found: list[StoredReferral] = []
    shown_ids: set[str] = set()
    page_bytes = 0
    last_key = query.after_key
    examined = 0
    for batch, more_rows in verified_index(store, caller, query, since, query.top + 1):
        for position, item in enumerate(batch):
            if examined >= query.top * MAX_ROWS_EXAMINED_PER_ITEM:
                return found, last_key, True  # a short page: rows remain, the next page starts after
            listed = item.shown
            if listed is not None and listed.referral_id not in shown_ids:
                size = len(listed.summary().encode("utf-8")) + 1
                if found and page_bytes + size > MAX_PAGE_BYTES:
                    return found, last_key, True  # full by size: this row starts the next page
                page_bytes += size
                found.append(listed)
                shown_ids.add(listed.referral_id)
            examined += 1
            last_key = item.row.row_key
            if len(found) == query.top:
                # A next page only if something could be on it: the rows read with this one
                # (already verified for free) or rows storage has not sent yet.
                more = more_rows or any(
                    rest.shown is not None and rest.shown.referral_id not in shown_ids
                    for rest in batch[position + 1 :]
                )
                return found, last_key, more
    return found, last_key, False


def _listed(
    row: IndexEntry,
    current: StoredReferral | None,
    caller: Caller,
    owner: str,
    query: ListQuery,
    since: str | None,
) -> StoredReferral | None:
    """The referral a listing shows for a row: its current version, to those who may see it; for a
    row of an older version, the referral as it is now when that still matches the query (its newer
    row may lie behind the page's end, where the run would not meet it)."""
    if current is None:
        return None
    if current.etag != row.version and (
        current.updated_date <= row.updated_date or not _matches(current, query, since)
    ):
        return None  # a write still in flight (its row before its referral), or a lost one
    return current if owner == ALL_ORGANIZATIONS or can_see(caller, current.organizations) else None


def _matches(current: StoredReferral, query: ListQuery, since: str | None) -> bool:
    return (
        (query.status is None or current.status == query.status)
        and (query.referral_source is None or current.referral_source == query.referral_source)
        and (since is None or current.updated_date >= since)
    )


def _is_leftover(row: IndexEntry, current: StoredReferral | None) -> bool:
    """Whether an index row that does not match its referral can be deleted without losing anything."""
    if current is not None and row.updated_date < current.updated_date:
        return True  # an earlier version's row: the current version has its own
    written = parse_utc(row.updated_date)
    return datetime.now(UTC) - written > IN_FLIGHT_GRACE


def _index_entries(referral_id: str, version: str, document: JsonObject) -> list[IndexEntry]:
    organizations = [participant["organizationId"] for participant in document["participants"]]
    return [
        IndexEntry(
            organization,
            referral_id,
            version,
            document["updatedDate"],
            document["status"],
            document["referralSource"],
        )
        for organization in [*organizations, ALL_ORGANIZATIONS]
    ]


def _stamp_after(current: StoredReferral | None) -> str:
    """The updatedDate for a write over `current`: now, taken after the read, and always later than
    `current`'s, so a writer that was slow to read (or a host whose clock lags) never dates its change
    before the version it replaces; `updatedSince` listings and the history order rely on it."""
    now = utc_now()
    if current is None or now > current.updated_date:
        return now
    return format_utc(parse_utc(current.updated_date) + timedelta(microseconds=1))


def _back_off(attempt: int) -> None:
    # Full jitter: racing writers spread out instead of colliding again in lockstep.
    time.sleep(random.uniform(0, min(0.25, 0.01 * 2**attempt)))  # noqa: S311 (not security)


def _not_found(referral_id: str) -> ItemNotFound:
    return ItemNotFound(f"Referral '{referral_id}' was not found.", target="referralId")
