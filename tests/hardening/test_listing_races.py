"""Listings racing writers: every referral written before a listing began is on one of its pages.

Issue 12 item 5: a referral updated back to back (34 writes/s) was missing from 9 of 807 complete
pages of `GET ?updatedSince=<30 s ago>&top=100`. An update moves a referral's index row to the top;
a listing that read the old row just before (or had not reached it yet) found the new one neither
where it had read nor ahead of it. These tests list while writers update the same referrals over
and over, and check each listing, followed to its last page, against what existed before it began.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.conftest import Api, minimal_referral, new_id, reset_process_state
from tests.hardening.conftest import list_referrals, record

WRITERS = 3
LISTINGS = 30
TIME_LIMIT_SECONDS = 60.0


@pytest.fixture
def own_table(api_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFERRALS_TABLE", f"Race{uuid.uuid4().hex[:12]}")
    reset_process_state()


@pytest.fixture
def writers(api: Api, own_table: None) -> Iterator[tuple[list[str], list[int]]]:
    """Referrals, and writers updating them back to back (each its own share, round robin)."""
    referral_ids = [new_id() for _ in range(24)]
    for referral_id in referral_ids:
        assert api.post(referral_id, minimal_referral()).status == 201
    stop = threading.Event()
    writes = [0] * WRITERS
    deadline = time.monotonic() + TIME_LIMIT_SECONDS + 30

    def write(number: int) -> None:
        token = api.token()
        mine = referral_ids[number::WRITERS]
        counter = 0
        while not stop.is_set() and time.monotonic() < deadline:
            counter += 1
            reply = api.post(mine[counter % len(mine)], {"additionalInformation": f"w{number}-{counter}"}, token)
            assert reply.status in (200, 503), reply.body
            writes[number] += 1

    threads = [threading.Thread(target=write, args=(n,), daemon=True) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    try:
        yield referral_ids, writes
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


def complete_listing(api: Api, params: dict[str, str], token: str) -> list[list[str]]:
    """The ids on each page of a listing, following nextLink to the last page (at most 50 pages)."""
    pages: list[list[str]] = []
    for _ in range(50):
        reply = list_referrals(api, params, token)
        assert reply.status == 200, reply.body
        pages.append([item["id"] for item in reply.json["value"]])
        link = reply.json.get("nextLink")
        if link is None:
            return pages
        params = dict(parse_qsl(urlsplit(link).query))
    raise AssertionError("a listing of 24 referrals did not end within 50 pages")


@pytest.mark.parametrize("top", ["5", "100"])
def test_a_listing_followed_to_its_last_page_shows_every_referral_written_before_it(
    api: Api, writers: tuple[list[str], list[int]], top: str
) -> None:
    referral_ids, writes = writers
    token = api.token()
    started = time.monotonic()
    misses = duplicates = 0
    listings = 0
    while listings < LISTINGS and time.monotonic() - started < TIME_LIMIT_SECONDS:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
        pages = complete_listing(api, {"top": top, "updatedSince": since}, token)
        listings += 1
        for page in pages:
            assert len(page) == len(set(page)), "a page holds a referral twice"
            assert len(page) <= int(top)
        seen = {referral_id for page in pages for referral_id in page}
        missing = set(referral_ids) - seen
        misses += bool(missing)
        duplicates += sum(len(page) for page in pages) - len(seen)
        assert not missing, f"listing {listings} ({len(pages)} pages) misses {sorted(missing)}"
    assert listings >= 5
    record(
        f"listing races (top={top}): {listings} complete listings, {sum(writes)} concurrent updates, "
        f"{misses} with a referral missing, {duplicates} repeats across pages"
    )
