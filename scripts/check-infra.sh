#!/usr/bin/env bash
# Validates the Bicep templates in infra/ offline with checkov (no Azure, no Bicep CLI needed).
#
# Fails when checkov reports a failed check or a file it could not parse, or when it checked
# nothing at all. checkov itself exits 0 on parse errors, so the verdict comes from its JSON report.
#
# Usage (from anywhere in the repository): scripts/check-infra.sh
# checkov lives in its own virtualenv (.venv-infra, override with INFRA_VENV) because it pins
# many dependencies exactly; it is (re)installed only when requirements-infra.txt changes.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

venv="${INFRA_VENV:-.venv-infra}"
requirements="requirements-infra.txt"
stamp="$venv/.requirements-infra.sha256"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "Creating $venv ..."
  python3 -m venv "$venv"
fi

requirements_hash="$("$venv/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$requirements")"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$requirements_hash" ]]; then
  echo "Installing $requirements into $venv ..."
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  echo "$requirements_hash" > "$stamp"
fi

# Keep checkov offline: no policy-metadata download from Prisma Cloud, no PyPI update check.
export BC_SKIP_MAPPING=TRUE
export CKV_SKIP_PACKAGE_UPDATE_CHECK=true
export CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false

report="$(mktemp)"
trap 'rm -f "$report"' EXIT

echo "Running checkov $("$venv/bin/checkov" --version) on infra/ ..."
# The exit status is ignored on purpose: the JSON report below decides.
"$venv/bin/checkov" --framework bicep --directory infra --output json --compact --skip-download \
  > "$report" || true

"$venv/bin/python" - "$report" <<'PY'
import json
import sys

with open(sys.argv[1], encoding="utf-8") as handle:
    raw = handle.read()
try:
    data = json.loads(raw)
except json.JSONDecodeError:
    print("checkov did not produce a JSON report. Its output was:\n" + raw[-4000:])
    sys.exit(1)

# One framework gives one report object; with no Bicep files checkov prints only a bare summary.
reports = data if isinstance(data, list) else [data]
bicep = next((r for r in reports if r.get("check_type") == "bicep"), None)
if bicep is None:
    print("FAIL: checkov found no Bicep resources to check under infra/.")
    sys.exit(1)

summary = bicep["summary"]
results = bicep["results"]
print(
    f"checkov {summary.get('checkov_version')}: passed {summary['passed']}, failed {summary['failed']}, "
    f"skipped {summary['skipped']}, parse errors {summary['parsing_errors']}, "
    f"resources {summary['resource_count']}"
)
for check in results.get("skipped_checks", []):
    reason = (check.get("check_result") or {}).get("suppress_comment") or "No comment provided"
    print(f"  skipped {check['check_id']} on {check['resource']}: {reason}")
for check in results.get("failed_checks", []):
    print(f"  FAILED  {check['check_id']} {check['check_name']} on {check['resource']} ({check['file_path']})")
for path in results.get("parsing_errors", []):
    print(f"  PARSE ERROR in {path}")

problems = []
if summary["failed"]:
    problems.append(f"{summary['failed']} failed check(s)")
if summary["parsing_errors"]:
    problems.append(f"{summary['parsing_errors']} file(s) checkov could not parse")
if not summary["passed"] or not summary["resource_count"]:
    problems.append("no passed checks or no resources checked")
# checkov fills in "No comment provided" for a bare `// checkov:skip=CKV_X`.
unexplained = [
    c["check_id"]
    for c in results.get("skipped_checks", [])
    if ((c.get("check_result") or {}).get("suppress_comment") or "").strip() in ("", "No comment provided")
]
if unexplained:
    problems.append("skipped without a reason: " + ", ".join(unexplained))

if problems:
    print("FAIL: " + "; ".join(problems))
    sys.exit(1)
print("OK: infra/ passes checkov.")
PY
