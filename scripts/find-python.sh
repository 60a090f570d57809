#!/usr/bin/env bash
# Prints the path of a Python 3.13 interpreter that actually runs, or fails saying where it looked.
#
# A pyenv shim named python3.13 exists on machines where 3.13 is installed but not selected, and then
# it only prints "command not found": so each candidate is run, not just found on PATH.
# Usage: PYTHON=$(scripts/find-python.sh)   (set PYTHON yourself to skip the search)
set -u
wanted="3.13"
if [[ -n "${PYTHON:-}" ]]; then
  candidates=("$PYTHON")  # the caller chose: check that one only
else
  candidates=(python3.13)
  for dir in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin /usr/local/bin /usr/bin; do
    [[ -x "$dir/python3.13" ]] && candidates+=("$dir/python3.13")
  done
  candidates+=(python3)
fi
for candidate in "${candidates[@]}"; do
  version="$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" || continue
  if [[ "$version" == "$wanted" ]]; then
    command -v "$candidate" 2>/dev/null || echo "$candidate"
    exit 0
  fi
done
echo "No working Python $wanted found (tried: ${candidates[*]})." >&2
echo "Install it (e.g. 'pyenv install 3.13'), or point PYTHON at a 3.13 interpreter." >&2
exit 1
