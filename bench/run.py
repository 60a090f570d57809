"""`make bench`: what the functions cost on top of Table Storage, cold start and concurrency.

One run, one in-memory Azurite started here. Every case times the handler (`main` called with a real
`azure.functions.HttpRequest` carrying a real bearer token, reused as a CRM reuses its token for an
hour) against the raw azure-data-tables calls the handler cannot avoid, as pairs interleaved (the
order alternating pair by pair) so that machine drift hits both sides, over several rounds; each
figure is the median over the rounds. Prints pass/miss per target and exits 0 either way: this is a
measurement, not a test. Exits non-zero only when the harness itself fails.

    .venv/bin/python -m bench.run                 # the full run (about 2 minutes on 2 cores)
    .venv/bin/python -m bench.run --quick         # fewer rounds and samples, to try the harness
    .venv/bin/python -m bench.run --profile post-details   # cProfile one handler case, no table
    .venv/bin/python -m bench.run --cold-only     # only the cold start pairs (no warm cases, no memory)
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.metadata
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func

from bench import stats, workload
from bench.workload import PARTNER_A, HarnessError, Raw, World

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WORKERS = 8
HISTORY_UPDATES = 160  # activities 0-160: three archived rows of 50, the rest in the referral row

Timer = Callable[[int], float]


@dataclass(frozen=True)
class Plan:
    rounds: int = 5
    get: int = 200
    not_modified: int = 200
    post_status: int = 60
    post_details: int = 100
    listing: int = 30  # a page costs ~50 storage calls: fewer samples keep the run short
    concurrent_seconds: float = 2.5
    # One fresh process varies by tens of ms here: with 11 pairs the median moved by +-30 ms from
    # run to run of the same tree. 31 narrow it; its 95% interval is printed with the figure.
    cold_runs: int = 31
    memory_requests: int = 1200
    pool: int = 0  # computed: enough referrals for every status change (two per referral)

    def sized(self) -> Plan:
        needed = (self.rounds * self.post_status + 1) // 2 + 8  # + the counted (untimed) status changes
        return Plan(**{**self.__dict__, "pool": max(needed, 2 * WORKERS * 4, 60)})


FULL = Plan()
QUICK = Plan(rounds=3, get=60, not_modified=60, post_status=20, post_details=30, listing=10,
             concurrent_seconds=1.0, cold_runs=3, memory_requests=300)


class StorageActivity:
    """Watches this process's storage traffic: counts the HTTP requests of every Table client (the
    handlers' and the raw one), and tracks work the store hands to its thread pool, so that `settle`
    can wait for a handler's background writes (index cleanup) before the next timed call starts:
    they stay off the handler's latency, but not off its CPU, and never land on the raw side's."""

    def __init__(self) -> None:
        self.sent = 0
        self._lock = threading.Lock()
        self._pending: set[Future[Any]] = set()
        self.tracks_background = False

    def install(self) -> None:
        from requests.adapters import HTTPAdapter

        from shared import store

        original_send = HTTPAdapter.send

        def send(adapter: HTTPAdapter, request: Any, *args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.sent += 1
            return original_send(adapter, request, *args, **kwargs)

        HTTPAdapter.send = send  # type: ignore[method-assign,assignment]
        for name in ("_executor", "_cleanup_executor"):
            executor = getattr(store, name, None)
            if isinstance(executor, ThreadPoolExecutor):
                executor.submit = self._tracked(executor.submit)  # type: ignore[method-assign]
                self.tracks_background = True

    def _tracked(self, original_submit: Callable[..., Future[Any]]) -> Callable[..., Future[Any]]:
        def submit(function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
            future = original_submit(function, *args, **kwargs)
            with self._lock:
                self._pending.add(future)
            return future

        return submit

    def settle(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, set()
        if pending:
            wait(pending, timeout=10)


@dataclass
class Bench:
    """The in-process state shared by the cases: handlers, the raw client, the pool and its ETags."""

    world: World
    plan: Plan
    token: str
    raw: Raw
    get_main: Callable[[func.HttpRequest], func.HttpResponse]
    post_main: Callable[[func.HttpRequest], func.HttpResponse]
    ids: list[str] = field(default_factory=list)
    etags: dict[str, str] = field(default_factory=dict)
    status_queue: Iterator[tuple[str, str]] = field(default_factory=lambda: iter(()))
    activity: StorageActivity = field(default_factory=lambda: StorageActivity())
    settle_each_call: bool = True  # off while concurrent clients run
    post_number: int = 0
    history_id: str = ""  # a referral with HISTORY_UPDATES activities
    delta_link: str = ""  # PARTNER_A's deltaLink from just after seeding (top 50)
    delta_floor_key: str = ""  # the index position that delta reads from (its moment minus DELTA_MARGIN)
    runtime: Any = None  # the app loaded into azure-functions-runtime-v1 (`bench.workload.RuntimeApp`)

    # ------------------------------------------------------------------------------ handler operations

    def call(self, main: Callable[[func.HttpRequest], func.HttpResponse], request: func.HttpRequest,
             expect: int) -> tuple[float, func.HttpResponse]:
        started = time.perf_counter()
        response = main(request)
        elapsed = time.perf_counter() - started
        if self.settle_each_call:
            self.activity.settle()  # background work: on this call's CPU, not its latency
        if response.status_code != expect:
            raise HarnessError(
                f"{request.method} {request.url} answered {response.status_code}, expected {expect}: "
                f"{response.get_body()[:400]!r}"
            )
        return elapsed, response

    def handler_post(self, referral_id: str, patch: dict[str, Any], if_match: bool, token: str | None = None,
                     expect: int = 200) -> float:
        request = workload.post_request(token or self.token, referral_id, patch,
                                        self.etags[referral_id] if if_match else None)
        elapsed, response = self.call(self.post_main, request, expect)
        self.etags[referral_id] = response.headers["ETag"]
        return elapsed

    def details_patch(self) -> dict[str, Any]:
        self.post_number += 1
        return {"details": {"notes": f"Call {self.post_number}: pilot scope agreed, quote requested by Friday."}}

    # ------------------------------------------------------------------------------------------ seeding

    def seed_one(self, index: int, tokens: dict[str, str]) -> str:
        """A referral of the pool: created, then changed as `workload.seed_changes` says."""
        referral_id = workload.new_referral_id()
        self.etags[referral_id] = ""
        self.handler_post(referral_id, workload.referral_document(index), False, tokens[PARTNER_A], 201)
        for tenant, patch in workload.seed_changes(index):
            self.handler_post(referral_id, patch, False, tokens[tenant])
        return referral_id

    def seed_tokens(self) -> dict[str, str]:
        return {tenant: self.world.token(tenant) for tenant in (workload.PARTNER_A, workload.PARTNER_B)}

    def seed(self) -> None:
        tokens = self.seed_tokens()

        def one(index: int) -> str:
            referral_id = self.seed_one(index, tokens)
            self.raw.copy_for_raw(referral_id)
            return referral_id

        with ThreadPoolExecutor(4) as pool:
            self.ids = list(pool.map(one, range(self.plan.pool)))
        self.status_queue = self.status_jobs()
        self.seed_history()
        self.seed_delta_link()

    def seed_cold(self) -> None:
        """Only the referral the cold start reads, made as `seed` makes every referral of the pool."""
        self.ids = [self.seed_one(0, self.seed_tokens())]

    def seed_history(self) -> None:
        """A referral whose history spans archived rows, for the history page."""
        self.history_id = workload.new_referral_id()
        self.etags[self.history_id] = ""
        self.handler_post(self.history_id, workload.referral_document(0), False, expect=201)
        for _ in range(HISTORY_UPDATES):
            self.handler_post(self.history_id, self.details_patch(), False)

    def seed_delta_link(self) -> None:
        """A full listing of PARTNER_A, followed to its last page, for that page's deltaLink."""
        from shared.service import DELTA_MARGIN
        from shared.store import oldest_key_bound
        from shared.timestamps import format_utc

        link = f"{workload.URL}?top=50"
        started = datetime.now(UTC)
        for _ in range(100):
            _, response = self.call(self.get_main, workload.link_request(self.token, link), 200)
            page = json.loads(response.get_body())
            if "deltaLink" in page:
                self.delta_link = page["deltaLink"]
                self.delta_floor_key = oldest_key_bound(format_utc(started - DELTA_MARGIN))
                return
            link = page["nextLink"]
        raise HarnessError("the seeded listing did not end within 100 pages")

    def status_jobs(self) -> Iterator[tuple[str, str]]:
        """Each referral moves Pending -> Active, later Active -> Won: the only status changes allowed."""
        for target in ("Active", "Won"):
            for referral_id in self.ids:
                yield referral_id, target
        raise HarnessError("the pool ran out of status changes; it is sized from the plan")


