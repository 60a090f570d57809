"""Table Storage repository for referrals: the only module that speaks azure.data.tables.

Layout, one partition per referral (PartitionKey = the referral id, which cannot contain the ':' that
the organization index partitions below start with):

- RowKey `referral`: the referral itself. `Body*` holds the JSON exactly as GET returns it (the
  referral and its newest 100 activities), split into string properties because one property holds
  at most 32K UTF-16 characters; GET answers from it without parsing. `Older*` holds activities that
  dropped out of the newest 100 but are not archived yet. `Version` is the public ETag: random per
  write, so it reveals nothing of storage. `Organizations` lets a read decide visibility without
  parsing the body.
- RowKey `history-0000000000`, `history-0000000001`, ...: archived activities, oldest first, exactly
  50 a row, written once and never changed: activity n (numbered from 0) is in row n // 50, which is
  how a page of the history is read without the rows before it (`history_window`).

Every write is one conditional operation on the referral row (If-Match on the storage ETag read
before), so a referral and its history never disagree. When 50 activities have gathered in `Older`,
they move to a new history row in the same entity group transaction as the referral's update: one
transaction in 50 writes, single conditional updates otherwise (a transaction's multipart encoding
costs several times the client CPU of a plain update).

Storage faults become `ServiceNotAvailable`; lost races become `WriteConflict` / `AlreadyExists`.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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

from shared.errors import ApiError, ConfigurationError, ServiceNotAvailable
from shared.lazy import Lazy
from shared.model import Limits
from shared.settings import StorageSettings, settings
from shared.timestamps import parse_utc

log = logging.getLogger("referrals.store")

REFERRAL_ROW = "referral"
HISTORY_ROW_PREFIX = "history-"
ACTIVITIES_PER_HISTORY_ROW = 50
# A string property holds 64 KiB: 32,768 UTF-16 code units. ASCII text is one unit a character; any
# other character is at most two, so half the limit in characters is always safe.
_ASCII_CHUNK = 32_000
_UNICODE_CHUNK = 16_000
# What one entity may hold is 1 MiB including property names and overhead; stay clear of it.
_ENTITY_BUDGET_BYTES = 1_000_000

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


@dataclass(frozen=True)
class StoredReferral:
    referral_id: str
    body: str  # the JSON GET returns: the referral and its newest activities
    etag: str  # public, quoted, strong
    organizations: frozenset[str]
    updated_date: str
    storage_etag: str
    older_json: str  # activities not shown and not yet archived, as a JSON array ("" when none)
    archived_rows: int

    def document(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The referral without activities, and its shown activities (oldest first)."""
        parsed = json.loads(self.body)
        activities = parsed.pop("activities", [])
        return parsed, activities


