"""Table Storage repository for referrals: the only module that speaks azure.data.tables.

Layout, one partition per referral (PartitionKey = the referral id, which cannot contain the ':' that
the organization index partitions below start with):

- RowKey `referral`: the referral itself. `Body*` holds the JSON exactly as GET returns it (the
  referral and its newest 100 activities) as UTF-8, split into binary properties because one
  property holds at most 64 KiB; GET answers from it without parsing. Binary, not string: its size
  is then known exactly for any text (`entity_size`), where a string's depends on how it is sent.
  `Older*` holds activities that dropped out of the newest 100 but are not archived yet. `Version`
  is the public ETag: random per write, so it reveals nothing of storage. `Organizations` lets a
  read decide visibility without parsing the body.
- RowKey `history-0000000000`, `history-0000000001`, ...: archived activities, oldest first, exactly
  50 a row, written once and never changed: activity n (numbered from 0) is in row n // 50, which is
  how a page of the history is read without the rows before it (`history_window`).

Every write is one conditional operation on the referral row (If-Match on the storage ETag read
before), so a referral and its history never disagree. When 50 activities have gathered in `Older`,
they move to a new history row in the same entity group transaction as the referral's update: one
transaction in 50 writes, single conditional updates otherwise (a transaction's multipart encoding
costs several times the client CPU of a plain update). Should a referral and its activities not fit
one entity, activities move to history rows early (`_prepare`); a write storage refuses as too large
is `PayloadTooLarge`.

Storage faults become `ServiceNotAvailable`; lost races become `WriteConflict` / `AlreadyExists`.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import queue
import secrets
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any, NamedTuple

import requests
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableClient, TableServiceClient, TableTransactionError, UpdateMode
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from shared import budget
from shared.errors import ConfigurationError, PayloadTooLarge, ServiceNotAvailable
from shared.lazy import Lazy
from shared.model import Limits
from shared.settings import StorageSettings, settings
from shared.timestamps import parse_utc

log = logging.getLogger("referrals.store")

REFERRAL_ROW = "referral"
HISTORY_ROW_PREFIX = "history-"
ACTIVITIES_PER_HISTORY_ROW = 50
# Text is stored as UTF-8 in binary properties (Edm.Binary, at most 64 KiB each), so that its size is
# known exactly whatever it holds: string properties travel as JSON with every non-ASCII character
# escaped as \uXXXX (6 bytes on the wire for a character Table Storage counts as 2), which Azurite
# measures against its entity limit. Binary travels as base64: 4 bytes for every 3 stored.
_BINARY_CHUNK = 64_000
# One entity holds at most 1 MiB (1,048,576 bytes), counted by Azure as stored (`_stored_size`) and
# by Azurite as the request's JSON (`_wire_size`); a write keeps both under this, with room to spare.
ENTITY_BUDGET_BYTES = 1_000_000

# Client tuning: a request must end well inside the Functions HTTP limit and, per the contract, within
# a few seconds when storage is unreachable, paused or throttling. One retry for a dropped connection
# or read; no retry on throttling status (the caller gets 503 with Retry-After and backs off itself).
TIMEOUTS: dict[str, Any] = {"connection_timeout": 2, "read_timeout": 2.5}
RETRIES: dict[str, Any] = {
    "retry_total": 1,
    "retry_connect": 1,
    "retry_read": 1,
    "retry_status": 0,
    "retry_backoff_factor": 0.2,
    "retry_backoff_max": 1,
}


class WriteConflict(Exception):
    """The referral changed since it was read; re-read and try again."""


class AlreadyExists(Exception):
    """A referral with this id was created since it was read as absent."""


class StoredReferral(NamedTuple):
    referral_id: str
    body: str  # the JSON GET returns: the referral and its newest activities
    etag: str  # public, quoted, strong
    organizations: frozenset[str]
    updated_date: str
    storage_etag: str
    older_json: str  # activities not shown and not yet archived, as a JSON array ("" when none)
    archived_rows: int
    status: str = ""
    referral_source: str = ""
    # Where `activities` begins in `body` (`_body_json` puts it last), so that a listing shows the
    # referral without them by slicing; None for rows written before, which are parsed instead.
    activities_at: int | None = None

    def summary(self) -> str:
        """The referral as listings show it: its JSON without `activities`."""
        if self.activities_at is None:
            return to_json(self.document()[0])
        return self.body[: self.activities_at] + "}"

    def document(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The referral without activities, and its shown activities (oldest first)."""
        parsed = json.loads(self.body)
        activities = parsed.pop("activities", [])
        return parsed, activities


def new_etag() -> str:
    return f'"{secrets.token_urlsafe(16)}"'


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _body_json(document: dict[str, Any], activities: list[dict[str, Any]]) -> tuple[str, int]:
    """The JSON GET returns (the referral, then `activities` last), and where `activities` begins:
    the referral's own JSON is the body up to there and a closing brace."""
    without = to_json(document)
    if without == "{}":
        return to_json({"activities": activities}), 1
    return f'{without[:-1]},"activities":{to_json(activities)}}}', len(without) - 1


