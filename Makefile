# Two commands for a fresh machine (only Python 3.11 needed): `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | cksum | cut -d' ' -f1)

.PHONY: setup lock demo test unit lint bench soak tools clean

# requirements.lock pins every package to the version CI tested (pip constraints).
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

## lock: re-pin requirements.lock to the newest versions pyproject.toml allows
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip && .lock-venv/bin/pip install -q '.[dev]'
	{ sed -n '1,3p' requirements.lock; .lock-venv/bin/pip freeze --exclude event-pipeline; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lock-venv

## demo: embedded broker + PostgreSQL, a worker, a demo load, rollups and a reconciliation
demo: setup
	$(BIN)/python -m tools demo

## tools: system tools the suite uses (docker-compose validates the compose file offline;
## promtool, from Debian's prometheus package, checks and unit-tests the alert rules)
tools:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing docker-compose (Debian package) to validate docker-compose.yml"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose) >/dev/null; \
	  else echo "docker-compose is missing: install it (apt-get install docker-compose)"; fi; }
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing promtool (Debian package prometheus) to check deploy/prometheus"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >/dev/null; \
	  else echo "promtool is missing: install it (apt-get install prometheus)"; fi; }

## test: lint + the whole suite (unit, integration, chaos); starts what it needs
test: setup tools lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

unit: setup
	$(BIN)/python -m pytest -q tests/unit

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m tools bench

## soak: ROUNDS rounds of crashes and rescaling per broker (Tansu, Apache Kafka), exact checks
ROUNDS ?= 30
soak: setup
	CHAOS_ROUNDS=$(ROUNDS) $(BIN)/python -m pytest -q -p no:cacheprovider -x tests/chaos/test_soak.py

clean:
	-$(BIN)/python -m pipeline stack down 2>/dev/null
	rm -rf .stack .pytest_cache
