"""A small local stand-in for the Functions host, for machines without Azure Functions Core Tools.

It serves the same function folders the real host does: it reads each folder's function.json (HTTP
trigger route and methods) and host.json (route prefix), loads local.settings.json's Values into the
environment as `func start` does, and calls each folder's `main` with a real `azure.functions.HttpRequest`.
Function keys (authLevel `function`) are not checked, as `func start` does not check them either.

    python -m scripts.local_host --port 7071
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

ROOT = Path(__file__).resolve().parent.parent
# The Functions host refuses bodies over 100 MB; the functions enforce their own, smaller, limits.
MAX_BODY_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class Route:
    function: str
    methods: frozenset[str]
    pattern: re.Pattern[str]
    main: Callable[[func.HttpRequest], func.HttpResponse]


def route_pattern(prefix: str, template: str) -> re.Pattern[str]:
    """A regex for a Functions route template: `{name}`, `{name?}` (optional), `{name:constraint}`."""
    regex = "^/" + re.escape(prefix.strip("/")) if prefix.strip("/") else "^"
    for segment in template.strip("/").split("/"):
        parameter = re.fullmatch(r"\{(\w+)(?::[^}?]*)?(\?)?\}", segment)
        if parameter is None:
            regex += "/" + re.escape(segment)
        elif parameter.group(2):
            regex += f"(?:/(?P<{parameter.group(1)}>[^/]+))?"
        else:
            regex += f"/(?P<{parameter.group(1)}>[^/]+)"
    return re.compile(regex + "/?$")


def discover_routes(root: Path = ROOT) -> list[Route]:
    host = json.loads((root / "host.json").read_text())
    prefix = host.get("extensions", {}).get("http", {}).get("routePrefix", "api")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    routes = []
    for config_path in sorted(root.glob("*/function.json")):
        config = json.loads(config_path.read_text())
        for binding in config["bindings"]:
            if binding.get("type") != "httpTrigger":
                continue
            module = importlib.import_module(config_path.parent.name)
            routes.append(
                Route(
                    function=config_path.parent.name,
                    methods=frozenset(method.upper() for method in binding.get("methods", ["get", "post"])),
                    pattern=route_pattern(prefix, binding.get("route", config_path.parent.name)),
                    main=module.main,
                )
            )
    return routes


def load_local_settings(root: Path = ROOT) -> None:
    """As `func start` does: local.settings.json's Values become environment variables (the environment wins)."""
    path = root / "local.settings.json"
    if path.exists():
        for name, value in json.loads(path.read_text()).get("Values", {}).items():
            os.environ.setdefault(name, str(value))


def make_handler(routes: list[Route]) -> type[BaseHTTPRequestHandler]:
    class FunctionsHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "referrals-local-host"
        timeout = 15  # a client that promises more body than it sends is cut off, not waited for
        # Headers and body go out as two writes; with Nagle on, the body waits for the client's delayed
        # ACK of the headers (~40 ms on Linux loopback) on every keep-alive response.
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            self._dispatch()

        def do_POST(self) -> None:
            self._dispatch()

        def do_PUT(self) -> None:
            self._dispatch()

        def do_PATCH(self) -> None:
            self._dispatch()

        def do_DELETE(self) -> None:
            self._dispatch()

        def do_HEAD(self) -> None:
            self._dispatch()

        def do_OPTIONS(self) -> None:
            self._dispatch()

        def do_TRACE(self) -> None:
            self._dispatch()

        def __getattr__(self, name: str) -> Any:
            # Any other method (QUERY, CONNECT, ...) gets 405 on a function's path too, not a bare 501.
            if name.startswith("do_"):
                return self._dispatch
            raise AttributeError(name)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            pass  # the functions log each request themselves

        def _dispatch(self) -> None:
            url = urlsplit(self.path)
            matched = [(route, match) for route in routes if (match := route.pattern.match(url.path))]
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
            request = func.HttpRequest(
                method=self.command,
                url=f"http://{self.headers.get('Host', 'localhost')}{self.path}",
                headers=dict(self.headers.items()),
                params=dict(parse_qsl(url.query, keep_blank_values=True)),
                route_params={name: value for name, value in match.groupdict().items() if value is not None},
                body=body,
            )
            response = route.main(request)
            payload = response.get_body() or b""
            self.send_response(response.status_code)
            for name, value in response.headers.items():
                if name.lower() not in ("content-length", "connection"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            return None

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

    return FunctionsHandler


def serve(host: str, port: int, root: Path = ROOT) -> ThreadingHTTPServer:
    """A started-but-not-serving server; call `serve_forever` (tests run it on a thread)."""
    server = ThreadingHTTPServer((host, port), make_handler(discover_routes(root)))
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the function folders locally without Core Tools.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7071)
    options = parser.parse_args()
    load_local_settings()
    server = serve(options.host, options.port)
    routes = ", ".join(f"{sorted(r.methods)} {r.pattern.pattern}" for r in discover_routes())
    print(f"Serving on http://{options.host}:{options.port} ({routes})", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
