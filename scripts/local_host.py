"""The local Functions host, for machines without Azure Functions Core Tools: it serves the function
folders through azure-functions-runtime-v1, the package that runs them in Azure on Python 3.13.

Two sides, one seam: `scripts.host_http` is what the .NET host does to a request and a response, and
`scripts.runtime_driver` drives the runtime (init, load, invoke). This module is the socket and the
routing between them: it reads host.json (route prefix, functionTimeout) and each function.json (route,
methods), and loads local.settings.json's Values into the environment as `func start` does. Function
keys (authLevel `function`) are not checked, as `func start` does not check them either.

    python -m scripts.local_host --port 7071
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from scripts.host_http import (
    HostRequest,
    HostResponse,
    header_map,
    query_parameters,
    request_body,
    request_url,
    route_parameters,
    url_too_long,
)
from scripts.runtime_driver import LoadedFunction, RuntimeDriver

ROOT = Path(__file__).resolve().parent.parent
# The Functions host refuses bodies over 100 MB; the functions enforce their own, smaller, limits.
MAX_BODY_BYTES = 100 * 1024 * 1024
DEFAULT_FUNCTION_TIMEOUT = timedelta(minutes=30)  # Flex Consumption's default when host.json sets none


@dataclass(frozen=True)
class Route:
    function: LoadedFunction
    methods: frozenset[str]
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class HostSettings:
    route_prefix: str
    function_timeout: timedelta


def read_host_settings(root: Path = ROOT) -> HostSettings:
    host = json.loads((root / "host.json").read_text(encoding="utf-8"))
    prefix = host.get("extensions", {}).get("http", {}).get("routePrefix", "api")
    timeout = host.get("functionTimeout")
    return HostSettings(prefix, _parse_timespan(timeout) if timeout else DEFAULT_FUNCTION_TIMEOUT)


def _parse_timespan(value: str) -> timedelta:
    """host.json's functionTimeout: a .NET TimeSpan, `hh:mm:ss`."""
    hours, minutes, seconds = (float(part) for part in value.split(":"))
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


def route_pattern(prefix: str, template: str) -> re.Pattern[str]:
    """A regex for a Functions route template: `{name}`, `{name?}` (optional), `{name:constraint}`, and
    `{*name}` / `{**name}` (catch-all, ASP.NET Core's: the last segment only, the rest of the path
    slashes included, and absent rather than empty when nothing follows, as `{p1}/{*p2}` on `v1/`)."""
    regex = "^/" + re.escape(prefix.strip("/")) if prefix.strip("/") else "^"
    for segment in template.strip("/").split("/"):
        parameter = re.fullmatch(r"\{(\*{1,2})?(\w+)(?::[^}?]*)?(\?)?\}", segment)
        if parameter is None:
            regex += "/" + re.escape(segment)
        elif parameter.group(1):
            regex += f"(?:/(?P<{parameter.group(2)}>.+?))?"  # lazy: a final "/" is left to the "/?$" below
        elif parameter.group(3):
            regex += f"(?:/(?P<{parameter.group(2)}>[^/]+))?"
        else:
            regex += f"/(?P<{parameter.group(2)}>[^/]+)"
    return re.compile(regex + "/?$", re.IGNORECASE)


def http_routes(functions: dict[str, LoadedFunction], settings: HostSettings) -> list[Route]:
    routes = []
    for loaded in functions.values():
        trigger = loaded.folder.trigger
        if trigger.get("type") != "httpTrigger":
            continue
        routes.append(
            Route(
                function=loaded,
                methods=frozenset(str(method).upper() for method in trigger.get("methods", ["get", "post"])),
                pattern=route_pattern(settings.route_prefix, str(trigger.get("route", loaded.folder.name))),
            )
        )
    return routes


# NCRONTAB's six fields (the Functions timer trigger's schedule): their names and ranges.
_CRON_FIELDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day", 1, 31),
    ("month", 1, 12),
    ("weekday", 0, 6),
)


