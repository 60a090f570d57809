"""`bench.latency_proxy`, the round trip `make bench ARGS=--rtt-ms N` puts between both sides and
Azurite: every call through it arrives intact and in order, and waits at least the round trip asked."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from azure.data.tables import TableClient, UpdateMode

from bench import latency_proxy
from scripts.azurite import Azurite, table_connection_string

RTT_MS = 40  # far above loopback's own (~1 ms), so the hold is what a call's time is made of


@pytest.fixture(scope="module")
def proxied_table(azurite: Azurite) -> Iterator[TableClient]:
    proxy, port = latency_proxy.start(azurite.table_port, RTT_MS)
    try:
        table = TableClient.from_connection_string(table_connection_string(port), "LatencyProxy")
        table.create_table()
        yield table
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)


def test_every_call_through_the_proxy_waits_at_least_its_round_trip(proxied_table: TableClient) -> None:
    for number in range(5):
        started = time.perf_counter()
        proxied_table.upsert_entity({"PartitionKey": "p", "RowKey": f"r{number}", "Value": number})
        assert time.perf_counter() - started >= RTT_MS / 1000


def test_what_crosses_the_proxy_arrives_whole_and_in_order(proxied_table: TableClient) -> None:
    # Bodies of several socket reads each way: chunks held one by one must not be reordered or dropped.
    parts = {f"Part{index}": os.urandom(60_000) for index in range(4)}
    proxied_table.upsert_entity({"PartitionKey": "p", "RowKey": "large", **parts}, mode=UpdateMode.REPLACE)
    stored = proxied_table.get_entity("p", "large")
    assert {name: bytes(stored[name]) for name in parts} == parts
