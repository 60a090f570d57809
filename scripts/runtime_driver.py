"""Drives azure-functions-runtime-v1, the v1 programming model's runtime on Python 3.13+, through the same
entry points Azure's proxy worker calls: worker init, environment reload, functions metadata, function
load and invocation. The worker side of the local host.

The proxy worker receives FunctionRpc messages from the host over gRPC and hands each to the runtime as
`request.request`, with the generated protobuf module as `request.properties["protos"]`. Here there is no
gRPC: the messages are built in-process from function.json (as the host builds them) and from
`scripts.host_http.HostRequest`, and the runtime's answers are read back the same way. What this leaves
out: gRPC itself, the host's process management (one worker, never restarted), shared-memory transfer,
OpenTelemetry, durable and non-HTTP bindings other than the timer trigger.

The generated FunctionRpc modules come from the runtime's own distribution, which installs them inside a
top-level `tests` package. Importing that package would shadow the project's `tests/`, so the modules
are loaded from its folder under a private package name, and `tests` is never imported.

Nothing here knows about referrals.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.metadata
import json
import sys
import threading
import types
import uuid
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure_functions_runtime_v1 as runtime  # type: ignore[import-untyped]  # ships no type information

from scripts.host_http import HostRequest, HostResponse, failed_invocation, response_from_worker

RUNTIME_DISTRIBUTION = "azure-functions-runtime-v1"
_PROTOS_PACKAGE = "_local_host_function_rpc"
# The host version the worker is told it talks to (WorkerInitRequest.host_version).
HOST_VERSION = "4.1042.100"


@functools.cache
def load_protos() -> types.SimpleNamespace:
    """The FunctionRpc message classes, as the proxy worker's `protos` module exposes them: one namespace
    holding FunctionRpc_pb2's messages and the nullable wrapper types of shared/NullableTypes_pb2.
    Built once per process (finding the generated module in the distribution's file list takes ~6 ms
    even when the modules are already imported)."""
    distribution = importlib.metadata.distribution(RUNTIME_DISTRIBUTION)
    generated = next(
        (path for path in distribution.files or [] if path.as_posix().endswith("protos/FunctionRpc_pb2.py")), None
    )
    if generated is None:
        raise RuntimeError(f"{RUNTIME_DISTRIBUTION} carries no generated FunctionRpc_pb2 module.")
    folder = Path(str(distribution.locate_file(generated))).parent
    if _PROTOS_PACKAGE not in sys.modules:
        # A bare package object with the folder as its path: its own __init__ (which imports grpc) never runs.
        package = types.ModuleType(_PROTOS_PACKAGE)
        package.__path__ = [str(folder)]
        sys.modules[_PROTOS_PACKAGE] = package
    messages = importlib.import_module(f"{_PROTOS_PACKAGE}.FunctionRpc_pb2")
    nullable = importlib.import_module(f"{_PROTOS_PACKAGE}.shared.NullableTypes_pb2")
    names = {name: getattr(module, name) for module in (messages, nullable) for name in dir(module)}
    return types.SimpleNamespace(**{name: value for name, value in names.items() if not name.startswith("_")})


class FunctionLoadFailed(RuntimeError):
    """The runtime refused a function folder at load; the message is the runtime's own."""

    def __init__(self, function: str, message: str) -> None:
        super().__init__(f"Function '{function}' failed to load: {message}")
        self.function = function
        self.runtime_message = message


@dataclass(frozen=True)
class FunctionFolder:
    """One function folder as the host reads it: function.json's bindings and where its code is."""

    name: str
    directory: Path
    config: dict[str, Any]

    @property
    def bindings(self) -> list[dict[str, Any]]:
        return list(self.config.get("bindings", []))

    @property
    def trigger(self) -> dict[str, Any]:
        triggers = [binding for binding in self.bindings if str(binding.get("type", "")).endswith("Trigger")]
        if len(triggers) != 1:
            raise FunctionLoadFailed(self.name, "function.json must declare exactly one trigger binding.")
        return triggers[0]

    @property
    def script_file(self) -> Path:
        return self.directory / str(self.config.get("scriptFile", "__init__.py"))


def read_function_folders(app_root: Path) -> list[FunctionFolder]:
    """Every `<folder>/function.json` under the app root, as the host indexes a v1 app."""
    return [
        FunctionFolder(path.parent.name, path.parent, json.loads(path.read_text(encoding="utf-8")))
        for path in sorted(app_root.glob("*/function.json"))
    ]


@dataclass(frozen=True)
class LoadedFunction:
    folder: FunctionFolder
    function_id: str


@dataclass
class _WorkerRequest:
    """What the proxy worker passes the runtime: the FunctionRpc message and a few properties."""

    name: str
    request: Any
    properties: dict[str, Any] = field(default_factory=dict)


