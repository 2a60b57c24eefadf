# community-pulse developer targets. On a fresh machine you need only Python 3.11, Java 17+,
# Maven and make: `make setup` creates .venv, installs the locked dependencies, caches the
# Kafka jars (outside the repo, in ${PULSE_CACHE_DIR:-~/.cache/community-pulse}) and
# installs Prometheus (apt-get, as root) when it is missing.
#
#   make test    ruff + mypy + pytest (pytest starts its own Kafka broker on free ports)
#   make demo    run the end-to-end demo
#   make bench   run the benchmark
#   make faults  long fault runs against a real broker or cluster (~25 min; docs/reliability.md)
#   make soak    10 minutes at a steady rate with a fast event clock
#   make lint    ruff + mypy only
#   make lock    regenerate requirements.lock (needs uv: `pip install uv`)
#   make clean   remove .venv and tool caches (not the Kafka jar cache)

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-deps
PIP := $(VPY) -m pip --disable-pip-version-check
PYTEST_ARGS ?=
DEMO_ARGS ?=

# python3.11, or python3 when that is 3.11.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || \
	(python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null && command -v python3))

.PHONY: setup test lint demo bench lock clean faults soak

$(VPY):
	@if [[ -z "$(PYTHON)" ]]; then echo "error: Python 3.11 not found (need python3.11 or python3 = 3.11)" >&2; exit 1; fi
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(VPY) requirements.lock pyproject.toml
	@$(VPY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
		{ echo "error: $(VENV) is not Python 3.11; run 'make clean' first" >&2; exit 1; }
	$(PIP) install -q -r requirements.lock
	$(PIP) install -q --no-deps -e .
	@touch $@

setup: $(STAMP)
	$(VPY) -m devkit.devkafka fetch
	bash deploy/prometheus/install.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint
	$(VPY) -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/community-pulse demo $(DEMO_ARGS)

bench: setup
	$(VPY) bench/run.py

faults: setup
	$(VPY) -m pytest -q -rA -s --faults tests/test_faults_long.py tests/test_faults_cluster.py $(PYTEST_ARGS)

soak: setup
	$(VPY) -m pytest -q -rA -s --soak tests/test_soak.py $(PYTEST_ARGS)

# Needs uv on PATH or in the venv (`pip install uv`).
lock:
	@UV=$$(command -v uv || echo $(VENV)/bin/uv); \
	if [[ ! -x "$$UV" ]]; then echo "error: uv not found; run 'pip install uv' (or '$(PIP) install uv')" >&2; exit 1; fi; \
	"$$UV" pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
