"""Fixtures for the hardening tests: the functions served over loopback HTTP, private Azurites for
fault injection, a TCP proxy that delays or drops storage traffic, and a storage consistency check.

Everything listens on 127.0.0.1 and is started by the tests themselves. The session Azurite of
tests/conftest.py is never paused or stopped here: fault tests start their own.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import azure.functions as func
import pytest
import requests
from azure.data.tables import TableServiceClient

import get_referral
from scripts.azurite import Azurite, free_port, table_connection_string
from scripts.dev_tokens import SigningKey
from scripts.local_host import serve
from shared.model import Activity, Referral
from tests.conftest import PARTNER_A, Api, Reply, api_environment, reset_process_state

TABLE = "Referrals"
# A request during a storage fault must end within this; the contract says "a few seconds", the
# figures measured are in docs/reliability.md.
FAULT_BOUND_SECONDS = 10.0


# ---- The functions over HTTP -------------------------------------------------------------------


@contextmanager
def environment(connection_string: str, jwks_path: Path) -> Iterator[None]:
    """Point this process's functions at a storage account for the duration of the block."""
    patch = pytest.MonkeyPatch()
    try:
        for name, value in api_environment(connection_string, jwks_path).items():
            patch.setenv(name, value)
        patch.delenv("REFERRALS_STORAGE__tableServiceUri", raising=False)
        reset_process_state()
        yield
    finally:
        patch.undo()
        reset_process_state()


@dataclass
class LiveHost:
    """`scripts.local_host` serving the function folders on a loopback port, with a token helper."""

    base_url: str  # http://127.0.0.1:<port>/api
    key: SigningKey
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def port(self) -> int:
        return int(self.base_url.split(":")[2].split("/")[0])

    def token(self, tenant: str = PARTNER_A, roles: list[str] | None = None, **claims: Any) -> str:
        return self.key.token(tenant, roles=roles if roles is not None else ["Referrals.ReadWrite"], **claims)

    @cached_property
    def default_token(self) -> str:
        return self.token()  # minted once: loading the signing key costs ~50 ms a token

    def headers(self, token: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.default_token}", "x-functions-key": "local", **extra}

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, f"{self.base_url}{path}", **kwargs)