def parse_ncrontab(schedule: str) -> list[frozenset[int]]:
    """The values each field of a six-field NCRONTAB expression allows: `*`, `n`, `a-b`, any of them
    with `/step`, and comma-separated lists (month and day names are not supported here)."""
    fields = schedule.split()
    if len(fields) != len(_CRON_FIELDS):
        raise ValueError(f"A timer schedule has six fields (second to day of week): {schedule!r}")
    allowed = []
    for text, (name, low, high) in zip(fields, _CRON_FIELDS, strict=True):
        values: set[int] = set()
        for part in text.split(","):
            match = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", part)
            if match is None:
                raise ValueError(f"Unsupported {name} field in timer schedule {schedule!r}")
            start = low if match.group(1) == "*" else int(match.group(2))
            end = high if match.group(1) == "*" else int(match.group(3) or (high if match.group(4) else start))
            step = int(match.group(4) or 1)
            if not low <= start <= end <= high or step < 1:
                raise ValueError(f"Out-of-range {name} field in timer schedule {schedule!r}")
            values.update(range(start, end + 1, step))
        allowed.append(frozenset(values))
    return allowed


def next_occurrence(allowed: list[frozenset[int]], after: datetime) -> datetime:
    """The first whole second after `after` that the schedule allows (within a year)."""
    moment = after.replace(microsecond=0) + timedelta(seconds=1)
    limit = moment + timedelta(days=366)
    seconds, minutes, hours, days, months, weekdays = allowed
    while moment < limit:
        if moment.month not in months or moment.day not in days or (moment.isoweekday() % 7) not in weekdays:
            moment = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0)
        elif moment.hour not in hours:
            moment = (moment + timedelta(hours=1)).replace(minute=0, second=0)
        elif moment.minute not in minutes:
            moment = (moment + timedelta(minutes=1)).replace(second=0)
        elif moment.second not in seconds:
            moment += timedelta(seconds=1)
        else:
            return moment
    raise ValueError("The timer schedule allows no moment within a year.")


