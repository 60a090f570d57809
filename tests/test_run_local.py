"""`make run`'s launcher and what `func azure functionapp publish` would upload: no Azurite needed."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest

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