# ------------------------------------------------------------------------------------------------ cases


def paired_round(
    samples: int, round_number: int, handler: Timer, raw: Timer
) -> tuple[list[float], list[float], float, float]:
    """`samples` pairs; which side goes first alternates pair by pair (and round by round).

    Returns both sides' latencies and their mean client CPU per call (`time.process_time`: every thread
    of this process, so it includes the store's fan-out threads and excludes Azurite's own CPU)."""
    handler_times: list[float] = []
    raw_times: list[float] = []
    cpu = {"handler": 0.0, "raw": 0.0}

    def one(side: str, timer: Timer, times: list[float], index: int) -> None:
        started = time.process_time()
        times.append(timer(index))
        cpu[side] += time.process_time() - started

    for index in range(samples):
        if (index + round_number) % 2 == 0:
            one("handler", handler, handler_times, index)
            one("raw", raw, raw_times, index)
        else:
            one("raw", raw, raw_times, index)
            one("handler", handler, handler_times, index)
    return handler_times, raw_times, cpu["handler"] / samples, cpu["raw"] / samples


def timed(operation: Callable[[], object]) -> float:
    started = time.perf_counter()
    operation()
    return time.perf_counter() - started


@dataclass
class Case:
    name: str
    key: str
    samples: int
    handler: Callable[[Bench, int], Timer]  # (bench, round) -> timer of one handler call
    raw: Callable[[Bench, int], Timer]
    target: float | None  # maximum handler/raw p50 ratio


