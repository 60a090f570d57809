"""The local host itself: the .NET host's request and response rules (scripts/host_http.py) and the
runtime it drives (scripts/runtime_driver.py), on throwaway function apps written by the tests.

The echo app's function answers with what the runtime handed it, so each rule is checked on what a
function really receives through azure-functions-runtime-v1, not on the host's intermediate values.
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.azurite import free_port
from scripts.host_http import header_map, query_parameters, request_body, route_parameters
from scripts.local_host import LocalHost, serve
from scripts.runtime_driver import FunctionLoadFailed

REPO = Path(__file__).resolve().parent.parent

ECHO = '''
import json
import time

import azure.functions as func


def main(req: func.HttpRequest) -> func.HttpResponse:
    if req.route_params.get("mode") == "raise":
        raise RuntimeError("boom: this text must not reach the caller")
    if req.route_params.get("mode") == "sleep":
        time.sleep(3)
    seen = {
        "method": req.method,
        "url": req.url,
        "headers": dict(req.headers.items()),
        "params": dict(req.params),
        "route": dict(req.route_params),
        "body": req.get_body().decode("latin-1"),
    }
    return func.HttpResponse(json.dumps(seen), status_code=218, headers={"X-Echo": "yes"}, mimetype="application/json")
'''


def write_app(
    root: Path, function: str, source: str, bindings: list[dict[str, Any]], timeout: str = "00:00:30"
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "host.json").write_text(json.dumps({"version": "2.0", "functionTimeout": timeout}))
    folder = root / function
    folder.mkdir()
    (folder / "__init__.py").write_text(source)
    (folder / "function.json").write_text(json.dumps({"scriptFile": "__init__.py", "bindings": bindings}))
    return root


def http_bindings(name: str = "req", route: str = "echo/{mode?}") -> list[dict[str, Any]]:
    return [
        {"authLevel": "anonymous", "type": "httpTrigger", "direction": "in", "name": name, "methods": ["get", "post"],
         "route": route},
        {"type": "http", "direction": "out", "name": "$return"},
    ]


@pytest.fixture(scope="module")
def echo_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Each throwaway app has a function folder name of its own: the runtime imports folders as
    # `__app__.<name>`, one namespace for the process, as in a worker.
    root = write_app(tmp_path_factory.mktemp("echo-app"), "echo_function", ECHO, http_bindings(), timeout="00:00:01")
    port = free_port()
    server = serve("127.0.0.1", port, root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/api/echo"
    server.shutdown()
    server.server_close()


def send(
    url: str, method: str = "GET", body: bytes | None = None, headers: list[tuple[str, str]] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    for name, value in headers or []:
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


# ---- The host's rules, one by one -------------------------------------------------------------------


def test_header_names_are_lower_cased_and_repeated_values_joined() -> None:
    assert header_map([("X-Thing", "a"), ("x-thing", "b"), ("Accept", "")]) == {"x-thing": "a,b", "accept": ""}


def test_repeated_query_values_are_joined_and_empty_ones_dropped() -> None:
    assert query_parameters("top=5&top=10") == {"top": "5,10"}
    assert query_parameters("status=&foo=") == {}
    assert query_parameters("status=Active&Status=Won") == {"status": "Active,Won"}  # first spelling kept
    assert query_parameters("a=&a=x") == {"a": ",x"}


def test_optional_route_parameters_are_absent_when_empty_and_decoded_except_slashes() -> None:
    assert route_parameters({"id": None, "mode": "a%20b%2Fc"}) == {"mode": "a b%2Fc"}


def test_the_body_is_sent_only_when_non_empty() -> None:
    assert request_body(b"") is None
    assert request_body(b"{}") == b"{}"


# ---- Through the runtime ------------------------------------------------------------------------------


def test_a_function_receives_what_the_host_shapes(echo_host: str) -> None:
    status, headers, body = send(
        f"{echo_host}/x%20y?top=5&top=10&empty=&Case=1",
        "POST",
        b"\x00\xffraw",
        [("X-Custom", "one"), ("Content-Type", "application/octet-stream")],
    )
    assert status == 218 and headers["X-Echo"] == "yes"
    seen = json.loads(body)
    assert seen["method"] == "POST"
    assert seen["url"].endswith("/api/echo/x%20y?top=5&top=10&empty=&Case=1")  # the query as sent
    assert seen["params"] == {"top": "5,10", "Case": "1"}
    assert seen["route"] == {"mode": "x y"}
    assert seen["headers"]["x-custom"] == "one"
    assert all(name == name.lower() for name in seen["headers"])
    assert seen["body"] == "\x00\xffraw"


def test_an_optional_route_parameter_left_out_is_absent(echo_host: str) -> None:
    status, _, body = send(echo_host)
    assert status == 218
    assert json.loads(body)["route"] == {}
    assert json.loads(body)["body"] == ""


def test_a_function_that_raises_is_a_500_without_the_exception(echo_host: str) -> None:
    status, _, body = send(f"{echo_host}/raise")
    assert status == 500
    assert b"boom" not in body


def test_a_function_past_function_timeout_is_cut_off(echo_host: str) -> None:
    status, _, body = send(f"{echo_host}/sleep")  # host.json's functionTimeout is 1 s; the function sleeps 3
    assert (status, body) == (500, b"")


def test_bindings_that_do_not_match_main_fail_at_load_with_the_runtimes_message(tmp_path: Path) -> None:
    root = write_app(tmp_path / "app", "mismatched_function", ECHO, http_bindings(name="request"))
    with pytest.raises(FunctionLoadFailed) as failure:
        LocalHost(("127.0.0.1", free_port()), root)
    assert failure.value.function == "mismatched_function"
    assert "the following parameters are declared in Python but not in function.json: {'req'}" in str(failure.value)


def test_the_project_tests_package_is_the_one_imported() -> None:
    # azure-functions-runtime-v1's distribution installs a top-level `tests` package of its own.
    assert Path(sys.modules["tests"].__file__ or "").resolve() == REPO / "tests" / "__init__.py"
    assert not [name for name in sys.modules if name.startswith("tests.protos") or name.startswith("tests.unittests")]
