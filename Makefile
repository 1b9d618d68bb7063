# Two set-up commands: `make demo` and `make test`. Both install what they need, idempotently:
# a virtual environment outside the checkout (torch is several GB: installed once, reused by every
# clone and by CI), and the Kafka broker's jars from Maven Central (cached under ~/.m2).
SHELL := /bin/bash
PYTHON ?= python3
CACHE ?= $(HOME)/.cache/fleetloop
VENV ?= $(CACHE)/venv
PY := $(VENV)/bin/python
KAFKA_LIBS ?= $(CACHE)/kafka-libs
DEPS_STAMP := $(VENV)/.deps-$(shell sha256sum pyproject.toml | cut -c1-16)
KAFKA_STAMP := $(KAFKA_LIBS)/.stamp-$(shell sha256sum deploy/kafka/pom.xml | cut -c1-16)
PYTEST_ARGS ?=
export MLFLOW_DISABLE_TELEMETRY=true FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 RAY_USAGE_STATS_ENABLED=0
export FLEETLOOP_KAFKA_LIBS_DIR := $(KAFKA_LIBS)

.PHONY: install demo test lint format kafka-jars prometheus bench-deps clean
install: $(DEPS_STAMP) $(KAFKA_STAMP) prometheus
	@# The environment is shared between clones: point its editable install at this checkout.
	@# (-P: the check must not see the checkout through the working directory.)
	@if [ "$$($(PY) -P -c 'import fleetloop,os;print(os.path.dirname(os.path.dirname(fleetloop.__file__)))' 2>/dev/null)" != "$(CURDIR)" ]; then \
		echo "linking fleetloop -> $(CURDIR)"; $(PY) -m pip install -q --disable-pip-version-check --no-deps -e . ; fi

$(DEPS_STAMP):  # named by the hash of pyproject.toml: a fresh clone's new mtimes do not reinstall
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.deps-* && touch $@

kafka-jars: $(KAFKA_STAMP)
$(KAFKA_STAMP):  # named by the hash of pom.xml
	@command -v mvn >/dev/null || { echo "Maven (mvn) is needed to fetch Kafka's jars: apt-get install maven"; exit 3; }
	rm -rf $(KAFKA_LIBS) && mkdir -p $(KAFKA_LIBS)
	mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies -Dkafka.libs.dir=$(KAFKA_LIBS)
	@touch $@

# Prometheus (with promtool) and Alertmanager from Debian's packages. Optional to the rest of the stack:
# when they cannot be installed this says so and goes on (`fleetloop up` then reports them "not installed").
PROMETHEUS_PKGS ?= prometheus prometheus-alertmanager
prometheus:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
		echo "prometheus: not installed and no apt-get here; install Prometheus 2.x (prometheus, promtool) yourself" \
			"to run it in the local stack (optional)"; exit 0; fi; \
	apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(PROMETHEUS_PKGS); }; \
	echo "installing $(PROMETHEUS_PKGS) (apt-get)"; \
	if out=$$(apt_install 2>&1); then ok=1; \
	elif echo "$$out" | grep -qE "Unable to locate package|no installation candidate|Failed to fetch" \
		&& apt-get update -q >/dev/null 2>&1 && out=$$(apt_install 2>&1); then ok=1; \
	else ok=0; fi; \
	if [ $$ok = 1 ]; then echo "installed $$(prometheus --version 2>&1 | head -n1)"; \
	else \
		echo "prometheus: could not install $(PROMETHEUS_PKGS) with apt-get ($$(echo "$$out" | tail -n1));" \
			"the stack runs without it. To add it: sudo apt-get install --no-install-recommends $(PROMETHEUS_PKGS)"; \
	fi

demo: install
	$(VENV)/bin/fleetloop demo

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check fleetloop tests benchmarks
	$(VENV)/bin/ruff format --check fleetloop tests benchmarks
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format fleetloop tests benchmarks
	$(VENV)/bin/ruff check --fix fleetloop tests benchmarks

bench-deps: install
	$(PY) -m pip install -q -e '.[dev,bench]'

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache *.egg-info
