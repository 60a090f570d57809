"""Races: many clients updating or creating the same referral at once, through the functions, on Azurite.

- With If-Match, exactly one writer wins per ETag; every other gets 412 and writes nothing.
- Without it, every request succeeds or fails cleanly (503 with Retry-After when contention outlasts
  the service's retries), the successful ones form a serial order (each response is the state that
  replaying the successful patches in history order produces), no update is lost, and the history has
  exactly one activity per effective change, naming what that change changed.
- Concurrent creates of one new id: exactly one 201.
"""

from __future__ import annotations

import itertools
import random
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from shared.model import ALLOWED_TRANSITIONS, ReferralStatus
from shared.patching import changed_paths, merge_patch
from shared.store import ReferralStore
from tests.conftest import PARTNER_A, PARTNER_B, Api, Reply, minimal_referral, new_id
from tests.hardening.conftest import record

SERVER_FIELDS = ("id", "createdDate", "updatedDate", "activities")
# Properties the racing clients write; several clients write each of them.
PATHS = [
    ("customerProfile", "id"),
    ("customerProfile", "address", "city"),
    ("customerProfile", "address", "state"),
    ("customerProfile", "contact", "firstName"),
    ("customerRequirements", "solutions"),
    ("details", "notes"),
    ("additionalInformation",),
]


def patch_for(path: tuple[str, ...], value: str) -> dict[str, Any]:
    patch: Any = value
    for name in reversed(path):
        patch = {name: patch}
    return patch


def race(count: int, call: Callable[[int], Reply]) -> list[Reply]:
    """Run `call(0..count-1)` on `count` threads released together."""
    barrier = threading.Barrier(count)

    def run(index: int) -> Reply:
        barrier.wait()
        return call(index)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def tracked(document: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in document.items() if key not in SERVER_FIELDS}


def assert_clean_failure(reply: Reply, *allowed: int) -> None:
    assert reply.status in allowed, (reply.status, reply.body)
    assert reply.headers["x-ms-error-code"] == reply.error_code
    if reply.status == 503:
        assert reply.error_code == "serviceNotAvailable" and int(reply.headers["Retry-After"]) >= 1


def assert_serial(
    store: ReferralStore, referral_id: str, initial: dict[str, Any], successes: list[tuple[dict[str, Any], Reply]]
) -> list[dict[str, Any]]:
    """The successful requests, in history order, replay to each response and to the stored referral."""
    history = store.history(referral_id)
    position = {(a["date"], tuple(a["changedProperties"])): index for index, a in enumerate(history)}
    assert len(position) == len(history), "two activities with the same date and changes"
    ordered = sorted(
        successes,
        key=lambda item: position[
            (item[1].json["activities"][-1]["date"], tuple(item[1].json["activities"][-1]["changedProperties"]))
        ],
    )
    # Exactly one activity per successful (hence effective) update, and no other.
    assert len(history) == 1 + len(successes)
    assert history[0]["action"] == "Created"
    assert all(activity["action"] == "Updated" for activity in history[1:])
    state = tracked(initial)
    for index, (patch, reply) in enumerate(ordered, start=1):
        before, state = state, merge_patch(state, patch)
        assert tracked(reply.json) == state, f"response {index} is not the serial replay"
        assert history[index]["changedProperties"] == changed_paths(before, state)
    dates = [activity["date"] for activity in history]
    assert dates == sorted(dates), "activity dates go backwards"
    final = store.read(referral_id)
    assert final is not None
    document, _ = final.document()
    assert tracked(document) == state
    assert document["updatedDate"] == history[-1]["date"]
    return history


