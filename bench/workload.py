"""The benchmark's world: one Azurite, a signing key, realistic referrals, requests as the host builds
them, and the raw azure-data-tables calls the handlers are compared with.

The raw side is the best the SDK can do with the same data: one reused `TableClient`, the very entity
the handler reads (GET), or a copy of it in its own partition that it reads and conditionally
replaces with one changed property and one more activity (POST), so both sides move the same bytes.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.core import MatchConditions
from azure.data.tables import TableClient, UpdateMode

from bench import latency_proxy
from scripts.azurite import Azurite, table_connection_string
from scripts.dev_tokens import DEV_AUDIENCE, DEV_HOME_TENANT, DEV_PARTNER_TENANTS, SigningKey
from scripts.host_http import HostRequest, HostResponse, header_map
from scripts.runtime_driver import LoadedFunction, RuntimeDriver
from shared.timestamps import utc_now

ROOT = Path(__file__).resolve().parent.parent
TABLE = "Referrals"
HOME = DEV_HOME_TENANT
PARTNER_A, PARTNER_B = DEV_PARTNER_TENANTS
# A participant organization that never calls; it is only named in referrals. Onboarded (in
# AUTH_ALLOWED_TENANTS), since invitations go only to onboarded organizations.
OTHER_ORG = "55555555-5555-4555-8555-555555555555"
REFERRAL_ROW = "referral"
RAW_PREFIX = "raw-"
URL = "http://localhost:7071/api/v1/referrals"


def index_partition(organization: str, referral_id: str = "") -> str:
    """The partition of an organization's listing index that holds `referral_id`, as the store names it."""
    from shared import store

    return str(store.index_partition(organization, referral_id))


class HarnessError(Exception):
    """The harness itself failed (an unexpected status, a missing entity): the run is not a measurement."""


def listing_route_present() -> bool:
    return "{referralId?}" in (ROOT / "get_referral" / "function.json").read_text()


