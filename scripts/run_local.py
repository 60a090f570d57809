"""`make run`: Azurite plus the API on http://127.0.0.1:7071, with local settings and a dev signing key.

Uses `func start` when Azure Functions Core Tools are installed, otherwise `scripts.local_host`, which
serves the same function folders. Azurite keeps its data under .azurite/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from scripts.azurite import stop_process, wait_for_port
from scripts.dev_tokens import DEV_PARTNER_TENANTS, SigningKey

ROOT = Path(__file__).resolve().parent.parent
AZURITE_PORTS = (10000, 10001, 10002)
API_PORT = 7071


def ensure_local_settings() -> None:
    target = ROOT / "local.settings.json"
    if not target.exists():
        example = (ROOT / "local.settings.example.json").read_text()
        target.write_text(example.replace("__PROJECT_ROOT__", str(ROOT)))
        print(f"Wrote {target.name} from local.settings.example.json")
        return
    # The file is the developer's to edit, so it is kept; but a clone that moved leaves its signing
    # key path pointing at the old place, and then every request would fail: point it here again.
    content = json.loads(target.read_text())
    values = content.get("Values", {})
    jwks = values.get("AUTH_JWKS_URI", "")
    here = (ROOT / ".local" / "dev-jwks.json").as_uri()
    if jwks.startswith("file://") and jwks != here and jwks.endswith("/.local/dev-jwks.json"):
        values["AUTH_JWKS_URI"] = here
        target.write_text(json.dumps(content, indent=2) + "\n")
        print(f"{target.name}: AUTH_JWKS_URI pointed at another copy of the project; now at {here}")


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def start_azurite() -> subprocess.Popen[bytes] | None:
    if all(port_in_use(port) for port in AZURITE_PORTS):
        print("Azurite (or another storage emulator) already answers on 10000-10002; using it.")
        return None
    busy = [port for port in AZURITE_PORTS if port_in_use(port)]
    if busy:
        sys.exit(f"Ports {busy} are taken by something else; Azurite needs 10000-10002.")
    log = (ROOT / ".azurite").joinpath("azurite.log")
    log.parent.mkdir(exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "scripts.azurite", "--location", str(ROOT / ".azurite")],
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        for port in AZURITE_PORTS:
            wait_for_port(port)
    except BaseException:
        stop_process(process)
        raise
    print(f"Azurite is running (data in .azurite/, log in {log.relative_to(ROOT)}).")
    return process


def print_instructions() -> None:
    base = f"http://127.0.0.1:{API_PORT}/api/v1/referrals"
    print(
        f"""
The API is starting on {base}/{{referralId}}

A bearer token for partner tenant {DEV_PARTNER_TENANTS[0]} (valid 1 hour; more with `make token`,
e.g. `make token ARGS="--tenant {DEV_PARTNER_TENANTS[1]} --roles Referrals.Read"`):

  export TOKEN=$(make -s token)

Create a referral, then read it:

  curl -s -X POST {base}/contoso-001 -H "Authorization: Bearer $TOKEN" \\
       -H "Content-Type: application/json" \\
       -d '{{"referralSource": "PartnerLed", "customerProfile": {{"name": "Contoso"}}}}'
  curl -s {base}/contoso-001 -H "Authorization: Bearer $TOKEN"
""",
        flush=True,
    )


def _stop_on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # so the finally below stops Azurite when make run is terminated


def main() -> None:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    ensure_local_settings()
    SigningKey.load_or_create()  # the JWKS local.settings.json points at
    if port_in_use(API_PORT):  # checked first: nothing to clean up yet
        sys.exit(f"Port {API_PORT} is taken; stop whatever serves it and run `make run` again.")
    azurite = start_azurite()
    print_instructions()
    func = shutil.which("func")
    if func:
        command = [func, "start", "--port", str(API_PORT)]
        # Core Tools run the worker with the first python on PATH: make it the project's virtualenv.
        venv_bin = str(Path(sys.executable).parent)
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
        os.environ["VIRTUAL_ENV"] = str(Path(venv_bin).parent)
        print("Azure Functions Core Tools found: running `func start`.", flush=True)
    else:
        command = [sys.executable, "-m", "scripts.local_host", "--port", str(API_PORT)]
        print("Core Tools not found: serving the function folders with scripts/local_host.py.", flush=True)
    try:
        subprocess.run(command, cwd=ROOT, check=False)
    except KeyboardInterrupt:
        pass
    finally:
        if azurite is not None:
            stop_process(azurite)


if __name__ == "__main__":
    main()