def utf16_units(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-16-le")) // 2


def _slot_row(slot: int) -> str:
    return f"{SLOT_ROW_PREFIX}{slot:02d}"


def _history_row(index: int) -> str:
    return f"{HISTORY_ROW_PREFIX}{index:010d}"


def _organizations(joined: str) -> frozenset[str]:
    return frozenset(filter(None, joined.split(",")))


def _put_text(entity: dict[str, Any], prefix: str, text: str) -> None:
    """`text` as UTF-8 in binary properties `<prefix>0`, `<prefix>1`, ... and their count."""
    data = text.encode("utf-8")
    parts = [data[start : start + _BINARY_CHUNK] for start in range(0, len(data), _BINARY_CHUNK)] or [b""]
    entity[f"{prefix}Parts"] = len(parts)
    for index, part in enumerate(parts):
        entity[f"{prefix}{index}"] = part


def _get_text(entity: Any, prefix: str) -> str:
    parts = [entity[f"{prefix}{index}"] for index in range(entity[f"{prefix}Parts"])]
    if parts and isinstance(parts[0], str):
        return "".join(parts)  # written before text moved to binary properties
    return b"".join(parts).decode("utf-8")


def _stored_size(entity: dict[str, Any]) -> int:
    """An entity's size as Azure Table Storage counts it: 4 bytes, the keys in UTF-16, and for each
    other property 8 bytes, its name in UTF-16 and its value (a string 4 + 2 bytes a UTF-16 unit,
    binary 4 + its length, a number 8)."""
    size = 4
    for name, value in entity.items():
        if name in ("PartitionKey", "RowKey"):
            size += 2 * utf16_units(value)
            continue
        size += 8 + 2 * len(name)
        if isinstance(value, str):
            size += 4 + 2 * utf16_units(value)
        elif isinstance(value, bytes):
            size += 4 + len(value)
        else:
            size += 8
    return size


def _wire_size(entity: dict[str, Any]) -> int:
    """The size of the JSON that azure-data-tables sends for an entity (what Azurite measures): text
    with non-ASCII escaped, binary as base64 with an `@odata.type` annotation. Exact up to a few
    bytes a property, counted generously."""
    size = 2
    for name, value in entity.items():
        if isinstance(value, bytes):
            encoded = 4 * ((len(value) + 2) // 3)
            size += len(name) + encoded + len(name) + len('"": "", "@odata.type": "Edm.Binary", ') + 16
        else:
            size += len(json.dumps({name: value})) + 2
    return size


def entity_size(entity: dict[str, Any]) -> int:
    """What an entity costs against the 1 MiB limit: the larger of Azure's and Azurite's measure."""
    return max(_stored_size(entity), _wire_size(entity))


INDEX_PARTITION_PREFIX = "index:"
# The admins' index, which every write touches, is spread over this many partitions (by referral id),
# so that none takes more than 1/16 of the service's index writes (Table Storage serves about 2,000
# entities/s a partition; docs/benchmarks.md, "Scaling model"). Listings merge them in order.
ALL_ORGANIZATIONS = "all"
ALL_SHARDS = 16
# The service's own settings row, apart from referrals (whose ids cannot hold ':') and indexes.
META_PARTITION = "meta:service"
TOKEN_KEY_ROW = "page-token-key"  # noqa: S105 (a row key: the key itself is random, in the row)
# Webhook subscriptions, one partition per organization (`subscriptions:<tenant id>`), one row each
# (RowKey: its id, a GUID), and beside each a slot row (`slot-NN`) written in the same transaction: an
# organization has as many subscriptions as slots, however many creations race.
SUBSCRIPTION_PARTITION_PREFIX = "subscriptions:"
SLOT_ROW_PREFIX = "slot-"


class SlotTaken(Exception):
    """The subscription slot was taken since the slots were read."""


class StoredSubscription(NamedTuple):
    """A webhook subscription and its delivery position (`shared.delivery`).

    The secret is stored as given: it signs every delivery, so it must be readable (a hash would not
    sign). It is returned only by the creation response and never logged.
    """

    organization: str
    subscription_id: str
    url: str
    events: tuple[str, ...]
    status: str  # Active or Suspended
    created_date: str
    secret: str
    watermark: str  # every change dated before watermark - DELTA_MARGIN has been delivered
    delivered: dict[str, str]  # referralId -> updatedDate delivered, for changes at or after that floor
    failures: int = 0  # consecutive failed attempts
    failing_since: str | None = None  # the first of them
    next_attempt_at: str | None = None  # no attempt before this (backoff)
    slot: int = 0  # its slot row, `slot-NN`
    reads_all: bool = False  # created by an admin (Referrals.Admin of our tenant): every referral's changes
    storage_etag: str = ""

    def entity(self) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": SUBSCRIPTION_PARTITION_PREFIX + self.organization,
            "RowKey": self.subscription_id,
            "Url": self.url,
            "Events": ",".join(self.events),
            "Status": self.status,
            "CreatedDate": self.created_date,
            "Secret": self.secret,
            "Watermark": self.watermark,
            "Failures": self.failures,
            "FailingSince": self.failing_since or "",
            "NextAttemptAt": self.next_attempt_at or "",
            "Slot": self.slot,
            "ReadsAll": self.reads_all,
        }
        _put_text(entity, "Delivered", to_json(self.delivered))
        return entity

    @classmethod
    def from_entity(cls, entity: Any) -> StoredSubscription:
        return cls(
            organization=str(entity["PartitionKey"]).removeprefix(SUBSCRIPTION_PARTITION_PREFIX),
            subscription_id=entity["RowKey"],
            url=entity["Url"],
            events=tuple(filter(None, entity["Events"].split(","))),
            status=entity["Status"],
            created_date=entity["CreatedDate"],
            secret=entity["Secret"],
            watermark=entity["Watermark"],
            delivered=json.loads(_get_text(entity, "Delivered")),
            failures=entity.get("Failures", 0),
            failing_since=entity.get("FailingSince") or None,
            next_attempt_at=entity.get("NextAttemptAt") or None,
            slot=entity.get("Slot", 0),
            reads_all=bool(entity.get("ReadsAll", False)),
            storage_etag=str(entity.metadata["etag"]),
        )


def index_partitions(organization: str) -> list[str]:
    """The partitions that hold an organization's index: one, or the admins' shards."""
    if organization == ALL_ORGANIZATIONS:
        return [f"{INDEX_PARTITION_PREFIX}{ALL_ORGANIZATIONS}:{shard:02d}" for shard in range(ALL_SHARDS)]
    return [f"{INDEX_PARTITION_PREFIX}{organization}"]


def index_partition(organization: str, referral_id: str) -> str:
    """The partition of `organization`'s index that holds `referral_id`'s rows."""
    partitions = index_partitions(organization)
    # crc32, not hash(): the shard must be the same in every process, and across releases.
    return partitions[zlib.crc32(referral_id.encode()) % len(partitions)]


def index_row_key(updated_date: str, referral_id: str, version: str) -> str:
    """Oldest first in RowKey order: the microseconds of updatedDate (17 digits), then the id, then
    the version. Oldest first, so that a listing moving through the index meets a referral updated
    meanwhile again ahead of it, never behind it (`shared.service.list_referrals`). Two writers
    racing on one referral can stamp the same updatedDate (see `shared.service._stamp_after`); the
    version keeps their rows apart, so the loser removing its own rows never removes the winner's."""
    unquoted = version.strip('"')
    return f"{_micros(updated_date):017d}:{referral_id}:{unquoted}"


def oldest_key_bound(updated_since: str) -> str:
    """Index RowKeys at or above this bound belong to versions updated at or after `updated_since`."""
    return f"{max(_micros(updated_since), 0):017d}"


def _micros(timestamp: str) -> int:
    delta = parse_utc(timestamp) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class IndexEntry(NamedTuple):
    """One row of an organization's index: a referral version as listings find it."""

    organization: str
    referral_id: str
    version: str
    updated_date: str
    status: str
    referral_source: str

    @property
    def partition_key(self) -> str:
        return index_partition(self.organization, self.referral_id)

    @property
    def row_key(self) -> str:
        return index_row_key(self.updated_date, self.referral_id, self.version)

    def entity(self) -> dict[str, Any]:
        return {
            "PartitionKey": self.partition_key,
            "RowKey": self.row_key,
            "ReferralId": self.referral_id,
            "Version": self.version,
            "UpdatedDate": self.updated_date,
            "Status": self.status,
            "ReferralSource": self.referral_source,
        }

    @classmethod
    def from_entity(cls, organization: str, entity: Any) -> IndexEntry:
        return cls(
            organization,
            entity["ReferralId"],
            entity["Version"],
            entity["UpdatedDate"],
            entity["Status"],
            entity["ReferralSource"],
        )


class _Write(NamedTuple):
    entity: dict[str, Any]
    archive_rows: list[dict[str, Any]]  # history rows to create in the same transaction, oldest first
    result: StoredReferral


class ReferralStore:
    def __init__(self, table: TableClient) -> None:
        self._table = table
        self._table_checked = Lazy(self._create_table_if_missing)
        self._token_key = Lazy(self._load_token_key)

    def _existing_table(self) -> TableClient:
        """The table, after this process has made sure it exists (once; a failed check is tried
        again). Every write and query goes through here. Point reads use `self._table` as it is: on
        a missing table they answer 404 like a missing entity, which is then the truth, so an
        instance's first GET does not wait a round trip for the check."""
        self._table_checked.get()
        return self._table

    def _create_table_if_missing(self) -> bool:
        with _storage_faults("create table"), suppress(ResourceExistsError):
            self._table.create_table(**_call_options())
        return True

    def page_token_key(self) -> bytes:
        """The secret that signs page tokens (`shared.listing.page_token`). Every instance of the app
        must accept every other's tokens, so it lives in the table (`META_PARTITION`), created by
        whichever instance needs it first, and is read once per process."""
        return self._token_key.get()

    def _load_token_key(self) -> bytes:
        with _storage_faults("read key"):
            for _ in range(2):
                try:
                    return bytes(self._table.get_entity(META_PARTITION, TOKEN_KEY_ROW, **_call_options())["Key"])
                except ResourceNotFoundError:
                    pass
                try:
                    key = secrets.token_bytes(32)
                    row = {"PartitionKey": META_PARTITION, "RowKey": TOKEN_KEY_ROW, "Key": key}
                    self._existing_table().create_entity(row, **_call_options())
                    return key
                except ResourceExistsError:
                    continue  # another instance created it first: read theirs
        raise ServiceNotAvailable("The page token key cannot be read right now; retry shortly.")

    def read(self, referral_id: str) -> StoredReferral | None:
        with _storage_faults("read"):
            try:
                entity = self._table.get_entity(referral_id, REFERRAL_ROW, **_call_options())
            except ResourceNotFoundError:
                return None
        return StoredReferral(
            referral_id=referral_id,
            body=_get_text(entity, "Body"),
            etag=entity["Version"],
            organizations=_organizations(entity["Organizations"]),
            updated_date=entity["UpdatedDate"],
            storage_etag=str(entity.metadata["etag"]),
            # Kept as text: only a write needs these parsed, so a GET never pays for them.
            older_json=_get_text(entity, "Older") if entity.get("OlderParts") else "",
            archived_rows=entity.get("ArchivedRows", 0),
            status=entity.get("Status", ""),
            referral_source=entity.get("ReferralSource", ""),
            activities_at=entity.get("ActivitiesAt"),
        )

    def create(
        self, referral_id: str, version: str, document: dict[str, Any], activity: dict[str, Any]
    ) -> StoredReferral:
        write = self._prepare(referral_id, version, document, [activity], older_json="", archived_rows=0)
        with _storage_faults("create"):
            try:
                self._existing_table().create_entity(write.entity, **_call_options())
            except ResourceExistsError:
                raise AlreadyExists(referral_id) from None
        return write.result

    def replace(
        self,
        current: StoredReferral,
        version: str,
        document: dict[str, Any],
        shown_activities: list[dict[str, Any]],
    ) -> StoredReferral:
        """Write `version` of `current`, unless it changed since it was read (`WriteConflict`)."""
        write = self._prepare(
            current.referral_id,
            version,
            document,
            shown_activities,
            older_json=current.older_json,
            archived_rows=current.archived_rows,
        )
        condition: dict[str, Any] = {
            "mode": UpdateMode.REPLACE,
            "etag": current.storage_etag,
            "match_condition": MatchConditions.IfNotModified,
        }
        table = self._existing_table()
        with _storage_faults("replace"):
            try:
                if not write.archive_rows:
                    table.update_entity(
                        write.entity,
                        mode=UpdateMode.REPLACE,
                        etag=current.storage_etag,
                        match_condition=MatchConditions.IfNotModified,
                        **_call_options(),
                    )
                else:
                    operations: list[Any] = [("create", row) for row in write.archive_rows]
                    table.submit_transaction(
                        [*operations, ("update", write.entity, condition)], **_call_options()
                    )
            except (ResourceModifiedError, ResourceNotFoundError, ResourceExistsError):
                raise WriteConflict(current.referral_id) from None
            except TableTransactionError as error:
                if error.status_code in (404, 409, 412):
                    raise WriteConflict(current.referral_id) from None
                raise
        return write.result

    def read_version(self, referral_id: str) -> tuple[str, frozenset[str]] | None:
        """Only the public ETag and the participants of a referral: what a conditional GET needs."""
        with _storage_faults("read"):
            try:
                entity = self._table.get_entity(
                    referral_id, REFERRAL_ROW, select=["Version", "Organizations"], **_call_options()
                )
            except ResourceNotFoundError:
                return None
        return entity["Version"], _organizations(entity["Organizations"])

    def read_many(self, referral_ids: list[str]) -> dict[str, StoredReferral | None]:
        """Point reads in parallel (a listing page verifies each index row against its referral)."""
        unique = list(dict.fromkeys(referral_ids))
        return dict(zip(unique, _in_parallel(self.read, unique), strict=True))

    def put_index_entries(self, entries: list[IndexEntry]) -> None:
        table = self._existing_table()

        def put(entry: IndexEntry) -> None:
            with _storage_faults("index write"):
                table.upsert_entity(entry.entity(), mode=UpdateMode.REPLACE, **_call_options())

        _in_parallel(put, entries)

    def delete_index_entries(self, entries: list[IndexEntry], *, wait: bool = True) -> None:
        """Best effort: a row left behind is recognised as stale and repaired by a later listing.

        With `wait=False` the deletes run after the response has gone, on clean-up threads of their
        own with a bounded backlog: clean-up is never on a caller's critical path, and slow storage
        can neither make it queue without end nor let it take the threads requests read with.
        """

        table = self._existing_table()  # already made sure of: these rows were written or listed

        def delete(entry: IndexEntry) -> None:
            try:
                table.delete_entity(entry.partition_key, entry.row_key, **_call_options())
            except AzureError as error:
                log.warning(to_json({"event": "indexCleanupDeferred", "error": type(error).__name__}))

        if wait:
            _in_parallel(delete, entries)
            return

        def delete_in_background(entry: IndexEntry) -> None:
            try:
                delete(entry)
            finally:
                _cleanup_slots.release()

        for queued, entry in enumerate(entries):
            if not _cleanup_slots.acquire(blocking=False):
                log.warning(to_json({"event": "indexCleanupSkipped", "rows": len(entries) - queued}))
                return
            _cleanup_executor.submit(delete_in_background, entry)

    def scan_index(
        self,
        organization: str,
        *,
        after_key: str | None,
        updated_since: str | None,
        status: str | None,
        referral_source: str | None,
        page_size: int,
    ) -> Iterator[tuple[list[IndexEntry], bool]]:
        """Index rows of one organization after `after_key`, oldest first, in batches of at most
        `page_size`, each with whether more rows follow it. The admins' shards are merged in RowKey
        order: each shard is read a storage page at a time (the first pages at once), and a batch
        holds only rows no unread row of any shard can precede."""
        conditions = ["PartitionKey eq @pk", "RowKey gt @after"]
        parameters: dict[str, Any] = {"after": after_key or ""}
        if updated_since:
            conditions.append("RowKey ge @since")
            parameters["since"] = oldest_key_bound(updated_since)
        if status:
            conditions.append("Status eq @status")
            parameters["status"] = status
        if referral_source:
            conditions.append("ReferralSource eq @source")
            parameters["source"] = referral_source
        shards = [
            _ShardScan(self._existing_table(), organization, partition, " and ".join(conditions), parameters, page_size)
            for partition in index_partitions(organization)
        ]
        while True:
            # Storage may answer a page with no rows and a continuation: read on until every shard
            # with more has a row to compare.
            while empty := [shard for shard in shards if not shard.buffer and shard.continuation]:
                _in_parallel(_ShardScan.fill, empty)
            # Rows up to the smallest last key of the shards with more unread: beyond it, an unread
            # row of that shard could come first.
            bound = min((shard.buffer[-1].row_key for shard in shards if shard.continuation), default=None)
            ready = sorted(
                (row for shard in shards for row in shard.buffer if bound is None or row.row_key <= bound),
                key=lambda row: row.row_key,
            )[:page_size]
            taken = {id(row) for row in ready}
            for shard in shards:
                shard.buffer = [row for row in shard.buffer if id(row) not in taken]
            more = any(shard.buffer or shard.continuation for shard in shards)
            yield ready, more
            if not more:
                return

    def subscriptions(self, organization: str | None = None) -> list[StoredSubscription]:
        """An organization's webhook subscriptions, or (None) every organization's."""
        if organization is None:
            query = "PartitionKey ge @low and PartitionKey lt @high"
            prefix = SUBSCRIPTION_PARTITION_PREFIX
            parameters = {"low": prefix, "high": prefix[:-1] + chr(ord(prefix[-1]) + 1)}
        else:
            query, parameters = "PartitionKey eq @pk", {"pk": SUBSCRIPTION_PARTITION_PREFIX + organization}
        with _storage_faults("subscriptions"):
            rows = list(self._existing_table().query_entities(query, parameters=parameters, **_call_options()))
        return [StoredSubscription.from_entity(row) for row in rows if not row["RowKey"].startswith(SLOT_ROW_PREFIX)]

    def subscription(self, organization: str, subscription_id: str) -> StoredSubscription | None:
        with _storage_faults("subscription"):
            try:
                entity = self._table.get_entity(
                    SUBSCRIPTION_PARTITION_PREFIX + organization, subscription_id, **_call_options()
                )
            except ResourceNotFoundError:
                return None
        return StoredSubscription.from_entity(entity)

    def create_subscription(self, subscription: StoredSubscription) -> None:
        """Create the subscription and take its slot, in one transaction; `SlotTaken` when the slot is
        someone else's by now (nothing is written then)."""
        entity = subscription.entity()
        slot = {"PartitionKey": entity["PartitionKey"], "RowKey": _slot_row(subscription.slot)}
        with _storage_faults("create subscription"):
            try:
                self._existing_table().submit_transaction([("create", entity), ("create", slot)], **_call_options())
            except TableTransactionError as error:
                if error.status_code == 409:
                    raise SlotTaken(subscription.slot) from None
                raise

    def save_subscription(self, subscription: StoredSubscription) -> StoredSubscription:
        """Write `subscription` over the row it was read from; `WriteConflict` when that row has changed
        or gone since (resumed, deleted), so a delivery pass never undoes what a caller just did."""
        with _storage_faults("save subscription"):
            try:
                metadata = self._existing_table().update_entity(
                    subscription.entity(),
                    mode=UpdateMode.REPLACE,
                    etag=subscription.storage_etag,
                    match_condition=MatchConditions.IfNotModified,
                    **_call_options(),
                )
            except (ResourceModifiedError, ResourceNotFoundError):
                raise WriteConflict(subscription.subscription_id) from None
        return subscription._replace(storage_etag=str(metadata["etag"]))

    def delete_subscription(self, subscription: StoredSubscription) -> None:
        """Delete a subscription and free its slot, together; gone already is no error."""
        partition = SUBSCRIPTION_PARTITION_PREFIX + subscription.organization
        operations: list[Any] = [
            ("delete", {"PartitionKey": partition, "RowKey": subscription.subscription_id}),
            ("delete", {"PartitionKey": partition, "RowKey": _slot_row(subscription.slot)}),
        ]
        with _storage_faults("delete subscription"):
            try:
                self._existing_table().submit_transaction(operations, **_call_options())
            except TableTransactionError as error:
                if error.status_code != 404:
                    raise

    def history(self, referral_id: str) -> list[dict[str, Any]]:
        """Every activity of a referral, oldest first: archived rows, then unarchived, then shown."""
        current = self.read(referral_id)
        return [] if current is None else self.history_window(current, 0, sys.maxsize)[0]

    def history_window(self, current: StoredReferral, first: int, count: int) -> tuple[list[dict[str, Any]], int]:
        """Activities `first` to `first + count - 1` (numbered from 0, oldest first) of the referral as
        `current` holds it, and how many activities it has.

        `current` was read first and says how many rows were archived then; rows are written once
        and never change, so the window agrees with `current` whatever was written since: an update
        that archives 50 activities after `current` was read makes no activity appear twice or not
        at all. Only the rows the window needs are read, in one range query.
        """
        archived = current.archived_rows * ACTIVITIES_PER_HISTORY_ROW
        unarchived = (json.loads(current.older_json) if current.older_json else []) + current.document()[1]
        total = archived + len(unarchived)
        end = min(first + count, total)
        activities: list[dict[str, Any]] = []
        if first < min(end, archived):
            low, high = first // ACTIVITIES_PER_HISTORY_ROW, (min(end, archived) - 1) // ACTIVITIES_PER_HISTORY_ROW
            with _storage_faults("history"):
                rows = list(
                    self._existing_table().query_entities(
                        "PartitionKey eq @pk and RowKey ge @low and RowKey le @high",
                        parameters={"pk": current.referral_id, "low": _history_row(low), "high": _history_row(high)},
                        **_call_options(),
                    )
                )
            for row in sorted(rows, key=lambda entity: entity["RowKey"]):
                activities.extend(json.loads(_get_text(row, "Activities")))
            if len(activities) != (high - low + 1) * ACTIVITIES_PER_HISTORY_ROW:
                raise RuntimeError(f"History rows {low}-{high} of a referral are not whole.")
            offset = low * ACTIVITIES_PER_HISTORY_ROW
            activities = activities[first - offset : min(end, archived) - offset]
        activities.extend(unarchived[max(first - archived, 0) : max(end - archived, 0)])
        return activities, total

    def _prepare(
        self,
        referral_id: str,
        etag: str,
        document: dict[str, Any],
        shown: list[dict[str, Any]],
        older_json: str,
        archived_rows: int,
    ) -> _Write:
        """The entity for `document` with its activities, and the history rows to archive with it.

        The newest 100 activities are shown in the body; older ones gather in `Older` and move to a
        history row once there are 50. Should the referral and its activities not fit one entity
        (`ENTITY_BUDGET_BYTES`: a referral near its size limit whose activities are unusually large),
        the oldest unarchived activities move to history rows early, 50 at a time, and the body
        shows fewer than 100 until newer ones take their place: history never makes a write fail.
        """
        keep = Limits.ACTIVITIES_RETURNED
        unarchived = (json.loads(older_json) if older_json else []) + shown  # oldest first
        archived: list[list[dict[str, Any]]] = []
        while len(unarchived) - keep >= ACTIVITIES_PER_HISTORY_ROW:
            # Exactly ACTIVITIES_PER_HISTORY_ROW a row: `history_window` finds activity n in row n // 50.
            archived.append(unarchived[:ACTIVITIES_PER_HISTORY_ROW])
            unarchived = unarchived[ACTIVITIES_PER_HISTORY_ROW:]
        organizations = frozenset(p["organizationId"] for p in document.get("participants", []))
        while True:
            shown = unarchived[-keep:]
            older = unarchived[: len(unarchived) - len(shown)]
            body, activities_at = _body_json(document, shown)
            entity: dict[str, Any] = {
                "PartitionKey": referral_id,
                "RowKey": REFERRAL_ROW,
                "Version": etag,
                "Organizations": ",".join(sorted(organizations)),
                "Status": document["status"],
                "ReferralSource": document["referralSource"],
                "UpdatedDate": document["updatedDate"],
                "ArchivedRows": archived_rows + len(archived),
                "ActivitiesAt": activities_at,
            }
            _put_text(entity, "Body", body)
            older_json = to_json(older) if older else ""
            if older_json:
                _put_text(entity, "Older", older_json)
            if entity_size(entity) <= ENTITY_BUDGET_BYTES:
                break
            if len(unarchived) <= ACTIVITIES_PER_HISTORY_ROW:
                # Only a referral at its size limit whose newest activities alone are over 150 KB
                # (each names at most its changes; see docs/reliability.md): refused, never stored.
                raise PayloadTooLarge("The referral and its newest activities would not fit in storage.")
            archived.append(unarchived[:ACTIVITIES_PER_HISTORY_ROW])
            unarchived = unarchived[ACTIVITIES_PER_HISTORY_ROW:]
        archive_rows = []
        for number, activities in enumerate(archived, start=archived_rows):
            row: dict[str, Any] = {"PartitionKey": referral_id, "RowKey": _history_row(number)}
            _put_text(row, "Activities", to_json(activities))
            if entity_size(row) > ENTITY_BUDGET_BYTES:
                raise PayloadTooLarge("The referral's activities would not fit in storage.")
            archive_rows.append(row)
        archived_rows += len(archived)
        result = StoredReferral(
            referral_id=referral_id,
            body=body,
            etag=etag,
            organizations=organizations,
            updated_date=document["updatedDate"],
            storage_etag="",  # unknown until the next read; a result is never written back as is
            older_json=older_json,
            archived_rows=archived_rows,
            status=document["status"],
            referral_source=document["referralSource"],
            activities_at=activities_at,
        )
        return _Write(entity, archive_rows, result)


class _ShardScan:
    """One partition's part of an index scan: its rows read but not yet handed out, and where
    storage would go on."""

    _START: Any = object()  # before the first page (a continuation token of None means "no more")

    def __init__(
        self,
        table: TableClient,
        organization: str,
        partition: str,
        query: str,
        parameters: dict[str, Any],
        page_size: int,
    ) -> None:
        self._table, self._organization, self._query = table, organization, query
        self._parameters = {**parameters, "pk": partition}
        self._page_size = page_size
        self.buffer: list[IndexEntry] = []
        self.continuation: Any = self._START

    def fill(self) -> None:
        """Read the next storage page, with what remains of the request's time budget."""
        start = None if self.continuation is self._START else self.continuation
        with _storage_faults("index scan"):
            # A PageIterator (typed as a plain Iterator): after its page it holds the next one's token.
            pages: Any = self._table.query_entities(
                self._query, parameters=self._parameters, results_per_page=self._page_size, **_call_options()
            ).by_page(continuation_token=start)
            self.buffer.extend(IndexEntry.from_entity(self._organization, row) for row in next(pages, []))
            self.continuation = pages.continuation_token


# Table Storage's (and Azurite's) codes for an entity, property or request over its limit.
_TOO_LARGE_CODES = frozenset({"EntityTooLarge", "RequestBodyTooLarge", "PropertyValueTooLarge"})


@contextmanager
def _storage_faults(operation: str) -> Iterator[None]:
    """Turn storage being unreachable, slow or throttling into 503 serviceNotAvailable, and an entity
    storage refuses as too large into 413 payloadTooLarge."""
    try:
        yield
    except AzureError as error:
        if isinstance(error, HttpResponseError) and (
            error.status_code == 413 or getattr(error, "error_code", None) in _TOO_LARGE_CODES
        ):
            # `_prepare` keeps every write under the limit; should storage still refuse one as too
            # large, the caller's change is what is too large (413), and nothing was written.
            log.warning(to_json({"event": "storageTooLarge", "operation": operation}))
            raise PayloadTooLarge("The referral would be too large to store.") from None
        unavailable = isinstance(error, (ServiceRequestError, ServiceResponseError)) or (
            isinstance(error, HttpResponseError)
            and (error.status_code is None or error.status_code in (408, 429) or error.status_code >= 500)
        )
        if not unavailable:
            raise
        log.warning(to_json({"event": "storageUnavailable", "operation": operation, "error": type(error).__name__}))
        raise ServiceNotAvailable("Referral storage is not available right now; retry shortly.") from None


def _call_options() -> dict[str, Any]:
    """Per-call timeouts from what remains of the request's time budget (`shared.budget`), so that a
    call and its one retry end within it; 503 once it is spent, before the call starts. Outside a
    request (clean-up after a response) the client's own timeouts apply."""
    left = budget.check()
    if left is None:
        return {}
    attempt = max((left - RETRIES["retry_backoff_factor"]) / 2, 0.05)
    return {
        "connection_timeout": min(TIMEOUTS["connection_timeout"], attempt),
        "read_timeout": min(TIMEOUTS["read_timeout"], attempt),
    }


class _Workers:
    """Threads for a request's storage fan-out that never queue: a task goes to an idle thread or to
    a new one, so no request waits for the threads another request's stalled calls hold (a shared
    pool with a queue made a listing wait its turn behind every stalled read before it). Idle
    threads end after a minute."""

    def __init__(self, name: str, idle_seconds: float = 60.0) -> None:
        self._name = name
        self._idle_seconds = idle_seconds
        self._idle: list[queue.SimpleQueue[Callable[[], None]]] = []
        self._lock = threading.Lock()

    def run(self, task: Callable[[], None]) -> None:
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(inbox,), name=self._name, daemon=True).start()
        inbox.put(task)

    def _serve(self, inbox: queue.SimpleQueue[Callable[[], None]]) -> None:
        while True:
            try:
                task = inbox.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:
                        self._idle.remove(inbox)
                        return
                continue  # handed a task just as it timed out: take it
            task()
            with self._lock:
                self._idle.append(inbox)