def new_etag() -> str:
    return f'"{secrets.token_urlsafe(16)}"'


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def utf16_units(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-16-le")) // 2


def _history_row(index: int) -> str:
    return f"{HISTORY_ROW_PREFIX}{index:010d}"


def _organizations(joined: str) -> frozenset[str]:
    return frozenset(filter(None, joined.split(",")))


def _chunks(text: str) -> list[str]:
    size = _ASCII_CHUNK if text.isascii() else _UNICODE_CHUNK
    return [text[start : start + size] for start in range(0, len(text), size)] or [""]


def _put_text(entity: dict[str, Any], prefix: str, text: str) -> None:
    parts = _chunks(text)
    entity[f"{prefix}Parts"] = len(parts)
    for index, part in enumerate(parts):
        entity[f"{prefix}{index}"] = part


def _get_text(entity: Any, prefix: str) -> str:
    return "".join(entity[f"{prefix}{index}"] for index in range(entity[f"{prefix}Parts"]))


def _entity_size(entity: dict[str, Any]) -> int:
    return sum(
        2 * len(name) + (2 * utf16_units(value) if isinstance(value, str) else 8) for name, value in entity.items()
    )


INDEX_PARTITION_PREFIX = "index:"
_KEY_BASE = 10**17


def index_partition(organization: str) -> str:
    return f"{INDEX_PARTITION_PREFIX}{organization}"


def index_row_key(updated_date: str, referral_id: str, version: str) -> str:
    """Newest first in RowKey order: 10^17 minus the microseconds of updatedDate, then the id, then
    the version. Two writers racing on one referral can stamp the same updatedDate (see
    `shared.service._stamp_after`); the version keeps their rows apart, so the loser removing its
    own rows never removes the winner's."""
    unquoted = version.strip('"')
    return f"{_KEY_BASE - _micros(updated_date):017d}:{referral_id}:{unquoted}"


def newest_key_bound(updated_since: str) -> str | None:
    """Index RowKeys below this bound belong to versions updated at or after `updated_since`; None
    when every row does (a bound at or before the epoch would not fit the key's 17 digits)."""
    bound = _KEY_BASE - _micros(updated_since) + 1
    return f"{bound:017d}" if bound < _KEY_BASE else None


def _micros(timestamp: str) -> int:
    delta = parse_utc(timestamp) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class IndexEntry:
    """One row of an organization's index: a referral version as listings find it."""

    organization: str
    referral_id: str
    version: str
    updated_date: str
    status: str
    referral_source: str

    @property
    def partition_key(self) -> str:
        return index_partition(self.organization)

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


@dataclass(frozen=True)
class _Write:
    entity: dict[str, Any]
    archive_row: dict[str, Any] | None
    result: StoredReferral


class ReferralStore:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    def read(self, referral_id: str) -> StoredReferral | None:
        with _storage_faults("read"):
            try:
                entity = self._table.get_entity(referral_id, REFERRAL_ROW)
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
        )

    def create(
        self, referral_id: str, version: str, document: dict[str, Any], activity: dict[str, Any]
    ) -> StoredReferral:
        write = self._prepare(referral_id, version, document, [activity], older_json="", archived_rows=0)
        with _storage_faults("create"):
            try:
                self._table.create_entity(write.entity)
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
        with _storage_faults("replace"):
            try:
                if write.archive_row is None:
                    self._table.update_entity(
                        write.entity,
                        mode=UpdateMode.REPLACE,
                        etag=current.storage_etag,
                        match_condition=MatchConditions.IfNotModified,
                    )
                else:
                    self._table.submit_transaction([("create", write.archive_row), ("update", write.entity, condition)])
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
                entity = self._table.get_entity(referral_id, REFERRAL_ROW, select=["Version", "Organizations"])
            except ResourceNotFoundError:
                return None
        return entity["Version"], _organizations(entity["Organizations"])

    def read_many(self, referral_ids: list[str]) -> dict[str, StoredReferral | None]:
        """Point reads in parallel (a listing page verifies each index row against its referral)."""
        unique = list(dict.fromkeys(referral_ids))
        return dict(zip(unique, _in_parallel(self.read, unique), strict=True))

    def put_index_entries(self, entries: list[IndexEntry]) -> None:
        def put(entry: IndexEntry) -> None:
            with _storage_faults("index write"):
                self._table.upsert_entity(entry.entity(), mode=UpdateMode.REPLACE)

        _in_parallel(put, entries)

    def delete_index_entries(self, entries: list[IndexEntry], *, wait: bool = True) -> None:
        """Best effort: a row left behind is recognised as stale and repaired by a later listing.

        With `wait=False` the deletes run after the response has gone, on clean-up threads of their
        own with a bounded backlog: clean-up is never on a caller's critical path, and slow storage
        can neither make it queue without end nor let it take the threads requests read with.
        """

        def delete(entry: IndexEntry) -> None:
            try:
                self._table.delete_entity(entry.partition_key, entry.row_key)
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
        """Index rows of one organization, newest first, a page at a time: one range query. Each page
        comes with whether storage holds more rows after it."""
        conditions = ["PartitionKey eq @pk", "RowKey gt @after", "RowKey lt @before"]
        parameters: dict[str, Any] = {
            "pk": index_partition(organization),
            "after": after_key or "",
            "before": (newest_key_bound(updated_since) if updated_since else None) or "~",
        }
        if status:
            conditions.append("Status eq @status")
            parameters["status"] = status
        if referral_source:
            conditions.append("ReferralSource eq @source")
            parameters["source"] = referral_source
        with _storage_faults("index scan"):
            # A PageIterator (typed as a plain Iterator): after each page it holds the next one's token.
            pages: Any = self._table.query_entities(
                " and ".join(conditions), parameters=parameters, results_per_page=page_size
            ).by_page()
            for page in pages:
                rows = [IndexEntry.from_entity(organization, row) for row in page]
                yield rows, pages.continuation_token is not None

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
                    self._table.query_entities(
                        "PartitionKey eq @pk and RowKey ge @low and RowKey le @high",
                        parameters={"pk": current.referral_id, "low": _history_row(low), "high": _history_row(high)},
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
        keep = Limits.ACTIVITIES_RETURNED
        older = (json.loads(older_json) if older_json else []) + shown[:-keep]
        shown = shown[-keep:]
        archive_row = None
        if len(older) >= ACTIVITIES_PER_HISTORY_ROW:
            # Exactly ACTIVITIES_PER_HISTORY_ROW a row: `history_window` finds activity n in row n // 50.
            archive_row = {"PartitionKey": referral_id, "RowKey": _history_row(archived_rows)}
            _put_text(archive_row, "Activities", to_json(older[:ACTIVITIES_PER_HISTORY_ROW]))
            older, archived_rows = older[ACTIVITIES_PER_HISTORY_ROW:], archived_rows + 1

        body = to_json({**document, "activities": shown})
        organizations = frozenset(p["organizationId"] for p in document.get("participants", []))
        entity: dict[str, Any] = {
            "PartitionKey": referral_id,
            "RowKey": REFERRAL_ROW,
            "Version": etag,
            "Organizations": ",".join(sorted(organizations)),
            "Status": document["status"],
            "ReferralSource": document["referralSource"],
            "UpdatedDate": document["updatedDate"],
            "ArchivedRows": archived_rows,
        }
        _put_text(entity, "Body", body)
        older_json = to_json(older) if older else ""
        if older_json:
            _put_text(entity, "Older", older_json)
        if _entity_size(entity) > _ENTITY_BUDGET_BYTES:
            # Unreachable within the documented limits; a guard so a limit change cannot corrupt data.
            raise ApiError("The referral is too large to store.")
        result = StoredReferral(
            referral_id=referral_id,
            body=body,
            etag=etag,
            organizations=organizations,
            updated_date=document["updatedDate"],
            storage_etag="",  # unknown until the next read; a result is never written back as is
            older_json=older_json,
            archived_rows=archived_rows,
        )
        return _Write(entity, archive_row, result)


@contextmanager
def _storage_faults(operation: str) -> Iterator[None]:
    """Turn storage being unreachable, slow or throttling into 503 serviceNotAvailable."""
    try:
        yield
    except AzureError as error:
        unavailable = isinstance(error, (ServiceRequestError, ServiceResponseError)) or (
            isinstance(error, HttpResponseError)
            and (error.status_code is None or error.status_code in (408, 429) or error.status_code >= 500)
        )
        if not unavailable:
            raise
        log.warning(to_json({"event": "storageUnavailable", "operation": operation, "error": type(error).__name__}))
        raise ServiceNotAvailable("Referral storage is not available right now; retry shortly.") from None


# Index writes and listing reads fan out over partitions; the pool is shared by the process.
_executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="referrals-storage")
# Deletes of superseded index rows, after responses. A row skipped when the backlog is full stays
# until a listing meets it and repairs it.
CLEANUP_BACKLOG = 256
_cleanup_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="referrals-cleanup")
_cleanup_slots = threading.BoundedSemaphore(CLEANUP_BACKLOG)


def _in_parallel[T, R](function: Callable[[T], R], items: list[T]) -> list[R]:
    if len(items) <= 1:
        return [function(item) for item in items]
    return list(_executor.map(function, items))


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
    with _storage_faults("create table"), suppress(ResourceExistsError):
        service.create_table(config.table_name)
    return service.get_table_client(config.table_name)


def _identity_credential(client_id: str | None) -> Any:
    # Imported here: azure.identity is large, and a connection-string deployment never needs it.
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if client_id:
        return ManagedIdentityCredential(client_id=client_id)
    return DefaultAzureCredential()