def run_unconditional_race(api: Api, store: ReferralStore, clients: int, updates: int) -> None:
    referral_id = new_id()
    created = api.post(referral_id, minimal_referral())
    assert created.status == 201

    def client(index: int) -> list[tuple[dict[str, Any], Reply]]:
        results = []
        for step in range(updates):
            path = PATHS[(index + step) % len(PATHS)]
            patch = patch_for(path, f"client{index}-update{step}")
            results.append((patch, api.post(referral_id, patch)))
        return results

    barrier = threading.Barrier(clients)

    def start(index: int) -> list[tuple[dict[str, Any], Reply]]:
        barrier.wait()
        return client(index)

    with ThreadPoolExecutor(clients) as pool:
        outcomes = [item for batch in pool.map(start, range(clients)) for item in batch]
    successes = [(patch, reply) for patch, reply in outcomes if reply.status == 200]
    for _, reply in outcomes:
        if reply.status != 200:
            assert_clean_failure(reply, 503)
    assert successes
    assert_serial(store, referral_id, created.json, successes)
    record(
        f"race without If-Match: {clients} clients x {updates} updates -> {len(successes)} x 200, "
        f"{len(outcomes) - len(successes)} x 503, history {1 + len(successes)} activities"
    )


def test_unconditional_updates_serialize_and_lose_nothing(api: Api, store: ReferralStore) -> None:
    run_unconditional_race(api, store, clients=8, updates=5)


def run_if_match_race(api: Api, store: ReferralStore, clients: int, rounds: int) -> None:
    referral_id = new_id()
    reply = api.post(referral_id, minimal_referral())
    etags = {reply.headers["ETag"]}
    winners = []
    for round_number in range(rounds):
        etag = api.get(referral_id).headers["ETag"]
        patches = [{"additionalInformation": f"round{round_number}-client{index}"} for index in range(clients)]
        replies = race(
            clients,
            lambda index, etag=etag, patches=patches: api.post(referral_id, patches[index], headers={"If-Match": etag}),
        )
        won = [index for index, r in enumerate(replies) if r.status == 200]
        assert len(won) == 1, [r.status for r in replies]
        for index, r in enumerate(replies):
            if index not in won:
                assert_clean_failure(r, 412)
                assert r.error_code == "preconditionFailed"
        winner = replies[won[0]]
        assert winner.headers["ETag"] not in etags
        etags.add(winner.headers["ETag"])
        assert winner.json["additionalInformation"] == patches[won[0]]["additionalInformation"]
        winners.append((patches[won[0]], winner))
    assert_serial(store, referral_id, reply.json, winners)
    record(
        f"race with If-Match: {clients} clients x {rounds} rounds -> exactly 1 x 200 and {clients - 1} x 412 each round"
    )


def test_if_match_lets_exactly_one_writer_win_per_etag(api: Api, store: ReferralStore) -> None:
    run_if_match_race(api, store, clients=8, rounds=4)


def test_racing_status_changes_follow_the_transition_rules(api: Api, store: ReferralStore) -> None:
    referral_id = new_id()
    assert api.post(referral_id, minimal_referral()).status == 201
    targets = [random.Random(index).choice(["Active", "Won", "Lost"]) for index in range(12)]
    targets[0], targets[1] = "Active", "Won"  # at least one path to a final status is possible
    replies = race(len(targets), lambda index: api.post(referral_id, {"status": targets[index]}))
    for reply in replies:
        if reply.status != 200:
            assert_clean_failure(reply, 409, 503)
    history = store.history(referral_id)
    assert history[0]["toStatus"] == "Pending"
    for previous, activity in itertools.pairwise(history):
        assert activity["fromStatus"] == previous["toStatus"]
        assert ReferralStatus(activity["toStatus"]) in ALLOWED_TRANSITIONS[ReferralStatus(previous["toStatus"])]
    final = api.get(referral_id).json
    assert final["status"] == history[-1]["toStatus"]


