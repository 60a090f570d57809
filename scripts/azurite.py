"""Start Azurite (from the project's node_modules) and wait until it answers; used by tests, benchmarks
and `make run`.

    python -m scripts.azurite --location .azurite      # all three services on the default ports
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented by Microsoft; it opens nothing but Azurite).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# Azurite sends usage telemetry to Microsoft unless told not to. Every Azurite this project starts is
# told not to: a developer's or CI's emulator has no business calling out, and on a machine that cannot
# reach the telemetry endpoint Azurite waits on it at shutdown (~20 s after SIGTERM, against ~2 s).
NO_TELEMETRY = "--disableTelemetry"
# How long a stopping Azurite may take after SIGTERM (it saves its data, then exits) before it is killed.
STOP_TIMEOUT_SECONDS = 10


def table_connection_string(port: int, host: str = "127.0.0.1") -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"TableEndpoint=http://{host}:{port}/{ACCOUNT};"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing answered on {host}:{port} within {timeout:.0f}s")


@dataclass
class Azurite:
    """A running Azurite table service; `stop`, `pause` and `resume` let tests inject faults."""

    process: subprocess.Popen[bytes]
    table_port: int

    @property
    def connection_string(self) -> str:
        return table_connection_string(self.table_port)

    @classmethod
    def start_table(cls, port: int | None = None, location: Path | None = None) -> Azurite:
        port = port or free_port()
        command = [
            str(_binary("azurite-table")),
            "--tableHost",
            "127.0.0.1",
            "--tablePort",
            str(port),
            "--skipApiVersionCheck",
            "--disableProductStyleUrl",
            "--silent",
            NO_TELEMETRY,
        ]
        command += ["--location", str(location)] if location else ["--inMemoryPersistence"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port)
        except TimeoutError:
            process.kill()
            raise
        return cls(process, port)

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.resume()
            stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, so that Azurite saves its data and exits; killed if it has not within STOP_TIMEOUT_SECONDS."""
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _binary(name: str) -> Path:
    path = ROOT / "node_modules" / ".bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `npm ci` (make does it for you)")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="Run Azurite with the Referrals API's local defaults.")
    parser.add_argument("--location", default=str(ROOT / ".azurite"), help="where Azurite keeps its data")
    options = parser.parse_args()
    Path(options.location).mkdir(parents=True, exist_ok=True)
    command = [
        str(_binary("azurite")),
        "--location",
        options.location,
        "--blobHost",
        "127.0.0.1",
        "--queueHost",
        "127.0.0.1",
        "--tableHost",
        "127.0.0.1",
        "--skipApiVersionCheck",
        "--silent",
        NO_TELEMETRY,
    ]
    os.execv(command[0], command)  # noqa: S606 (fixed argv, no shell)


if __name__ == "__main__":
    main()
