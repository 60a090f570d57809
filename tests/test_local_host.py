"""Over real HTTP through scripts/local_host.py, which serves the function folders as the host does."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from scripts.azurite import free_port
from scripts.local_host import next_occurrence, parse_ncrontab, route_pattern, serve
from tests.conftest import Api, minimal_referral, new_id, reset_process_state


def running_host() -> Iterator[str]:
    port = free_port()
    server = serve("127.0.0.1", port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def base_url(api_env: None) -> Iterator[str]:
    yield from running_host()


@pytest.fixture
def hooks_base_url(api_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("WEBHOOKS_ALLOW_LOOPBACK", "true")
    reset_process_state()
    yield from running_host()


def call(url: str, token: str, method: str = "GET", body: Any = None) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"null")


def test_route_templates_follow_the_functions_syntax() -> None:
    pattern = route_pattern("api", "v1/referrals/{referralId?}")
    assert pattern.match("/api/v1/referrals/abc").groupdict() == {"referralId": "abc"}  # type: ignore[union-attr]
    assert pattern.match("/api/v1/referrals").groupdict() == {"referralId": None}  # type: ignore[union-attr]
    assert pattern.match("/api/v1/referrals/a/b") is None
    assert route_pattern("", "items/{id:int}").match("/items/5") is not None


def test_create_read_and_list_over_http(base_url: str, api: Api) -> None:
    referral_id = new_id()
    token = api.token()
    status, headers, created = call(f"{base_url}/api/v1/referrals/{referral_id}", token, "POST", minimal_referral())
    assert status == 201
    assert headers["Location"] == f"{base_url}/api/v1/referrals/{referral_id}"
    status, headers, fetched = call(f"{base_url}/api/v1/referrals/{referral_id}", token)
    assert (status, fetched) == (200, created)
    since = created["updatedDate"]  # oldest first: the shared table's older referrals come before it
    status, _, page = call(f"{base_url}/api/v1/referrals?top=100&updatedSince={since}", token)
    assert status == 200 and referral_id in [item["id"] for item in page["value"]]


def test_unknown_path_and_wrong_method_get_the_error_envelope(base_url: str, api: Api) -> None:
    status, _, body = call(f"{base_url}/api/v2/nothing", api.token())
    assert status == 404 and body["error"]["code"] == "itemNotFound"
    status, _, body = call(f"{base_url}/api/v1/referrals/x", api.token(), "DELETE")
    assert status == 405 and "error" in body


def test_a_content_length_that_lies_is_400_not_a_hang(base_url: str, api: Api) -> None:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(
            f"POST /api/v1/referrals/{new_id()} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.token()}\r\n"
            "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{}".encode()
        )
        connection.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := connection.recv(65536):  # the host closes the connection after an error
            received += chunk
        reply = received.decode()
    assert reply.startswith("HTTP/1.1 400"), reply
    assert '"invalidRequest"' in reply


def test_a_url_over_the_hosts_4_kb_limit_is_414_before_any_function_runs(base_url: str, api: Api) -> None:
    base = f"{base_url}/api/v1/referrals?skipToken="
    path_and_query = base.removeprefix(base_url)
    status, _, body = call(base + "a" * (4096 - len(path_and_query)), api.token())
    assert status == 400 and body["error"]["target"] == "skipToken"  # at the limit: the function answers
    status, _, body = call(base + "a" * (4097 - len(path_and_query)), api.token())
    assert status == 414 and body["error"]["code"] == "uriTooLong"


@pytest.mark.parametrize(
    ("query", "status", "target"),
    [
        # The host drops an empty value and joins a repeated name's values: the function reads the query
        # from the URL instead, so each of these means what it says.
        ("status=", 400, "status"),
        ("foo=", 400, "foo"),
        ("top=5&top=10", 400, "top"),
        ("status=Active&Status=Won", 400, "Status"),
        ("top=", 400, "top"),
        ("Status=Active&TOP=5", 200, None),
        ("code=the-function-key&top=5", 200, None),
    ],
)
def test_the_query_contract_holds_under_the_host(
    base_url: str, api: Api, query: str, status: int, target: str | None
) -> None:
    reply_status, _, body = call(f"{base_url}/api/v1/referrals?{query}", api.token())
    assert reply_status == status, body
    if target is not None:
        assert body["error"]["code"] == "invalidRequest"
        assert body["error"]["target"] == target


def test_a_catch_all_takes_the_rest_of_the_path_and_is_absent_when_nothing_follows() -> None:
    pattern = route_pattern("api", "v1/referrals/{referralId?}/{*subresource}")
    cases = {
        "/api/v1/referrals": {"referralId": None, "subresource": None},
        "/api/v1/referrals/abc/": {"referralId": "abc", "subresource": None},
        "/api/v1/referrals/abc/activities": {"referralId": "abc", "subresource": "activities"},
        "/api/v1/referrals/abc/activities/": {"referralId": "abc", "subresource": "activities"},
        "/api/v1/referrals/abc/a/b": {"referralId": "abc", "subresource": "a/b"},
    }
    for path, values in cases.items():
        assert pattern.match(path).groupdict() == values, path  # type: ignore[union-attr]
    assert route_pattern("", "files/{**path}").match("/files/x/y").groupdict() == {"path": "x/y"}  # type: ignore[union-attr]


def test_the_history_over_http_pages_through_every_activity_and_only_that_path_is_served(
    base_url: str, api: Api
) -> None:
    token = api.token()
    referral = f"{base_url}/api/v1/referrals/{new_id()}"
    assert call(referral, token, "POST", minimal_referral())[0] == 201
    for number in range(6):
        assert call(referral, token, "POST", {"additionalInformation": f"change {number}"})[0] == 200
    assert call(referral, token, "POST", {"status": "Active"})[0] == 200
    activities: list[Any] = []
    url: str | None = f"{referral}/activities?top=3"
    while url is not None:
        status, _, page = call(url, token)
        assert status == 200, page
        activities += page["value"]
        url = page.get("nextLink")
        assert url is None or url.startswith(f"{referral}/activities?")
    assert len(activities) == 8 and activities[0]["action"] == "Created"
    assert activities[-1]["changes"] == [{"property": "status", "from": "Pending", "to": "Active"}]
    assert call(referral, token)[2]["activities"] == activities
    for path, status, code in [
        ("/activities/", 200, None),
        ("/Activities", 200, None),
        ("/activity", 404, "itemNotFound"),
        ("/activities/more", 404, "itemNotFound"),
    ]:
        reply_status, _, body = call(f"{referral}{path}", token)
        assert reply_status == status, (path, body)
        assert code is None or body["error"]["code"] == code
    status, _, body = call(f"{base_url}/api/v1/referrals//activities", token)
    assert status == 400 and body["error"]["target"] == "referralId"
    status, _, body = call(f"{referral}/activities", token, "POST", {})
    assert status == 405 and "error" in body


def test_ncrontab_schedules_give_the_next_moments() -> None:
    every_five = parse_ncrontab("*/5 * * * * *")
    start = datetime(2026, 12, 2, 10, 0, 3, 500000, tzinfo=UTC)
    assert next_occurrence(every_five, start) == start.replace(second=5, microsecond=0)
    assert next_occurrence(every_five, start.replace(second=55)) == datetime(2026, 12, 2, 10, 1, 0, tzinfo=UTC)
    daily = parse_ncrontab("0 30 9 * * 1-5")  # 09:30 on weekdays; 2026-12-05 is a Saturday
    assert next_occurrence(daily, datetime(2026, 12, 4, 9, 30, tzinfo=UTC)) == datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
    for bad in ("* * * * *", "*/0 * * * * *", "61 * * * * *", "0 0 0 * JAN *"):
        with pytest.raises(ValueError):
            parse_ncrontab(bad)


def test_the_host_runs_timer_functions_on_their_schedule_through_the_runtime_and_stops_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0", "functionTimeout": "00:00:30"}))
    folder = tmp_path / "tick_every_second"
    folder.mkdir()
    binding = {"type": "timerTrigger", "direction": "in", "name": "timer", "schedule": "* * * * * *"}
    (folder / "function.json").write_text(json.dumps({"scriptFile": "__init__.py", "bindings": [binding]}))
    (folder / "__init__.py").write_text(
        "import os, time\n"
        "import azure.functions as func\n"
        "def main(timer: func.TimerRequest) -> None:\n"
        "    with open(os.environ['TICKS_FILE'], 'a') as ticks:\n"
        "        ticks.write(f'{time.time()} {timer.past_due}\\n')\n"
    )
    ticks = tmp_path / "ticks.txt"
    monkeypatch.setenv("TICKS_FILE", str(ticks))
    server = serve("127.0.0.1", free_port(), tmp_path)
    try:
        assert server.timers.names == ["tick_every_second"] and server.routes == []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(ticks.read_text().splitlines() if ticks.exists() else []) < 3:
            time.sleep(0.1)
    finally:
        server.server_close()
    moments = [float(line.split()[0]) for line in ticks.read_text().splitlines()]
    assert len(moments) >= 3
    assert all(0.5 < later - earlier < 1.5 for earlier, later in itertools.pairwise(moments))
    after_stop = len(moments)
    time.sleep(1.5)
    assert len(ticks.read_text().splitlines()) == after_stop  # stopped: nothing runs after server_close


def test_the_local_host_delivers_webhooks_on_the_timers_schedule(hooks_base_url: str, api: Api) -> None:
    from tests.test_webhooks import start_receiver

    receiver = start_receiver()
    try:
        base_url = hooks_base_url
        status, _, created = call(f"{base_url}/api/v1/subscriptions", api.token(), "POST", {"url": receiver.url})
        assert status == 201, created
        referral_id = new_id()
        written = time.monotonic()
        assert call(f"{base_url}/api/v1/referrals/{referral_id}", api.token(), "POST", minimal_referral())[0] == 201
        while time.monotonic() - written < 15 and not any(
            r.event["data"]["referralId"] == referral_id for r in receiver.acknowledged()
        ):
            time.sleep(0.05)
        latency = time.monotonic() - written
        assert latency < 15  # within 15 s of the write (the timer fires every 5 s)
        print(f"write-to-delivery latency through the local host: {latency:.2f} s")
        assert call(f"{base_url}/api/v1/subscriptions/{created['id']}", api.token(), "DELETE")[0] == 204
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