def test_concurrent_creates_of_one_id_make_exactly_one_201(api: Api, store: ReferralStore) -> None:
    referral_id = new_id()
    bodies = [minimal_referral(customerProfile={"name": f"Customer {index}"}) for index in range(8)]
    replies = race(len(bodies), lambda index: api.post(referral_id, bodies[index]))
    statuses = [reply.status for reply in replies]
    assert statuses.count(201) == 1, statuses
    for reply in replies:
        if reply.status not in (200, 201):
            assert_clean_failure(reply, 503)
    # Every other request was applied as an update of the winner's referral (each names another
    # customer, so each is an effective change), in some serial order.
    creator = replies[statuses.index(201)]
    updates = [(bodies[index], reply) for index, reply in enumerate(replies) if reply.status == 200]
    assert_serial(store, referral_id, creator.json, updates)


def test_concurrent_creates_by_two_organizations_make_one_owner(api: Api) -> None:
    referral_id = new_id()
    tokens = [api.token(PARTNER_A if index % 2 == 0 else PARTNER_B) for index in range(8)]
    replies = race(len(tokens), lambda index: api.post(referral_id, minimal_referral(), tokens[index]))
    statuses = [reply.status for reply in replies]
    assert statuses.count(201) == 1, statuses
    owner_token = tokens[statuses.index(201)]
    owner = PARTNER_A if owner_token in tokens[0::2] else PARTNER_B
    for token, reply in zip(tokens, replies, strict=True):
        same_org = (token in tokens[0::2]) == (owner == PARTNER_A)
        if reply.status == 201:
            continue
        if same_org:
            assert reply.status == 200, reply.body  # the same request again: nothing to change
        else:
            assert reply.status == 404 and reply.error_code == "itemNotFound", reply.body
    stored = api.get(referral_id, tokens[statuses.index(201)]).json
    assert [p["organizationId"] for p in stored["participants"]] == [owner]
    assert len(stored["activities"]) == 1


@pytest.mark.soak
def test_soak_unconditional_updates(api: Api, store: ReferralStore) -> None:
    for _ in range(3):
        run_unconditional_race(api, store, clients=16, updates=12)


@pytest.mark.soak
def test_soak_if_match(api: Api, store: ReferralStore) -> None:
    run_if_match_race(api, store, clients=16, rounds=20)


@pytest.mark.soak
def test_soak_concurrent_creates(api: Api) -> None:
    for _ in range(20):
        referral_id = f"ref-{uuid.uuid4()}"
        replies = race(12, lambda index, referral_id=referral_id: api.post(referral_id, minimal_referral()))
        assert [reply.status for reply in replies].count(201) == 1


def test_updated_date_never_goes_backwards_when_a_slow_writer_loses_the_race(
    api: Api, store: ReferralStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that is slow to read (a slow connection, a paused worker) while another writer commits
    must still stamp its change later than the version it replaces: updatedDate orders a referral's
    versions, and `updatedSince` listings rely on it."""
    referral_id = new_id()
    assert api.post(referral_id, minimal_referral()).status == 201
    slow_is_reading, fast_is_done = threading.Event(), threading.Event()
    original_read = ReferralStore.read

    def read(self: ReferralStore, key: str) -> Any:
        if threading.current_thread().name == "slow-writer" and not fast_is_done.is_set():
            slow_is_reading.set()
            fast_is_done.wait(timeout=10)
        return original_read(self, key)

    monkeypatch.setattr(ReferralStore, "read", read)
    slow: list[Reply] = []
    thread = threading.Thread(
        target=lambda: slow.append(api.post(referral_id, {"additionalInformation": "slow"})), name="slow-writer"
    )
    thread.start()
    assert slow_is_reading.wait(timeout=10)
    fast = api.post(referral_id, {"customerProfile": {"id": "fast"}})
    fast_is_done.set()
    thread.join(timeout=10)
    assert fast.status == 200 and slow[0].status == 200
    assert slow[0].json["customerProfile"]["id"] == "fast"  # applied over the fast writer's version
    assert slow[0].json["updatedDate"] > fast.json["updatedDate"]
    dates = [activity["date"] for activity in store.history(referral_id)]
    assert dates == sorted(dates)
