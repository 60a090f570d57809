"""`make run`'s launcher and what `func azure functionapp publish` would upload: no Azurite needed."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import azurite as azurite_script
from scripts import run_local

ROOT = Path(__file__).resolve().parent.parent


def test_a_taken_api_port_stops_make_run_before_azurite_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[bool] = []
    monkeypatch.setattr(run_local, "ensure_local_settings", lambda: None)
    monkeypatch.setattr(run_local.SigningKey, "load_or_create", classmethod(lambda cls: None))
    monkeypatch.setattr(run_local, "port_in_use", lambda port: port == run_local.API_PORT)
    monkeypatch.setattr(run_local, "start_azurite", lambda: started.append(True))
    with pytest.raises(SystemExit, match="7071 is taken"):
        run_local.main()
    assert started == []  # nothing left running behind the error


def test_local_settings_follow_a_clone_that_moved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_local, "ROOT", tmp_path)
    (tmp_path / "local.settings.example.json").write_text((ROOT / "local.settings.example.json").read_text())
    run_local.ensure_local_settings()
    settings_path = tmp_path / "local.settings.json"
    here = (tmp_path / ".local" / "dev-jwks.json").as_uri()
    assert json.loads(settings_path.read_text())["Values"]["AUTH_JWKS_URI"] == here

    content = json.loads(settings_path.read_text())
    content["Values"]["AUTH_JWKS_URI"] = "file:///old/clone/.local/dev-jwks.json"
    content["Values"]["MY_OWN_SETTING"] = "kept"
    settings_path.write_text(json.dumps(content))
    run_local.ensure_local_settings()
    values = json.loads(settings_path.read_text())["Values"]
    assert values["AUTH_JWKS_URI"] == here and values["MY_OWN_SETTING"] == "kept"

    values["AUTH_JWKS_URI"] = "https://login.microsoftonline.com/common/discovery/v2.0/keys"
    settings_path.write_text(json.dumps({"Values": values}))
    run_local.ensure_local_settings()  # a developer's own choice of keys is theirs
    assert json.loads(settings_path.read_text())["Values"]["AUTH_JWKS_URI"].startswith("https://")


def test_every_azurite_the_project_starts_runs_with_telemetry_off(
    azurite: azurite_script.Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tests' own table emulator, as it is running now.
    arguments = Path(f"/proc/{azurite.process.pid}/cmdline").read_bytes().split(b"\0")
    assert b"--disableTelemetry" in arguments
    # make run's: `python -m scripts.azurite` execs Azurite with these arguments.
    executed: list[list[str]] = []
    monkeypatch.setattr(azurite_script.os, "execv", lambda path, argv: executed.append(argv))
    monkeypatch.setattr(sys, "argv", ["scripts.azurite", "--location", str(tmp_path)])
    azurite_script.main()
    assert "--disableTelemetry" in executed[0]


def test_an_azurite_slow_to_stop_is_killed_after_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stopping make run must end its Azurite, however long that Azurite would linger after SIGTERM.
    ignores_sigterm = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"
    )
    lingering = subprocess.Popen([sys.executable, "-c", ignores_sigterm], stdout=subprocess.PIPE)  # noqa: S603
    assert lingering.stdout is not None and lingering.stdout.readline()  # its handler is in place
    monkeypatch.setattr(azurite_script, "STOP_TIMEOUT_SECONDS", 0.2)
    azurite_script.stop_process(lingering)
    assert lingering.returncode == -9  # killed, not left running behind make run


def published(names: list[str]) -> set[str]:
    """Top-level names that `.funcignore` (gitignore patterns, all top-level here) lets through."""
    patterns = [line.strip().rstrip("/") for line in (ROOT / ".funcignore").read_text().splitlines()]
    patterns = [pattern for pattern in patterns if pattern and not pattern.startswith("#")]
    return {name for name in names if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns)}


def test_publish_ships_the_app_and_nothing_local() -> None:
    top_level = [entry.name for entry in ROOT.iterdir()]
    local_only = [
        ".venv",
        ".venv-infra",
        "node_modules",
        ".azurite",
        ".local",
        "local.settings.json",
        "__azurite_db_table__.json",
        "__blobstorage__",
        "__queuestorage__",
        "__pycache__",
        ".env",
    ]
    shipped = published(top_level + local_only)  # this checkout, plus what a machine adds
    functions = {"get_referral", "update_referral", "subscriptions", "deliver_events"}
    assert {"host.json", "requirements.txt", "shared", *functions} <= shipped
    assert shipped <= {
        "host.json",
        "requirements.txt",
        "shared",
        *functions,
        "README.md",
        ".funcignore",
    }