def get_case(bench: Bench, round_number: int) -> Timer:
    def run(index: int) -> float:
        referral_id = bench.ids[(index + round_number * 7) % len(bench.ids)]
        return bench.call(bench.get_main, workload.get_request(bench.token, referral_id), 200)[0]

    return run


def raw_get_case(bench: Bench, round_number: int) -> Timer:
    def run(index: int) -> float:
        referral_id = bench.ids[(index + round_number * 7) % len(bench.ids)]
        return timed(lambda: bench.raw.get(referral_id))

    return run


def runtime_get_case(bench: Bench, round_number: int) -> Timer:
    """The same GET through azure-functions-runtime-v1, as the proxy worker invokes it in Azure."""

    def run(index: int) -> float:
        referral_id = bench.ids[(index + round_number * 7) % len(bench.ids)]
        return timed(lambda: bench.runtime.get(bench.token, referral_id))

    return run


def direct_get_case(bench: Bench, round_number: int) -> Timer:
    """The baseline of `runtime_get_case`: `main` called directly."""

    def run(index: int) -> float:
        referral_id = bench.ids[(index + round_number * 7) % len(bench.ids)]
        return timed(lambda: bench.get_main(workload.get_request(bench.token, referral_id)))

    return run


def not_modified_case(bench: Bench, round_number: int) -> Timer:
    def run(index: int) -> float:
        referral_id = bench.ids[(index + round_number * 7) % len(bench.ids)]
        request = workload.get_request(bench.token, referral_id, bench.etags[referral_id])
        return bench.call(bench.get_main, request, 304)[0]

    return run


def post_status_case(bench: Bench, round_number: int) -> Timer:
    def run(index: int) -> float:
        referral_id, target = next(bench.status_queue)
        return bench.handler_post(referral_id, {"status": target}, if_match=False)

    return run


def post_details_case(bench: Bench, round_number: int) -> Timer:
    def run(index: int) -> float:
        referral_id = bench.ids[(index + round_number * 11) % len(bench.ids)]
        return bench.handler_post(referral_id, bench.details_patch(), if_match=True)

    return run


def raw_post_case(bench: Bench, round_number: int) -> Timer:
    def run(index: int) -> float:
        referral_id = bench.ids[(index + round_number * 11) % len(bench.ids)]
        return timed(lambda: bench.raw.post(workload.RAW_PREFIX + referral_id))

    return run


def list_case(bench: Bench, round_number: int) -> Timer:
    def run(index: int) -> float:
        return bench.call(bench.get_main, workload.list_request(bench.token, 50), 200)[0]

    return run


