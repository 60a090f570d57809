"""Background clean-up of index rows when storage stops answering: a fault Azurite cannot hold still
long enough to count, so a table that never answers stands in for it."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from shared import store
from shared.store import IndexEntry, ReferralStore


class UnansweringTable:
    def __init__(self) -> None:
        self.answer = threading.Event()
        self.deletes: list[str] = []  # thread names, one per delete started

    def create_table(self) -> None:
        pass  # the table is there: only entity calls go unanswered

    def delete_entity(self, partition_key: str, row_key: str) -> None:
        self.deletes.append(threading.current_thread().name)
        self.answer.wait(10)


def test_cleanup_backlog_is_bounded_and_kept_off_the_request_threads(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cleanup = ThreadPoolExecutor(max_workers=2, thread_name_prefix="referrals-cleanup")
    monkeypatch.setattr(store, "_cleanup_executor", cleanup)
    monkeypatch.setattr(store, "_cleanup_slots", threading.BoundedSemaphore(5))
    table = UnansweringTable()
    stamp = "2026-11-21T10:00:00.000000Z"
    rows = [IndexEntry("org", f"r{index}", '"v"', stamp, "Active", "P2P") for index in range(20)]

    with caplog.at_level(logging.WARNING, logger="referrals.store"):
        ReferralStore(table).delete_index_entries(rows, wait=False)  # type: ignore[arg-type]
    assert '{"event":"indexCleanupSkipped","rows":15}' in caplog.text
    # The request threads are free while clean-up waits on storage.
    assert store._in_parallel(str.upper, ["free", "too"]) == ["FREE", "TOO"]

    table.answer.set()
    cleanup.shutdown(wait=True)
    assert len(table.deletes) == 5
    assert all(name.startswith("referrals-cleanup") for name in table.deletes)
    slots: Any = store._cleanup_slots
    assert all(slots.acquire(blocking=False) for _ in range(5))  # every slot was given back