# At most this many storage calls of one request run at once (a listing page's point reads, a
# write's index rows): one request cannot take every connection, and each has its own threads.
FAN_OUT = 8
_workers = _Workers("referrals-storage")
# Deletes of superseded index rows, after responses. A row skipped when the backlog is full stays
# until a listing meets it and repairs it.
CLEANUP_BACKLOG = 256
_cleanup_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="referrals-cleanup")
_cleanup_slots = threading.BoundedSemaphore(CLEANUP_BACKLOG)


def _in_parallel[T, R](function: Callable[[T], R], items: list[T]) -> list[R]:
    """`function` over `items`, at most FAN_OUT at a time, in the request's context (its deadline);
    the first error is raised once every call started has ended, and no new call starts after it."""
    if len(items) <= 1:
        return [function(item) for item in items]
    results: list[Any] = [None] * len(items)
    errors: list[BaseException] = []
    pending = iter(range(len(items)))
    lock = threading.Lock()
    lanes = min(FAN_OUT, len(items))
    finished = threading.Semaphore(0)

    def lane() -> None:
        try:
            while True:
                with lock:
                    index = None if errors else next(pending, None)
                if index is None:
                    return
                try:
                    results[index] = function(items[index])
                except BaseException as error:  # noqa: BLE001 (re-raised in the caller's thread)
                    with lock:
                        errors.append(error)
        finally:
            finished.release()

    for _ in range(lanes - 1):
        _workers.run(functools.partial(contextvars.copy_context().run, lane))
    lane()
    for _ in range(lanes):  # every lane's release, this thread's own included
        finished.acquire()
    if errors:
        raise errors[0]
    return results