@contextmanager
def running_host() -> Iterator[str]:
    port = free_port()
    server = serve("127.0.0.1", port)
    thread = threading.Thread(target=server.serve_forever, name="local-host", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/api"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def live(azurite: Azurite, jwks_path: Path, signing_key: SigningKey) -> Iterator[LiveHost]:
    """The functions served over HTTP against the session Azurite (module-scoped: one server)."""
    with environment(azurite.connection_string, jwks_path), running_host() as base_url:
        host = LiveHost(base_url, signing_key)
        yield host
        host.session.close()


def list_referrals(api: Api, params: dict[str, str] | None = None, token: str | None = None) -> Reply:
    request = func.HttpRequest(
        method="GET",
        url="http://localhost:7071/api/v1/referrals?" + urlencode(params or {}),
        headers={"Authorization": f"Bearer {token or api.token()}"},
        params={},  # the function reads its query from the URL
        route_params={},
        body=b"",
    )
    response = get_referral.main(request)
    return Reply(response.status_code, dict(response.headers), response.get_body())


# ---- Storage faults -----------------------------------------------------------------------------


class TcpProxy:
    """A loopback TCP forwarder to `target_port` whose behaviour can be switched at any time:

    - `pass`: forward both ways;
    - `delay`: forward, but hold every chunk coming back from storage for `delay` seconds;
    - `blackhole`: accept and read, never answer (a storage account that stopped responding);
    - `reset`: accept, then reset the connection at once (a dropped connection).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "pass"
        self.delay = 0.0
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def connection_string(self) -> str:
        return table_connection_string(self.port)

    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        assert mode in ("pass", "delay", "blackhole", "reset")
        self.mode, self.delay = mode, delay
        self.drop_all()  # pooled and in-flight connections see the change too, not just new ones

    def drop_all(self) -> None:
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            _abort(sock)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()
        self.drop_all()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            if self.mode == "reset":
                _abort(client)
                continue
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self.mode == "blackhole":
            with suppress(OSError):
                while not self._stopping.is_set() and client.recv(65536):
                    pass
            _abort(client)
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
        except OSError:
            _abort(client)
            return
        self._track(upstream)
        pairs = {client: upstream, upstream: client}
        try:
            while not self._stopping.is_set():
                readable, _, _ = select.select(list(pairs), [], [], 0.2)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is upstream and self.mode == "delay":
                        time.sleep(self.delay)
                    if self.mode in ("blackhole", "reset"):
                        return
                    pairs[source].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            _abort(client)
            _abort(upstream)


def _abort(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a dropped connection looks to the other side."""
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with suppress(OSError):
        sock.close()


class PrivateAzurite:
    """An Azurite of one test's own, persisting to disk, so that it can be stopped and started again on
    the same port and location (the tests' stand-in for a storage account that goes away and comes back)."""

    def __init__(self, location: Path) -> None:
        self.location = location
        self.server = Azurite.start_table(location=location)
        self.port = self.server.table_port

    @property
    def connection_string(self) -> str:
        return table_connection_string(self.port)

    def pause(self) -> None:
        self.server.pause()

    def resume(self) -> None:
        self.server.resume()

    def stop_gracefully(self, proxy: TcpProxy | None = None) -> None:
        """SIGINT, so Azurite saves its data; it waits for open connections, so the proxy drops them."""
        self.server.process.send_signal(signal.SIGINT)
        if proxy is not None:
            proxy.drop_all()
        try:
            self.server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.server.stop()

    def start(self) -> None:
        self.server = Azurite.start_table(port=self.port, location=self.location)

    def close(self) -> None:
        self.server.stop()  # resumes a paused process before terminating it


@pytest.fixture
def private_azurite(tmp_path: Path) -> Iterator[PrivateAzurite]:
    server = PrivateAzurite(tmp_path / "azurite")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def proxy(private_azurite: PrivateAzurite) -> Iterator[TcpProxy]:
    forwarder = TcpProxy(private_azurite.port)
    try:
        yield forwarder
    finally:
        forwarder.close()


# ---- What storage holds ----------------------------------------------------------------------------


def _text(entity: Any, prefix: str) -> str:
    """Text the store split over properties: UTF-8 in binary ones (strings in rows written before)."""
    parts = [entity[f"{prefix}{index}"] for index in range(entity[f"{prefix}Parts"])]
    return "".join(parts) if parts and isinstance(parts[0], str) else b"".join(parts).decode("utf-8")


def stored_entities(connection_string: str) -> list[dict[str, Any]]:
    service = TableServiceClient.from_connection_string(connection_string, connection_timeout=5, read_timeout=10)
    with service:
        return [dict(entity) for entity in service.get_table_client(TABLE).list_entities()]


def check_storage_consistent(connection_string: str) -> dict[str, dict[str, Any]]:
    """Every referral row is whole: its body parses and validates, its columns agree with its body, and
    its activities are a valid history that starts with Created. Returns the bodies by referral id.

    Index rows may point at versions that were never written or were replaced (the write order makes
    those harmless, see shared/service.py); they must still name a referral id and a version.
    """
    bodies: dict[str, dict[str, Any]] = {}
    for entity in stored_entities(connection_string):
        key = entity["RowKey"]
        if entity["PartitionKey"].startswith("index:"):
            assert entity["ReferralId"] and entity["Version"].startswith('"'), entity
            continue
        if entity["PartitionKey"].startswith("meta:"):
            assert entity["RowKey"] == "page-token-key" and len(entity["Key"]) == 32, entity["RowKey"]
            continue
        if key.startswith("history-"):
            for item in json.loads(_text(entity, "Activities")):
                Activity.model_validate(item)
            continue
        assert key == "referral", entity
        body = json.loads(_text(entity, "Body"))
        activities = body.pop("activities")
        referral = Referral.model_validate(body)
        assert referral.id == entity["PartitionKey"]
        assert entity["Organizations"] == ",".join(sorted(p.organizationId for p in referral.participants))
        assert (entity["Status"], entity["ReferralSource"], entity["UpdatedDate"]) == (
            referral.status.value,
            referral.referralSource.value,
            referral.updatedDate,
        )
        assert activities, "a stored referral always has its Created activity"
        for item in activities:
            Activity.model_validate(item)
        assert activities[-1]["toStatus"] == referral.status.value
        assert activities[-1]["date"] == referral.updatedDate
        if not entity.get("ArchivedRows") and not entity.get("OlderParts"):
            assert activities[0]["action"] == "Created"
        bodies[referral.id] = body
    return bodies


# ---- Figures for docs/reliability.md -------------------------------------------------------------------

FIGURES: list[str] = []


def record(line: str) -> None:
    """Note a measured figure; all of them are printed at the end of the run."""
    FIGURES.append(line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("hardening figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