def configure_logging() -> None:
    """As on the Functions host: the app's own loggers at Information (host.json "Function"), the rest at
    Warning (host.json "default"). Records are formatted, as the worker does before shipping them, then
    dropped, so each request pays for its log line without the terminal paying for printing it."""

    class FormatAndDrop(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            self.format(record)

    handler = FormatAndDrop()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("referrals").setLevel(logging.INFO)


@dataclass
class World:
    azurite: Azurite
    key: SigningKey
    jwks_path: Path
    workdir: tempfile.TemporaryDirectory[str]
    env: dict[str, str] = field(default_factory=dict)
    # `bench.latency_proxy` between both sides and Azurite, when a round trip is simulated (`--rtt-ms`).
    latency_proxy: subprocess.Popen[str] | None = None

    @classmethod
    def start(cls, rtt_ms: float = 0.0) -> World:
        workdir = tempfile.TemporaryDirectory(prefix="referrals-bench-")
        key = SigningKey.generate()
        jwks_path = key.write(Path(workdir.name))
        azurite = Azurite.start_table()
        proxy, port = None, azurite.table_port
        if rtt_ms:
            proxy, port = latency_proxy.start(azurite.table_port, rtt_ms)
        env = {
            "REFERRALS_STORAGE": table_connection_string(port),
            "REFERRALS_TABLE": TABLE,
            "AUTH_AUDIENCE": DEV_AUDIENCE,
            "AUTH_TENANT_ID": HOME,
            "AUTH_ALLOWED_TENANTS": f"{PARTNER_A},{PARTNER_B},{OTHER_ORG}",
            "AUTH_JWKS_URI": jwks_path.as_uri(),
        }
        return cls(azurite, key, jwks_path, workdir, env, proxy)

    def apply_env(self) -> None:
        os.environ.update(self.env)
        os.environ.pop("REFERRALS_STORAGE__tableServiceUri", None)

    def token(self, tenant: str = PARTNER_A) -> str:
        """A token valid for an hour, reused for every call as a CRM does."""
        return self.key.token(tenant, roles=["Referrals.ReadWrite"], lifetime_seconds=3600)

    def raw_table(self) -> TableClient:
        """The best the SDK does: one client for the run, its own pool (10 connections: enough for the 8
        clients), and no per-request proxy lookup in the environment (`use_env_settings=False`: with
        the default, requests scans os.environ on every call, about 0.2 ms of CPU; see
        docs/benchmarks.md)."""
        return TableClient.from_connection_string(self.env["REFERRALS_STORAGE"], TABLE, use_env_settings=False)

    def added_round_trip_ms(self, calls: int = 60) -> float:
        """What the latency proxy adds to a storage call, measured after seeding: the median of one
        small query through it, less the same query straight to Azurite, the two alternating."""
        if self.latency_proxy is None:
            return 0.0
        sides = [
            TableClient.from_connection_string(self.azurite.connection_string, TABLE, use_env_settings=False),
            self.raw_table(),
        ]
        times: list[list[float]] = [[], []]
        for index in range(2 * calls):
            side = (index + index // 2) % 2  # direct, proxied, proxied, direct, ...
            started = time.perf_counter()
            list(sides[side].query_entities("PartitionKey eq 'none'"))
            times[side].append(time.perf_counter() - started)
        return (statistics.median(times[1]) - statistics.median(times[0])) * 1000

    def stop(self) -> None:
        if self.latency_proxy is not None:
            self.latency_proxy.terminate()
            self.latency_proxy.wait(timeout=10)
        self.azurite.stop()
        self.workdir.cleanup()


# ---------------------------------------------------------------------------------------------- requests


def get_request(token: str, referral_id: str, if_none_match: str | None = None) -> func.HttpRequest:
    headers = {"Authorization": f"Bearer {token}", "x-ms-client-request-id": "bench-get"}
    if if_none_match:
        headers["If-None-Match"] = if_none_match
    return func.HttpRequest(
        method="GET", url=f"{URL}/{referral_id}", headers=headers, params={},
        route_params={"referralId": referral_id}, body=b"",
    )


def post_request(token: str, referral_id: str, patch: dict[str, Any], if_match: str | None = None) -> func.HttpRequest:
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "x-ms-client-request-id": "bench-post",
    }
    if if_match:
        headers["If-Match"] = if_match
    return func.HttpRequest(
        method="POST", url=f"{URL}/{referral_id}", headers=headers, params={},
        route_params={"referralId": referral_id}, body=json.dumps(patch).encode(),
    )


@dataclass
class RuntimeApp:
    """The function folders loaded into azure-functions-runtime-v1 in this process, invoked as the proxy
    worker invokes them: what `make run` and Azure run, without the socket."""

    driver: RuntimeDriver
    get_function: LoadedFunction

    @classmethod
    def start(cls) -> RuntimeApp:
        driver = RuntimeDriver(ROOT)
        functions = driver.start(os.environ)
        return cls(driver, functions["get_referral"])

    def get(self, token: str, referral_id: str) -> HostResponse:
        headers = {"Authorization": f"Bearer {token}", "x-ms-client-request-id": "bench-get"}
        request = HostRequest(
            method="GET", url=f"{URL}/{referral_id}", headers=header_map(headers.items()), query={},
            route_params={"referralId": referral_id}, body=None,
        )
        response = self.driver.invoke_http(self.get_function, request, timeout=30)
        if response.status != 200:
            raise HarnessError(f"GET {referral_id} through the runtime answered {response.status}")
        return response


def list_request(token: str, top: int) -> func.HttpRequest:
    return link_request(token, f"{URL}?top={top}")


def link_request(token: str, url: str) -> func.HttpRequest:
    """A GET of a listing URL (a first page, a nextLink or a deltaLink): the handler reads the URL's query."""
    return func.HttpRequest(
        method="GET", url=url, headers={"Authorization": f"Bearer {token}"}, params={}, route_params={}, body=b"",
    )


def history_request(token: str, referral_id: str, top: int) -> func.HttpRequest:
    return func.HttpRequest(
        method="GET", url=f"{URL}/{referral_id}/activities?top={top}", headers={"Authorization": f"Bearer {token}"},
        params={}, route_params={"referralId": referral_id, "subresource": "activities"}, body=b"",
    )


# --------------------------------------------------------------------------------------------- referrals


def referral_document(index: int) -> dict[str, Any]:
    """A referral as a CRM sends it: customer, requirements, deal details, two invited organizations."""
    return {
        "referralSource": "PartnerLed",
        "customerProfile": {
            "id": f"crm-{index:06d}",
            "name": f"Contoso Manufacturing {index} GmbH",
            "address": {
                "addressLine1": f"Hauptstraße {index % 200 + 1}",
                "city": "München",
                "postalCode": f"{80000 + index % 999:05d}",
                "country": "DE",
            },
            "contact": {
                "firstName": "Adelheid",
                "lastName": "Müller",
                "email": f"a.mueller{index}@contoso-manufacturing.com",
                "phoneNumber": "+49 89 1234 5678",
            },
        },
        "customerRequirements": {
            "industries": ["Manufacturing", "Automotive"],
            "products": ["Dynamics 365 Supply Chain", "Azure IoT Hub"],
            "services": ["Migration", "Managed services"],
            "solutions": "Predictive maintenance on the shop floor, integrated with the existing ERP. " * 3,
            "customerNeed": (
                "Unplanned downtime of the press line costs about 40 hours a quarter; the customer wants "
                "sensor data in one place and alerts before a failure, rolled out to three plants. " * 3
            ),
        },
        "details": {
            "notes": "First call went well; technical deep dive scheduled with the plant IT team.",
            "dealValue": 250_000 + index,
            "currency": "EUR",
            "closingDate": "2026-06-30",
        },
        "additionalInformation": "Budget approved for FY26; procurement requires two quotes.",
        # An invitation carries no users: B sets its own (seed_changes).
        "participants": [{"organizationId": PARTNER_B}, {"organizationId": OTHER_ORG}],
    }


def seed_changes(index: int) -> list[tuple[str, dict[str, Any]]]:
    """A handful of changes after creation, by both organizations: (tenant, patch)."""
    return [
        (PARTNER_B, {"participants": [{"organizationId": PARTNER_B, "status": "Accepted"}]}),
        (PARTNER_A, {"details": {"notes": "Deep dive done; the customer asks for a pilot in one plant."}}),
        (PARTNER_B, {"customerRequirements": {"services": ["Migration", "Managed services", "Training"]}}),
        (PARTNER_A, {"details": {"dealValue": 310_000 + index}}),
        (PARTNER_B, {"participants": [{"organizationId": PARTNER_B, "users": [
            {"firstName": "Jan", "lastName": "Kowalski", "email": "jan.kowalski@fabrikam.com"},
            {"firstName": "Eva", "lastName": "Novak", "email": "eva.novak@fabrikam.com",
             "phoneNumber": "+48 22 555 0101"},
        ]}]}),
    ]


def new_referral_id() -> str:
    return f"bench-{secrets.token_hex(8)}"


# ---------------------------------------------------------------------------------------------- raw side


class Raw:
    """The raw azure-data-tables calls: what a handler cannot avoid, and nothing else."""

    def __init__(self, table: TableClient) -> None:
        self.table = table
        self.readers = ThreadPoolExecutor(8)
        self.activity = json.dumps(
            {"date": utc_now(), "organizationId": PARTNER_A, "action": "Updated", "toStatus": "Active",
             "changedProperties": ["details.notes"], "fromStatus": "Active"},
            separators=(",", ":"),
        )

    def get(self, partition: str) -> Any:
        return self.table.get_entity(partition, REFERRAL_ROW)

    def post(self, partition: str) -> None:
        """Read, then replace the entity if unchanged: a new version, one more activity in the body."""
        entity = self.table.get_entity(partition, REFERRAL_ROW)
        updated = {name: value for name, value in entity.items() if not name.startswith("Body")}
        body = b"".join(entity[f"Body{index}"] for index in range(entity["BodyParts"]))
        body = body[:-2] + b"," + self.activity.encode() + b"]}"  # the body ends with its activities
        size = 64_000  # UTF-8 in binary properties of at most 64 KiB, as the store keeps it
        parts = [body[start : start + size] for start in range(0, len(body), size)]
        updated["BodyParts"] = len(parts)
        updated.update({f"Body{index}": part for index, part in enumerate(parts)})
        updated["Version"] = f'"{secrets.token_urlsafe(16)}"'
        updated["UpdatedDate"] = utc_now()
        self.table.update_entity(
            updated, mode=UpdateMode.REPLACE, etag=entity.metadata["etag"],
            match_condition=MatchConditions.IfNotModified,
        )

    def list_page(self, tenant: str, top: int, from_key: str = "") -> list[Any]:
        """One range query of an organization's index: `top` rows from `from_key` on."""
        pages = self.table.query_entities(
            "PartitionKey eq @pk and RowKey ge @from", parameters={"pk": index_partition(tenant), "from": from_key},
            results_per_page=top,
        ).by_page()
        return list(next(pages, []))

    def verified_page(self, tenant: str, top: int, from_key: str = "") -> list[Any]:
        """The floor of a listing page that shows only what is current: the index query, then a point read
        of each referral it names, 8 at a time (as the store fans out)."""
        rows = self.list_page(tenant, top, from_key)
        return list(self.readers.map(lambda row: self.table.get_entity(row["ReferralId"], REFERRAL_ROW), rows))

    def history_page(self, referral_id: str) -> list[Any]:
        """The floor of the first history page: the referral row, then its first history rows (one range query)."""
        self.table.get_entity(referral_id, REFERRAL_ROW)
        return list(self.table.query_entities(
            "PartitionKey eq @pk and RowKey ge @low and RowKey le @high",
            parameters={"pk": referral_id, "low": "history-0000000000", "high": "history-0000000001"},
        ))

    def copy_for_raw(self, referral_id: str) -> str:
        """The handler's entity, byte for byte, in a partition of its own for the raw writes."""
        entity = self.table.get_entity(referral_id, REFERRAL_ROW)
        copy = dict(entity)
        copy["PartitionKey"] = RAW_PREFIX + referral_id
        self.table.upsert_entity(copy, mode=UpdateMode.REPLACE)
        return RAW_PREFIX + referral_id
