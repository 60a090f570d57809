"""What a POST's storage calls cost, design by design, measured raw (no handler code at all).

    .venv/bin/python -m bench.designs              # on loopback
    .venv/bin/python -m bench.designs --rtt-ms 3   # with a simulated 3 ms storage round trip

The handler's POST ratio is bounded below by the storage calls its design makes. This measures the
floor of each write design with the same SDK client, entity and interleaving as `bench.run`, so a
design choice in `shared.store` / `shared.service` can be judged before it is coded:

- `2 calls`: read + conditional replace (the issue's raw baseline; what the referral row alone needs)
- `10 calls (index, cleanup in background)`: + an index row per organization and the admins' index,
  written before the replace, and the previous version's rows deleted after it, off the response
- `10 calls (index, cleanup awaited)`: the same with the deletes awaited
- `6 calls (index, no cleanup)`: index rows written before, previous rows left for listings to repair
- `6 calls (index after, background)`: replace first, index rows written afterwards off the response
- `3 calls (one index row)`: read, one index row, conditional replace: three round trips in series,
  the floor the issues name, as if a referral had a single index row to write (none has: each has
  its organizations' and an admins' shard's)
- `4 calls (index in one transaction)`: every organization's row in one partition (a layout that
  would need a partner listing to merge shards, as the admins' does), written in one entity group
  transaction before the replace, and the previous rows deleted in one transaction off the response
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from azure.core import MatchConditions
from azure.data.tables import UpdateMode

from bench import run, stats, workload
from shared.timestamps import utc_now

ROUNDS = 5
SAMPLES = 40
ORGANIZATIONS = [workload.PARTNER_A, workload.PARTNER_B, workload.OTHER_ORG, "all"]


class Designs:
    def __init__(self, bench: run.Bench) -> None:
        self.raw = bench.raw
        self.table = bench.raw.table
        self.pool = ThreadPoolExecutor(16)
        self.background: list[Future[Any]] = []
        self.counter = 0

    def _rows(self, referral_id: str) -> list[dict[str, Any]]:
        self.counter += 1
        key = f"{time.time_ns() // 1000:017d}:{referral_id}"
        return [
            {"PartitionKey": workload.index_partition(org, referral_id), "RowKey": key, "ReferralId": referral_id,
             "Version": f'"v{self.counter}"', "UpdatedDate": utc_now(), "Status": "Active",
             "ReferralSource": "PartnerLed"}
            for org in ORGANIZATIONS
        ]

    def _put(self, rows: list[dict[str, Any]]) -> None:
        list(self.pool.map(lambda row: self.table.upsert_entity(row, mode=UpdateMode.REPLACE), rows))

    def _delete(self, rows: list[dict[str, Any]], awaited: bool) -> None:
        futures = [self.pool.submit(self.table.delete_entity, row["PartitionKey"], row["RowKey"]) for row in rows]
        if awaited:
            wait(futures)
        else:
            self.background.extend(futures)

    def _put_in_one_transaction(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        shared = [{**row, "PartitionKey": "index:design", "RowKey": f"{number}:{row['RowKey']}"}
                  for number, row in enumerate(rows)]
        self.table.submit_transaction([("upsert", row, {"mode": UpdateMode.REPLACE}) for row in shared])
        return shared

    def _delete_in_one_transaction(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.background.append(self.pool.submit(self.table.submit_transaction, [("delete", row) for row in rows]))

    def _replace(self, partition: str) -> None:
        self.raw.post(partition)

    def settle(self) -> None:
        wait(self.background)
        self.background.clear()

    def operations(self, previous: dict[str, list[dict[str, Any]]]) -> dict[str, Callable[[str], None]]:
        def index_then_cleanup(awaited: bool) -> Callable[[str], None]:
            def run_once(referral_id: str) -> None:
                rows = self._rows(referral_id)
                entity = self.table.get_entity(workload.RAW_PREFIX + referral_id, workload.REFERRAL_ROW)
                self._put(rows)
                self._conditional_replace(entity)
                self._delete(previous.get(referral_id, []), awaited)
                previous[referral_id] = rows

            return run_once

        def index_no_cleanup(referral_id: str) -> None:
            entity = self.table.get_entity(workload.RAW_PREFIX + referral_id, workload.REFERRAL_ROW)
            self._put(self._rows(referral_id))
            self._conditional_replace(entity)

        def index_after(referral_id: str) -> None:
            entity = self.table.get_entity(workload.RAW_PREFIX + referral_id, workload.REFERRAL_ROW)
            self._conditional_replace(entity)
            rows = self._rows(referral_id)
            self.background.extend(
                self.pool.submit(self.table.upsert_entity, row, mode=UpdateMode.REPLACE) for row in rows
            )

        def one_index_row(referral_id: str) -> None:
            entity = self.table.get_entity(workload.RAW_PREFIX + referral_id, workload.REFERRAL_ROW)
            self._put(self._rows(referral_id)[:1])
            self._conditional_replace(entity)

        def index_in_one_transaction(referral_id: str) -> None:
            entity = self.table.get_entity(workload.RAW_PREFIX + referral_id, workload.REFERRAL_ROW)
            rows = self._put_in_one_transaction(self._rows(referral_id))
            self._conditional_replace(entity)
            self._delete_in_one_transaction(previous.get(f"transaction:{referral_id}", []))
            previous[f"transaction:{referral_id}"] = rows

        return {
            "2 calls: read + conditional replace": lambda referral_id: self._replace(
                workload.RAW_PREFIX + referral_id
            ),
            "10 calls: index before, cleanup in background": index_then_cleanup(False),
            "10 calls: index before, cleanup awaited": index_then_cleanup(True),
            "6 calls: index before, no cleanup": index_no_cleanup,
            "6 calls: index after, in background": index_after,
            "3 calls: read, one index row, replace (the named floor)": one_index_row,
            "4 calls: index in one transaction, cleanup in one": index_in_one_transaction,
        }

    def _conditional_replace(self, entity: Any) -> None:
        updated = dict(entity)
        updated["Version"] = f'"r{self.counter}"'
        updated["UpdatedDate"] = utc_now()
        self.table.update_entity(updated, mode=UpdateMode.REPLACE, etag=entity.metadata["etag"],
                                 match_condition=MatchConditions.IfNotModified)


def main() -> int:
    parser = argparse.ArgumentParser(description="POST storage designs, measured raw")
    parser.add_argument("--rtt-ms", type=float, default=0.0, metavar="MS",
                        help="add this round trip to every storage call (bench.latency_proxy)")
    world = workload.World.start(parser.parse_args().rtt_ms)
    try:
        plan = run.Plan(rounds=1, post_status=0, pool=24)
        bench = run.open_bench(world, plan)
        bench.seed()
        run.warm_up(bench)
        designs = Designs(bench)
        operations = designs.operations({})
        latencies: dict[str, list[list[float]]] = {name: [] for name in operations}
        cpu: dict[str, list[float]] = {name: [] for name in operations}
        for round_number in range(ROUNDS):
            names = list(operations)
            for index in range(SAMPLES):
                for name in names if (index + round_number) % 2 == 0 else reversed(names):
                    referral_id = bench.ids[index % len(bench.ids)]
                    started_cpu, started = time.process_time(), time.perf_counter()
                    operations[name](referral_id)
                    elapsed = time.perf_counter() - started
                    designs.settle()
                    if index == 0:
                        latencies[name].append([])
                        cpu[name].append(0.0)
                    latencies[name][-1].append(elapsed)
                    cpu[name][-1] += time.process_time() - started_cpu
        base = "2 calls: read + conditional replace"
        print("| POST storage design (raw, no handler code) | p50 ms | p99 ms | client CPU ms/op | vs 2 calls (p50) |")
        print("|---|---|---|---|---|")
        for name in operations:
            summary = stats.side_summary(latencies[name])
            ratio = stats.paired_ratio(latencies[name], latencies[base])
            cpu_ms = statistics.median(cpu[name]) / SAMPLES * 1000
            print(f"| {name} | {summary['p50_ms']:.2f} | {summary['p99_ms']:.2f} | {cpu_ms:.2f} | {ratio:.2f}x |")
    finally:
        world.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
