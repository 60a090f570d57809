# The two commands a newcomer needs: `make run` (the API on http://127.0.0.1:7071 with Azurite) and
# `make test` (everything CI checks). Both install what they need on a fresh machine.
# The interpreter the virtualenv is made from: a working Python 3.13 (scripts/find-python.sh looks in
# pyenv's versions too, since its python3.13 shim answers only when 3.13 is selected). Set PYTHON to choose.
PYTHON ?=
VENV := .venv
PY := $(VENV)/bin/python
STAMP_PY := $(VENV)/.installed
STAMP_NODE := node_modules/.installed

.PHONY: run test unit lint infra-check soak bench token clean

$(STAMP_PY): requirements.txt requirements-dev.txt
	@if ! $(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then \
		interpreter=$$(PYTHON='$(PYTHON)' bash scripts/find-python.sh) || exit 1; \
		echo "Creating $(VENV) with $$interpreter"; rm -rf $(VENV); $$interpreter -m venv $(VENV); \
	fi
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(STAMP_NODE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: $(STAMP_PY) $(STAMP_NODE)
	$(PY) -m scripts.run_local

token: $(STAMP_PY)
	@$(PY) -m scripts.dev_tokens $(ARGS)

# Linters and the infra check first, so the last line of a run is the test summary.
test: $(STAMP_PY) $(STAMP_NODE)
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory infra-check
	$(PY) -m pytest -m "not soak"

lint: $(STAMP_PY)
	$(PY) -m ruff check .
	$(PY) -m mypy shared get_referral update_referral subscriptions deliver_events scripts

infra-check:
	bash scripts/check-infra.sh

soak: $(STAMP_PY) $(STAMP_NODE)
	$(PY) -m pytest -m soak

bench: $(STAMP_PY) $(STAMP_NODE)
	$(PY) -m bench.run $(ARGS)

clean:
	rm -rf $(VENV) .venv-infra node_modules .azurite .local .pytest_cache .mypy_cache .ruff_cache .hypothesis