def raw_list_case(bench: Bench, round_number: int) -> Timer:
    def run(index: int) -> float:
        return timed(lambda: bench.raw.verified_page(PARTNER_A, 50))

    return run


def history_case(bench: Bench, round_number: int) -> Timer:
    def run(index: int) -> float:
        return bench.call(bench.get_main, workload.history_request(bench.token, bench.history_id, 100), 200)[0]

    return run


def raw_history_case(bench: Bench, round_number: int) -> Timer:
    def run(index: int) -> float:
        return timed(lambda: bench.raw.history_page(bench.history_id))

    return run


def delta_case(bench: Bench, round_number: int) -> Timer:
    def run(index: int) -> float:
        return bench.call(bench.get_main, workload.link_request(bench.token, bench.delta_link), 200)[0]

    return run


def raw_delta_case(bench: Bench, round_number: int) -> Timer:
    def run(index: int) -> float:
        return timed(lambda: bench.raw.verified_page(PARTNER_A, 50, bench.delta_floor_key))

    return run


def concurrent_round(bench: Bench, side: str, seconds: float) -> tuple[list[float], float]:
    """WORKERS threads, each on its own referrals, three GETs to one POST (If-Match), for `seconds`."""
    slices = [bench.ids[worker::WORKERS] for worker in range(WORKERS)]
    latencies: list[list[float]] = [[] for _ in range(WORKERS)]
    failures: list[BaseException] = []
    stop = threading.Event()
    ready = threading.Barrier(WORKERS + 1)
    get_requests = {referral_id: workload.get_request(bench.token, referral_id) for referral_id in bench.ids}

    def worker(number: int) -> None:
        own, times = slices[number], latencies[number]
        ready.wait()
        count = 0
        try:
            while not stop.is_set():
                referral_id = own[(count // 4) % len(own)]
                write = count % 4 == 3
                if side == "handler":
                    if write:
                        patch = {"details": {"notes": f"Concurrent note {number}-{count}."}}
                        times.append(bench.handler_post(referral_id, patch, if_match=True))
                    else:
                        times.append(bench.call(bench.get_main, get_requests[referral_id], 200)[0])
                else:
                    started = time.perf_counter()
                    if write:
                        bench.raw.post(workload.RAW_PREFIX + referral_id)
                    else:
                        bench.raw.get(referral_id)
                    times.append(time.perf_counter() - started)
                count += 1
        except BaseException as error:  # noqa: BLE001 (reported by the main thread)
            failures.append(error)
            stop.set()

    bench.settle_each_call = False
    threads = [threading.Thread(target=worker, args=(number,), daemon=True) for number in range(WORKERS)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    bench.activity.settle()  # the handlers' background writes belong to their phase
    elapsed = time.perf_counter() - started
    bench.settle_each_call = True
    if failures:
        raise HarnessError(f"a concurrent {side} client failed: {failures[0]!r}") from failures[0]
    merged = [value for times in latencies for value in times]
    return merged, len(merged) / elapsed


def storage_calls(bench: Bench, cases: list[Case], samples: int = 6) -> dict[str, dict[str, float]]:
    """Storage requests per call of each side, counted outside the timed rounds."""
    result: dict[str, dict[str, float]] = {}
    for case in cases:
        counts = {}
        for side, make in (("handler", case.handler), ("raw", case.raw)):
            timer = make(bench, 99)
            bench.activity.settle()
            before = bench.activity.sent
            for index in range(samples):
                timer(index)
            bench.activity.settle()
            counts[side] = (bench.activity.sent - before) / samples
        result[case.key] = counts
    return result


# ------------------------------------------------------------------------------------------ cold start


def child_env(world: World, **extra: str) -> dict[str, str]:
    env = {**os.environ, **world.env, "PYTHONPATH": str(workload.ROOT), **extra}
    env.pop("REFERRALS_STORAGE__tableServiceUri", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_child(mode: str, env: dict[str, str]) -> tuple[float, list[dict[str, Any]]]:
    """Start `python -m bench.child mode`; wall time from start to its first line, and all its lines."""
    with tempfile.TemporaryFile("w+") as errors:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "bench.child", mode], cwd=workload.ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=errors, text=True)
        assert process.stdout is not None
        first = process.stdout.readline()
        elapsed = time.perf_counter() - started
        rest = process.stdout.read()  # the same buffered reader: nothing read ahead is lost
        process.wait(timeout=120)
        errors.seek(0)
        error_text = errors.read()
    lines = [json.loads(line) for line in (first + rest).splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines or "error" in lines[0]:
        raise HarnessError(f"child {mode} failed ({process.returncode}): {lines[:1]} {error_text[-1500:]}")
    return elapsed, lines


def cold_start(bench: Bench) -> dict[str, Any]:
    referral_id = bench.ids[0]
    env = child_env(bench.world, BENCH_REFERRAL=referral_id, BENCH_TOKEN=bench.token)
    _, lines = run_child("modules", env)  # also compiles any missing .pyc before the timed runs
    modules = lines[-1]["modules"]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as listing:
        json.dump(modules, listing)
    env["BENCH_MODULES"] = listing.name
    try:
        run_child("raw", env)
        handler_runs: list[tuple[float, dict[str, Any]]] = []
        raw_runs: list[tuple[float, dict[str, Any]]] = []
        preloaded_runs: list[tuple[float, dict[str, Any]]] = []
        for run in range(bench.plan.cold_runs):
            order = [("handler", handler_runs), ("raw", raw_runs), ("handler-preloaded", preloaded_runs)]
            for mode, runs in order if run % 2 == 0 else reversed(order):
                elapsed, lines = run_child(mode, env)
                runs.append((elapsed, lines[0]))
    finally:
        os.unlink(listing.name)

    def summary(runs: list[tuple[float, dict[str, Any]]]) -> dict[str, float]:
        return {
            "wall_ms": statistics.median(elapsed * 1000 for elapsed, _ in runs),
            "max_ms": max(elapsed * 1000 for elapsed, _ in runs),
            "imports_ms": statistics.median(line["imports_ms"] for _, line in runs),
            "first_call_ms": statistics.median(line["first_call_ms"] for _, line in runs),
            "cpu_ms": statistics.median(line["cpu_ms"] for _, line in runs),
            "rss_kib": statistics.median(line["rss_kib"] for _, line in runs),
        }

    pairs = list(zip(handler_runs, raw_runs, strict=True))
    return {
        "runs": bench.plan.cold_runs,
        "third_party_modules": len(modules),
        "failed_raw_imports": raw_runs[0][1].get("failed_imports", 0),
        "handler": summary(handler_runs),
        "raw": summary(raw_runs),
        # Median of the differences within each interleaved pair: machine drift cancels within a pair.
        "added_ms": statistics.median((h - r) * 1000 for (h, _), (r, _) in pairs),
        "added_ms_interval": stats.median_interval([(h - r) * 1000 for (h, _), (r, _) in pairs]),
        "added_cpu_ms": statistics.median(h["cpu_ms"] - r["cpu_ms"] for (_, h), (_, r) in pairs),
        "target_added_ms": 50.0,
        # Every pair's wall ms (handler, raw): one process varies by ~100 ms here, so the spread matters.
        "pairs_ms": [[round(h * 1000, 1), round(r * 1000, 1)] for (h, _), (r, _) in pairs],
        # The same added work timed apart from the imports both sides share (a handler child that does
        # the raw child's imports first): a window of ~0.1 s instead of ~1 s, so far less of the
        # machine's noise. Not the target's definition (that is `added_ms`), a cross-check of it.
        "after_imports": {
            "handler_ms": statistics.median(line["after_imports_ms"] for _, line in preloaded_runs),
            "raw_ms": statistics.median(line["after_imports_ms"] for _, line in raw_runs),
            "added_ms": statistics.median(
                p["after_imports_ms"] - r["after_imports_ms"]
                for (_, p), (_, r) in zip(preloaded_runs, raw_runs, strict=True)
            ),
        },
    }


def peak_memory(bench: Bench) -> dict[str, Any]:
    env = child_env(bench.world, BENCH_TOKEN=bench.token, BENCH_IDS=",".join(bench.ids[:40]),
                    BENCH_REQUESTS=str(bench.plan.memory_requests))
    return {side: run_child(f"serve-{side}", env)[1][0] for side in ("handler", "raw")}


# ------------------------------------------------------------------------------------------------ main


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    azurite = json.loads((workload.ROOT / "node_modules" / "azurite" / "package.json").read_text())["version"]
    node_binary = shutil.which("node")
    node = (
        subprocess.run([node_binary, "--version"], capture_output=True, text=True, check=False).stdout.strip()
        if node_binary
        else "unknown"
    )
    packages = {name: importlib.metadata.version(name)
                for name in ("azure-functions", "azure-functions-runtime-v1", "protobuf", "azure-data-tables",
                             "azure-core", "pydantic", "PyJWT")}
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "platform": platform.platform(),
        "azurite": azurite, "node": node, "packages": packages,
    }


def open_bench(world: World, plan: Plan) -> Bench:
    world.apply_env()
    workload.configure_logging()
    import get_referral
    import update_referral
    from shared.auth import reset_validator
    from shared.settings import settings
    from shared.store import reset_store

    settings.reset()
    reset_store()
    reset_validator()
    bench = Bench(world, plan, world.token(), Raw(world.raw_table()), get_referral.main, update_referral.main)
    bench.activity.install()
    bench.runtime = workload.RuntimeApp.start()
    return bench


def warm_up(bench: Bench) -> None:
    """Connections open, the token validated once (then remembered, as on a warm instance)."""
    for referral_id in bench.ids[:10]:
        bench.call(bench.get_main, workload.get_request(bench.token, referral_id), 200)
        bench.raw.get(referral_id)
        bench.raw.get(workload.RAW_PREFIX + referral_id)


def sequential_cases(bench: Bench, listing: bool) -> list[Case]:
    plan = bench.plan
    cases = [
        Case("GET an existing referral", "get", plan.get, get_case, raw_get_case, 1.10),
        Case("GET with matching If-None-Match (304)", "get-304", plan.not_modified, not_modified_case,
             raw_get_case, 1.05),
        # A POST makes three round trips in series (index rows, the referral, then the response), where the
        # raw get + conditional update makes two: that is its floor, hence 1.5x.
        Case("POST a status change", "post-status", plan.post_status, post_status_case, raw_post_case, 1.5),
        Case("POST a details change with If-Match", "post-details", plan.post_details, post_details_case,
             raw_post_case, 1.5),
        Case("GET through the runtime vs main called directly", "runtime", plan.get, runtime_get_case,
             direct_get_case, None),
    ]
    if listing:
        # Floors: the index query and a point read of each referral it names (a listing shows only what
        # is current, so it verifies every row); for history, the referral row and its history rows.
        cases.append(Case("GET a page of 50 (listing)", "list", plan.listing, list_case, raw_list_case, None))
        cases.append(Case("GET a delta page of 50", "delta", plan.listing, delta_case, raw_delta_case, None))
        cases.append(Case("GET a history page of 100", "history", plan.listing, history_case, raw_history_case,
                          None))
    return cases


def measure(bench: Bench, log: Callable[[str], None]) -> dict[str, Any]:
    listing = workload.listing_route_present()
    notes: list[str] = []
    if not listing:
        notes.append("listing case skipped: get_referral/function.json has no {referralId?} route yet")
    elif len(bench.raw.list_page(PARTNER_A, 50)) < 50:
        notes.append("listing case skipped: the org:<tenant> partition holds fewer than 50 rows")
        listing = False
    cases = sequential_cases(bench, listing)
    handler_rounds: dict[str, list[list[float]]] = {case.key: [] for case in cases}
    raw_rounds: dict[str, list[list[float]]] = {case.key: [] for case in cases}
    cpu: dict[str, list[tuple[float, float]]] = {case.key: [] for case in cases}
    concurrent: dict[str, list[tuple[list[float], float]]] = {"handler": [], "raw": []}
    for round_number in range(bench.plan.rounds):
        started = time.perf_counter()
        order = cases if round_number % 2 == 0 else list(reversed(cases))
        for case in order:
            h, r, h_cpu, r_cpu = paired_round(case.samples, round_number, case.handler(bench, round_number),
                                              case.raw(bench, round_number))
            handler_rounds[case.key].append(h)
            raw_rounds[case.key].append(r)
            cpu[case.key].append((h_cpu, r_cpu))
        sides = ("handler", "raw") if round_number % 2 == 0 else ("raw", "handler")
        for side in sides:
            concurrent[side].append(concurrent_round(bench, side, bench.plan.concurrent_seconds))
        log(f"  round {round_number + 1}/{bench.plan.rounds} done in {time.perf_counter() - started:.1f}s")

    calls = storage_calls(bench, cases)
    rows = []
    for case in cases:
        ratio = stats.paired_ratio(handler_rounds[case.key], raw_rounds[case.key])
        rows.append({
            "case": case.name, "key": case.key,
            "handler": {**stats.side_summary(handler_rounds[case.key]),
                        "cpu_ms": statistics.median(h for h, _ in cpu[case.key]) * 1000},
            "raw": {**stats.side_summary(raw_rounds[case.key]),
                    "cpu_ms": statistics.median(r for _, r in cpu[case.key]) * 1000},
            "ratio": ratio, "target": case.target, "storage_calls": calls[case.key],
            "ratio_interval": stats.paired_ratio_interval(handler_rounds[case.key], raw_rounds[case.key]),
            "target_text": f"<= {case.target:.2f}x" if case.target else "-",
            "verdict": "-" if case.target is None else ("pass" if ratio <= case.target else "MISS"),
        })
    throughput = {side: [ops for _, ops in concurrent[side]] for side in concurrent}
    ratios = [h / r for h, r in zip(throughput["handler"], throughput["raw"], strict=True)]
    ratio = statistics.median(ratios)
    row = {
        "case": f"{WORKERS} concurrent clients, 3 GET : 1 POST, one process (throughput)", "key": "concurrent",
        "handler": {**stats.side_summary([times for times, _ in concurrent["handler"]]),
                    "ops_per_s": statistics.median(throughput["handler"])},
        "raw": {**stats.side_summary([times for times, _ in concurrent["raw"]]),
                "ops_per_s": statistics.median(throughput["raw"])},
        # No target since Flex Consumption scales Python out by instances (per-instance concurrency is a
        # setting); the figure stays in the report.
        "ratio": ratio, "target": None, "target_text": "-",
        "storage_calls": {
            side: (3 * calls["get"][side] + calls["post-details"][side]) / 4 for side in ("handler", "raw")
        },
        "verdict": "-",
    }
    rows.append(row)
    return {"rows": rows, "notes": notes}


def profile(bench: Bench, key: str, calls: int) -> None:
    cases = {case.key: case for case in sequential_cases(bench, workload.listing_route_present())}
    if key not in cases:
        raise HarnessError(f"unknown case {key!r}; one of {', '.join(cases)}")
    timer = cases[key].handler(bench, 0)
    profiler = cProfile.Profile()
    profiler.enable()
    for index in range(calls):
        timer(index)
    profiler.disable()
    for order in ("tottime", "cumulative"):
        pstats.Stats(profiler, stream=sys.stdout).strip_dirs().sort_stats(order).print_stats(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and samples")
    parser.add_argument("--profile", metavar="CASE", help="cProfile the handler of one case instead")
    parser.add_argument("--calls", type=int, default=150, help="calls to profile")
    parser.add_argument("--no-cold", action="store_true", help="skip cold start and memory")
    parser.add_argument("--cold-only", action="store_true",
                        help="only the cold start pairs: no warm cases, no memory, one seeded referral")
    parser.add_argument("--cold-pairs", type=int, metavar="N", help="cold start pairs (default 31, --quick 3)")
    parser.add_argument("--output", type=Path, help="where to write the JSON results")
    parser.add_argument("--rtt-ms", type=float, default=0.0, metavar="MS",
                        help="add this round trip to every storage call, both sides (bench.latency_proxy)")
    options = parser.parse_args()
    if options.cold_only and (options.no_cold or options.profile):
        parser.error("--cold-only measures only what --no-cold and --profile leave out")
    plan = (QUICK if options.quick or options.profile else FULL).sized()
    if options.cold_pairs:
        plan = replace(plan, cold_runs=options.cold_pairs)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    failed = False
    rtt_measured = 0.0
    world = World.start(options.rtt_ms)
    try:
        bench = open_bench(world, plan)
        if options.cold_only:
            log(f"Azurite on 127.0.0.1:{world.azurite.table_port}; seeding the one referral the cold start reads")
            bench.seed_cold()
            rtt_measured = world.added_round_trip_ms()
            result: dict[str, Any] = {"rows": [], "notes": ["--cold-only: warm cases and peak memory not measured"]}
        else:
            log(f"Azurite on 127.0.0.1:{world.azurite.table_port}; seeding {plan.pool} referrals "
                "(created, then 5 changes each, through the handlers)")
            bench.seed()
            warm_up(bench)
            rtt_measured = world.added_round_trip_ms()
            if options.profile:
                profile(bench, options.profile, options.calls)
                return 0
            log(f"measuring: {plan.rounds} rounds")
            result = measure(bench, log)
        if not options.no_cold:
            log("cold start" + ("" if options.cold_only else " and peak memory") + " (fresh interpreters)")
            try:
                result["cold_start"] = cold_start(bench)
                if not options.cold_only:
                    result["memory"] = peak_memory(bench)
            except HarnessError as error:  # keep what was measured; still a harness failure
                result["notes"].append(f"harness failure in cold start / memory: {error}")
                failed = True
    finally:
        world.stop()
    result["machine"] = machine()
    result["plan"] = plan.__dict__
    result["rtt_ms"] = options.rtt_ms
    result["rtt_measured_ms"] = rtt_measured
    result["seconds"] = time.perf_counter() - started
    result["when"] = datetime.now(UTC).isoformat(timespec="seconds")
    report(result)
    RESULTS_DIR.mkdir(exist_ok=True)
    output = options.output or RESULTS_DIR / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    output.write_text(json.dumps(result, indent=2))
    print(f"\nresults: {output}  ({result['seconds']:.0f}s)")
    return 1 if failed else 0


def report(result: dict[str, Any]) -> None:
    m = result["machine"]
    print(f"\nmachine: {m['nproc']} CPUs, {m['cpu']}, Python {m['python']}, Azurite {m['azurite']} (node {m['node']})")
    if result.get("rtt_ms"):
        print(f"storage calls of both sides through bench.latency_proxy: {result['rtt_ms']:g} ms a round trip asked, "
              f"{result['rtt_measured_ms']:.2f} ms measured (a small query through it less the same to Azurite)")
    if result["rows"]:
        print(f"plan: {result['plan']['rounds']} rounds, medians over rounds; latencies in ms\n")
        print(stats.render_table(result["rows"]))
    for note in result["notes"]:
        print(f"note: {note}")
    verdicts = [(row["case"], row["verdict"]) for row in result["rows"] if row["verdict"] != "-"]
    cold = result.get("cold_start")
    if cold:
        h, r = cold["handler"], cold["raw"]
        added = cold["added_ms"]
        low, high = cold["added_ms_interval"]
        verdict = "pass" if added <= cold["target_added_ms"] else "MISS"
        verdicts.append(("cold start", verdict))
        print(
            f"\ncold start (median of {cold['runs']}, process start -> first response): handler {h['wall_ms']:.0f} ms "
            f"(imports {h['imports_ms']:.0f} + first GET {h['first_call_ms']:.0f}), raw {r['wall_ms']:.0f} ms "
            f"(imports of the same {cold['third_party_modules']} third-party modules {r['imports_ms']:.0f} + "
            f"get_entity {r['first_call_ms']:.0f}); our code adds {added:.0f} ms wall "
            f"(95% interval of the median {low:.0f} to {high:.0f} ms), {cold['added_cpu_ms']:.0f} ms CPU "
            f"(median of paired differences; target <= 50 ms): {verdict}"
        )
        after = cold.get("after_imports")
        if after:
            print(
                f"  cross-check, timed after the imports both share: handler (runtime start, loading the "
                f"functions, first GET) {after['handler_ms']:.0f} ms, raw (client, get_entity) "
                f"{after['raw_ms']:.0f} ms; added {after['added_ms']:.0f} ms (median of paired differences)"
            )
    memory = result.get("memory")
    if memory:
        h, r = memory["handler"], memory["raw"]
        print(
            f"peak memory serving {h['requests']} requests (3 GET : 1 POST): handler process "
            f"{h['peak_rss_kib'] / 1024:.1f} MiB (after imports {h['after_import_rss_kib'] / 1024:.1f}), "
            f"raw process {r['peak_rss_kib'] / 1024:.1f} MiB"
        )
    print("\ntargets: " + ", ".join(f"{name}: {verdict}" for name, verdict in verdicts))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HarnessError as error:
        print(f"bench harness failed: {error}", file=sys.stderr)
        sys.exit(1)
