# aircast: `make run` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
FLINK_VENV := .venv-flink
CHECKOV_VENV := .venv-checkov
FLINK_JAR := build/aircast-flink.jar
# uv through the interpreter: a fresh pip install needs no PATH (or pyenv rehash).
UV := $(PYTHON) -m uv
export UV_SYSTEM_CERTS := 1
# Ray and TensorFlow stay on 127.0.0.1; no usage stats; one auth mode everywhere.
export RAY_USAGE_STATS_ENABLED := 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_AUTH_MODE ?= disabled
PYTEST_ARGS ?=

.PHONY: help setup system venvs run test test-fast check lint typecheck layers clean stack-up stack-down stack-status bench-e2e soak

help:
	@echo "make run    set up, start the local stack, run the pipeline, print the URLs"
	@echo "make test   set up, then run every test against real servers"
	@echo "make test-fast  the unit and domain tests only: no servers, no browser, no Flink"
	@echo "make check  ruff + mypy + the import contracts"

setup: system venvs

system:
	@bash scripts/setup-system.sh

venvs: $(VENV)/.installed $(FLINK_VENV)/.installed $(FLINK_JAR) $(CHECKOV_VENV)/.installed

.PHONY: .uv-bootstrap
.uv-bootstrap:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q uv

# The app environment: Ray, TensorFlow and the shared core.
$(VENV)/.installed: pyproject.toml | .uv-bootstrap
	@echo "building $(VENV) (ray, tensorflow-cpu, the shared core)"
	@[ -x $(VENV)/bin/python ] || $(UV) venv -q --python $(PYTHON) $(VENV)
	@$(UV) pip install -q --python $(VENV)/bin/python -e '.[app,dev]'
	@touch $@

# The Flink environment: apache-flink's pins conflict with TensorFlow's, so the job
# gets its own virtualenv; the shared core is installed into it too.
$(FLINK_VENV)/.installed: pyproject.toml | .uv-bootstrap
	@echo "building $(FLINK_VENV) (apache-flink 2.0.1 + Kafka connector, the shared core)"
	@[ -x $(FLINK_VENV)/bin/python ] || $(UV) venv -q --python $(PYTHON) $(FLINK_VENV)
	@$(UV) pip install -q --python $(FLINK_VENV)/bin/python -e '.[flink]'
	@touch $@

# checkov scans the rendered Kubernetes manifests (tests/test_kube_checkov.py); its pins
# are its own, so it gets a virtualenv of its own.
$(CHECKOV_VENV)/.installed: | .uv-bootstrap
	@echo "building $(CHECKOV_VENV) (checkov 3.3.30, the manifest scan)"
	@[ -x $(CHECKOV_VENV)/bin/python ] || $(UV) venv -q --python $(PYTHON) $(CHECKOV_VENV)
	@$(UV) pip install -q --python $(CHECKOV_VENV)/bin/python "checkov==3.3.30"
	@touch $@

# The Flink job's JVM fast lane (flink/java), compiled against the Flink jars PyFlink ships.
$(FLINK_JAR): $(FLINK_VENV)/.installed flink/java/build.sh $(wildcard flink/java/aircast/flink/*.java)
	@bash flink/java/build.sh "$$($(FLINK_VENV)/bin/python -c 'import os, pyflink; print(os.path.join(os.path.dirname(pyflink.__file__), "lib"))')" $@

run: setup
	$(VENV)/bin/aircast run

# Two workers, a file at a time each (a file's module fixtures stay on one worker);
# each worker starts its own session stack on free ports. Then, alone, the tests that
# load the whole machine on purpose (the newcomer's make run with both cores spinning)
# or hold wall-clock budgets (the map at network size): beside the other worker's
# drills they would measure each other.
XDIST := -n 2 --dist loadfile --no-loadscope-reorder
# The static checks first (ruff, strict mypy, the import contracts): CI runs make test.
test: setup check
	$(VENV)/bin/python -m pytest $(XDIST) -m "not soak and not exclusive" $(PYTEST_ARGS)
	$(VENV)/bin/python -m pytest -m "exclusive" $(PYTEST_ARGS)

# The inner loop: what needs no server, browser or Flink mini-cluster. Two workers: its
# tests mostly wait (commands starting and stopping, retries' backoff), so a second one
# halves the time (128 s -> 68 s for the same CPU); more workers cost more to start than
# they save.
FAST := not soak and not slow and not servers and not flink and not browser and not exclusive
test-fast: venvs
	$(VENV)/bin/python -m pytest -n 2 -m "$(FAST)" $(PYTEST_ARGS)

# One hour at 10x the real network's rate (AIRCAST_SOAK_SECONDS, AIRCAST_SOAK_RECORDS_PER_S).
soak: setup
	$(VENV)/bin/python -m pytest -m soak -s tests/test_soak.py

stack-up: setup
	$(VENV)/bin/aircast stack up
stack-down:
	$(VENV)/bin/aircast stack down
stack-status:
	$(VENV)/bin/aircast stack status

# Benchmarks: `make bench-<name>` runs benchmarks/bench_<name>.py; its last line is JSON.
bench-%: setup
	$(VENV)/bin/python benchmarks/bench_$*.py

# bench-e2e compares with luftdatenpumpe 0.22, in a virtualenv of its own (its pins are
# its own business; only the benchmark uses it).
PEER_VENV := .venv-peer
$(PEER_VENV)/.installed: | .uv-bootstrap
	@echo "building $(PEER_VENV) (luftdatenpumpe 0.22, the peer bench-e2e measures beside aircast)"
	@[ -x $(PEER_VENV)/bin/python ] || $(UV) venv -q --python $(PYTHON) $(PEER_VENV)
	@$(UV) pip install -q --python $(PEER_VENV)/bin/python "luftdatenpumpe==0.22.0" "setuptools<81"
	@touch $@

bench-e2e: setup $(PEER_VENV)/.installed
	$(VENV)/bin/python benchmarks/bench_e2e.py

lint:
	$(VENV)/bin/ruff check aircast aircast_cli actors flink training serve kuberay tests benchmarks
	$(VENV)/bin/ruff format --check aircast aircast_cli actors flink training serve kuberay tests benchmarks
typecheck:
	$(VENV)/bin/mypy
# The import contracts of pyproject.toml: the domain imports no runtime.
layers:
	$(VENV)/bin/lint-imports
check: lint typecheck layers

clean:
	-$(VENV)/bin/aircast stack down
	rm -rf .aircast