class TimerScheduler:
    """Runs the timer-triggered functions on their schedules (UTC, as WEBSITE_TIME_ZONE unset does),
    each on a thread of its own, through the runtime (`RuntimeDriver.invoke_timer`). An invocation
    that is still running when its next moment comes is not overlapped: that moment is skipped and
    the next one runs past-due, as the host's singleton timer does."""

    def __init__(self, driver: RuntimeDriver, functions: dict[str, LoadedFunction], settings: HostSettings) -> None:
        self._driver = driver
        self._timeout = settings.function_timeout.total_seconds()
        self._stopping = threading.Event()
        self._timers = [
            (loaded, parse_ncrontab(str(loaded.folder.trigger["schedule"])))
            for loaded in functions.values()
            if loaded.folder.trigger.get("type") == "timerTrigger"
        ]
        self._threads: list[threading.Thread] = []
        self.invocations: dict[str, int] = {loaded.folder.name: 0 for loaded, _ in self._timers}

    @property
    def names(self) -> list[str]:
        return [loaded.folder.name for loaded, _ in self._timers]

    def start(self) -> None:
        for loaded, allowed in self._timers:
            thread = threading.Thread(
                target=self._run, args=(loaded, allowed), name=f"timer-{loaded.folder.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 35.0) -> None:
        """No invocation starts after this; one in progress is waited for (up to functionTimeout)."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout)

    def _run(self, loaded: LoadedFunction, allowed: list[frozenset[int]]) -> None:
        due = next_occurrence(allowed, datetime.now(UTC))
        past_due = False
        while not self._stopping.wait(max((due - datetime.now(UTC)).total_seconds(), 0)):
            self._driver.invoke_timer(loaded, past_due=past_due, timeout=self._timeout)
            self.invocations[loaded.folder.name] += 1
            following = next_occurrence(allowed, due)
            now = datetime.now(UTC)
            past_due = following < now  # this run outlasted its interval: moments in between are skipped
            due = now if past_due else following


def load_local_settings(root: Path = ROOT) -> None:
    """As `func start` does: local.settings.json's Values become environment variables (the environment wins)."""
    path = root / "local.settings.json"
    if path.exists():
        for name, value in json.loads(path.read_text(encoding="utf-8")).get("Values", {}).items():
            os.environ.setdefault(name, str(value))


class LocalHost(ThreadingHTTPServer):
    """The HTTP listener and the worker it forwards to; `serve_forever` serves, `server_close` ends both."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], root: Path = ROOT, *, run_timers: bool = True) -> None:
        self.settings = read_host_settings(root)
        self.driver = RuntimeDriver(root)
        try:
            functions = self.driver.start(os.environ)
            self.routes = http_routes(functions, self.settings)
            self.timers = TimerScheduler(self.driver, functions, self.settings)
            super().__init__(address, FunctionsHandler)
        except BaseException:
            self.driver.stop()
            raise
        if run_timers:
            self.timers.start()

    def server_close(self) -> None:
        super().server_close()
        self.timers.stop()
        self.driver.stop()

    def invoke(self, route: Route, request: HostRequest) -> HostResponse:
        return self.driver.invoke_http(route.function, request, self.settings.function_timeout.total_seconds())


class FunctionsHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "referrals-local-host"
    server: LocalHost
    timeout = 15  # a client that promises more body than it sends is cut off, not waited for
    # Headers and body go out as two writes; with Nagle on, the body waits for the client's delayed
    # ACK of the headers (~40 ms on Linux loopback) on every keep-alive response.
    disable_nagle_algorithm = True

    def __getattr__(self, name: str) -> Any:
        # Every method (GET, POST, QUERY, ...) is routed; a path's function decides which it accepts.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass  # the functions log each request themselves

    def _dispatch(self) -> None:
        if url_too_long(self.path):
            return self._plain(414, "uriTooLong", "The request URL is over 4,096 bytes.")
        target = urlsplit(self.path)
        matched = [(route, match) for route in self.server.routes if (match := route.pattern.match(target.path))]
        if not matched:
            return self._plain(404, "itemNotFound", "No function serves this path.")
        allowed = [(route, match) for route, match in matched if self.command in route.methods]
        if not allowed:
            methods = ", ".join(sorted({method for route, _ in matched for method in route.methods}))
            return self._plain(405, "invalidRequest", "This method is not allowed here.", {"Allow": methods})
        route, match = allowed[0]
        body = self._read_body()
        if body is None:
            return None
        try:
            request = HostRequest(
                method=self.command,
                url=request_url("http", self.headers.get("Host", "localhost"), self.path),
                headers=header_map(self.headers.items()),
                query=query_parameters(target.query),
                route_params=route_parameters(match.groupdict()),
                body=request_body(body),
            )
        except UnicodeDecodeError:
            return self._plain(400, "invalidRequest", "The request path is not valid UTF-8.")
        self._send(self.server.invoke(route, request))
        return None

    def _send(self, response: HostResponse) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._plain(411, "invalidRequest", "Send a Content-Length; chunked bodies are not accepted.")
            return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            self._plain(400, "invalidRequest", "The Content-Length header is invalid.")
            return None
        if length > MAX_BODY_BYTES:
            self._plain(413, "payloadTooLarge", "The request body is too large.")
            return None
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            body = b""
        if len(body) != length:
            self._plain(400, "invalidRequest", "The body is shorter than its Content-Length.")
            return None
        return body

    def _plain(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        """An answer of the host's own, before any function runs (no route, bad framing)."""
        payload = json.dumps({"error": {"code": code, "message": message}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("x-ms-error-code", code)
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)


def serve(host: str, port: int, root: Path = ROOT, *, run_timers: bool = True) -> LocalHost:
    """A started-but-not-serving host, its timer functions already on their schedules; call
    `serve_forever` (tests run it on a thread) and `server_close` to stop both."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return LocalHost((host, port), root, run_timers=run_timers)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the function folders through azure-functions-runtime-v1.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7071)
    options = parser.parse_args()
    load_local_settings()
    server = serve(options.host, options.port)
    for route in server.routes:
        print(f"  {route.function.folder.name}: [{','.join(sorted(route.methods))}] {route.pattern.pattern}")
    for name in server.timers.names:
        print(f"  {name}: timer")
    print(f"Serving on http://{options.host}:{options.port} through azure-functions-runtime-v1", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