class RuntimeDriver:
    """One worker: the runtime's handlers run on an event loop of their own, as in the proxy worker,
    and synchronous functions on the runtime's thread pool."""

    def __init__(self, app_root: Path) -> None:
        self.app_root = app_root
        self.protos = load_protos()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="functions-runtime", daemon=True)
        self._thread.start()
        self.functions: dict[str, LoadedFunction] = {}

    def start(self, environment: Mapping[str, str]) -> dict[str, LoadedFunction]:
        """Init, specialize, index and load: the calls a Flex Consumption instance's worker receives
        when it is taken from the pool and given this app. Raises FunctionLoadFailed on the first
        folder the runtime refuses."""
        protos = self.protos
        if runtime.get_threadpool_executor() is None:
            runtime.start_threadpool_executor()  # one per process, as in the worker; shared by every driver
        init = protos.StreamingMessage(
            worker_init_request=protos.WorkerInitRequest(
                host_version=HOST_VERSION,
                function_app_directory=str(self.app_root),
                worker_directory=str(self.app_root),
            )
        )
        self._expect_success("worker init", self._run(runtime.worker_init_request(self._request(init))))
        reload = protos.StreamingMessage(
            function_environment_reload_request=protos.FunctionEnvironmentReloadRequest(
                environment_variables=dict(environment), function_app_directory=str(self.app_root)
            )
        )
        self._expect_success(
            "environment reload", self._run(runtime.function_environment_reload_request(self._request(reload)))
        )
        metadata = protos.StreamingMessage(
            functions_metadata_request=protos.FunctionsMetadataRequest(function_app_directory=str(self.app_root))
        )
        answer = self._run(runtime.functions_metadata_request(self._request(metadata)))
        self._expect_success("functions metadata", answer)
        if not answer.use_default_metadata_indexing:
            raise RuntimeError("The runtime indexed the app itself; this host reads only function.json folders.")
        for folder in read_function_folders(self.app_root):
            self.functions[folder.name] = self._load(folder)
        return self.functions

    def _load(self, folder: FunctionFolder) -> LoadedFunction:
        protos = self.protos
        function_id = str(uuid.uuid4())
        directions = protos.BindingInfo.Direction
        data_types = protos.BindingInfo.DataType
        bindings = {
            str(binding["name"]): protos.BindingInfo(
                type=str(binding["type"]),
                direction=directions.Value(str(binding.get("direction", "in")).lower()),
                data_type=data_types.Value(str(binding.get("dataType", "undefined")).lower()),
            )
            for binding in folder.bindings
        }
        folder.trigger  # noqa: B018 (validates: exactly one trigger, as the host requires)
        request = protos.StreamingMessage(
            function_load_request=protos.FunctionLoadRequest(
                function_id=function_id,
                metadata=protos.RpcFunctionMetadata(
                    name=folder.name,
                    function_id=function_id,
                    directory=str(folder.directory),
                    script_file=str(folder.script_file),
                    entry_point=str(folder.config.get("entryPoint", "")),
                    language="python",
                    bindings=bindings,
                    raw_bindings=[json.dumps(binding) for binding in folder.bindings],
                ),
            )
        )
        answer = self._run(runtime.function_load_request(self._request(request)))
        if answer.result.status != protos.StatusResult.Success:
            raise FunctionLoadFailed(folder.name, answer.result.exception.message)
        return LoadedFunction(folder, function_id)

    def invoke_http(self, function: LoadedFunction, request: HostRequest, timeout: float) -> HostResponse:
        protos = self.protos
        http = protos.RpcHttp(
            method=request.method,
            url=request.url,
            headers=request.headers,
            query=request.query,
            params=request.route_params,
        )
        if request.body is not None:
            http.body.CopyFrom(protos.TypedData(bytes=request.body))
        answer = self._invoke(function, protos.TypedData(http=http), timeout)
        if answer is None or answer.result.status != protos.StatusResult.Success:
            return failed_invocation()
        returned = answer.return_value
        if returned.WhichOneof("data") != "http":
            return failed_invocation()
        body = returned.http.body
        payload = body.bytes if body.WhichOneof("data") == "bytes" else body.string.encode("utf-8")
        return response_from_worker(returned.http.status_code, dict(returned.http.headers), payload)

    def invoke_timer(self, function: LoadedFunction, past_due: bool, timeout: float) -> bool:
        """A timer trigger's invocation, with the JSON the host sends (TimerInfo's schedule status)."""
        info = {"Schedule": {"AdjustForDST": True}, "ScheduleStatus": None, "IsPastDue": past_due}
        answer = self._invoke(function, self.protos.TypedData(json=json.dumps(info)), timeout)
        return answer is not None and answer.result.status == self.protos.StatusResult.Success

    def _invoke(self, function: LoadedFunction, trigger_data: Any, timeout: float) -> Any:
        protos = self.protos
        trigger_name = str(function.folder.trigger["name"])
        request = protos.StreamingMessage(
            invocation_request=protos.InvocationRequest(
                invocation_id=str(uuid.uuid4()),
                function_id=function.function_id,
                input_data=[protos.ParameterBinding(name=trigger_name, data=trigger_data)],
                trace_context=protos.RpcTraceContext(trace_parent=_new_traceparent()),
            )
        )
        future = asyncio.run_coroutine_threadsafe(runtime.invocation_request(self._request(request)), self._loop)
        try:
            answer = future.result(timeout)
        except TimeoutError:
            # As functionTimeout does in the host, the caller gets its answer now; the function's thread
            # cannot be killed and finishes on its own.
            future.cancel()
            return None
        if answer.result.status != protos.StatusResult.Success:
            print(f"[{function.folder.name}] invocation failed: {answer.result.exception.message}", file=sys.stderr)
        return answer

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _request(self, message: Any) -> _WorkerRequest:
        return _WorkerRequest(message.WhichOneof("content"), message, {"protos": self.protos, "host": "127.0.0.1"})

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _expect_success(self, step: str, answer: Any) -> None:
        if answer.result.status != self.protos.StatusResult.Success:
            raise RuntimeError(f"The runtime failed {step}: {answer.result.exception.message}")


def _new_traceparent() -> str:
    return f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-00"
