"""Fresh processes for the cold-start and memory figures; `bench.run` starts them, never a person.

    python -m bench.child handler   # a fresh interpreter answering its first GET through the runtime
    python -m bench.child modules   # the same, then prints the third-party modules it had imported
    python -m bench.child raw       # imports those modules (BENCH_MODULES), then reads the entity raw
    python -m bench.child handler-preloaded   # imports those modules first, then as `handler`
    python -m bench.child serve-handler | serve-raw   # N mixed requests, then peak RSS

Only the standard library is imported here before the measured work starts, so both kinds of child
pay the same interpreter start. Each prints one JSON line; the parent times start -> that line.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

STARTED = time.perf_counter()


def _emit(**values: object) -> None:
    sys.stdout.write(json.dumps(values) + "\n")
    sys.stdout.flush()


def _rss_kib() -> int:
    """Peak resident set of this process in KiB: VmHWM, reset at exec. (`getrusage().ru_maxrss` is not:
    on Linux it keeps the parent's high-water mark across fork and exec.)"""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) * 1000


def _handler_first_get(preloaded: bool = False) -> None:
    """Through azure-functions-runtime-v1, as a new worker in Azure: init, specialization, indexing and
    loading every function of the app (their imports), then the first invocation. `preloaded`: the
    raw child's imports first, then the same; `after_imports_ms` is then what our code and the runtime
    add, timed apart from the ~0.9 s of imports both kinds of child share."""
    if preloaded:
        _import_listed()
        from scripts.runtime_driver import load_protos

        load_protos()
    preloaded_at = time.perf_counter()
    from pathlib import Path

    from scripts.host_http import HostRequest
    from scripts.runtime_driver import RuntimeDriver

    driver = RuntimeDriver(Path(__file__).resolve().parent.parent)
    functions = driver.start(os.environ)
    imported = time.perf_counter()
    referral_id = os.environ["BENCH_REFERRAL"]
    request = HostRequest(
        method="GET",
        url=f"http://localhost:7071/api/v1/referrals/{referral_id}",
        headers={"authorization": f"Bearer {os.environ['BENCH_TOKEN']}"},
        query={},
        route_params={"referralId": referral_id},
        body=None,
    )
    response = driver.invoke_http(functions["get_referral"], request, timeout=30)
    done = time.perf_counter()
    if response.status != 200:
        _emit(error=f"first GET answered {response.status}: {response.body[:300]!r}")
        sys.exit(2)
    _emit(imports_ms=(imported - STARTED) * 1000, first_call_ms=(done - imported) * 1000, cpu_ms=_cpu_ms(),
          rss_kib=_rss_kib(), after_imports_ms=(done - preloaded_at) * 1000)


def _import_listed() -> int:
    """Import the modules BENCH_MODULES lists; the number that failed."""
    import importlib

    failed = 0
    with open(os.environ["BENCH_MODULES"], encoding="utf-8") as names:
        for name in json.load(names):
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 (a module that only imports inside its package's init)
                failed += 1
    return failed


def _third_party_modules() -> list[str]:
    """Installed modules the handler child had imported, less the FunctionRpc messages, which live
    under a private package name that only `load_protos` can import (the raw child calls it)."""
    names = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if "site-packages" in path and not name.startswith("_local_host_function_rpc"):
            names.append(name)
    return names


def _raw_first_get() -> None:
    failed = _import_listed()
    # The worker has the FunctionRpc messages loaded before any app code runs: so does the baseline.
    from scripts.runtime_driver import load_protos

    load_protos()
    from azure.data.tables import TableClient

    imported = time.perf_counter()
    table = TableClient.from_connection_string(os.environ["REFERRALS_STORAGE"], os.environ["REFERRALS_TABLE"])
    entity = table.get_entity(os.environ["BENCH_REFERRAL"], "referral")
    body = b"".join(entity[f"Body{index}"] for index in range(entity["BodyParts"]))  # UTF-8, as stored
    done = time.perf_counter()
    _emit(imports_ms=(imported - STARTED) * 1000, first_call_ms=(done - imported) * 1000, cpu_ms=_cpu_ms(),
          rss_kib=_rss_kib(), failed_imports=failed, body_bytes=len(body), after_imports_ms=(done - imported) * 1000)


def _serve(kind: str) -> None:
    """Serve BENCH_REQUESTS requests, three GETs to one POST over BENCH_IDS, then report peak RSS."""
    from bench import workload

    ids = os.environ["BENCH_IDS"].split(",")
    count = int(os.environ["BENCH_REQUESTS"])
    token = os.environ["BENCH_TOKEN"]
    imported_rss = _rss_kib()
    if kind == "handler":
        import get_referral
        import update_referral

        imported_rss = _rss_kib()
        for number in range(count):
            referral_id = ids[number % len(ids)]
            if number % 4 == 3:
                patch = {"details": {"notes": f"Memory run note {number}."}}
                response = update_referral.main(workload.post_request(token, referral_id, patch))
            else:
                response = get_referral.main(workload.get_request(token, referral_id))
            if response.status_code != 200:
                _emit(error=f"request {number} answered {response.status_code}")
                sys.exit(2)
    else:
        from azure.data.tables import TableClient

        imported_rss = _rss_kib()
        table = TableClient.from_connection_string(os.environ["REFERRALS_STORAGE"], os.environ["REFERRALS_TABLE"])
        raw = workload.Raw(table)
        for number in range(count):
            referral_id = ids[number % len(ids)]
            if number % 4 == 3:
                raw.post(workload.RAW_PREFIX + referral_id)
            else:
                raw.get(referral_id)
    _emit(peak_rss_kib=_rss_kib(), after_import_rss_kib=imported_rss, requests=count)


def main() -> None:
    mode = sys.argv[1]
    if mode == "handler":
        _handler_first_get()
    elif mode == "handler-preloaded":
        _handler_first_get(preloaded=True)
    elif mode == "modules":
        _handler_first_get()
        _emit(modules=_third_party_modules())
    elif mode == "raw":
        _raw_first_get()
    elif mode in ("serve-handler", "serve-raw"):
        _serve(mode.removeprefix("serve-"))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