_store = Lazy(lambda: ReferralStore(_open_table(settings.storage())))
# The process-wide store: one client and connection pool per process, created on first use.
get_store = _store.get
reset_store = _store.reset


def _client_options() -> dict[str, Any]:
    # requests keeps 10 connections per host by default; concurrent requests plus the index fan-out
    # need more, or connections are dropped and re-opened under load.
    session = requests.Session()
    # No proxy settings from the environment: requests would re-read them on every call (~0.2 ms CPU).
    session.trust_env = False
    adapter = HTTPAdapter(
        pool_connections=4,
        pool_maxsize=64,
        max_retries=Retry(total=False, redirect=False, raise_on_status=False),  # azure-core retries
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    transport = RequestsTransport(session=session, use_env_settings=False, **TIMEOUTS)
    return {"transport": transport, **TIMEOUTS, **RETRIES}


def _open_table(config: StorageSettings) -> TableClient:
    if config.connection_string:
        try:
            service = TableServiceClient.from_connection_string(config.connection_string, **_client_options())
        except ValueError:
            raise ConfigurationError("REFERRALS_STORAGE", "is not a valid connection string") from None
    else:
        service = TableServiceClient(
            endpoint=str(config.table_service_uri),
            credential=_identity_credential(config.managed_identity_client_id),
            **_client_options(),
        )
    # The table is created by the store when first written to or queried (`_existing_table`).
    return service.get_table_client(config.table_name)


def _identity_credential(client_id: str | None) -> Any:
    # Imported here: azure.identity is large, and a connection-string deployment never needs it.
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if client_id:
        return ManagedIdentityCredential(client_id=client_id)
    return DefaultAzureCredential()
