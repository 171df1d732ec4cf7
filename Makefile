# Two commands for a fresh machine (only Python 3.11 needed): `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | cksum | cut -d' ' -f1)

.PHONY: setup lock dist demo test unit lint bench soak tools clean

# requirements.lock pins every package to the version CI tested (pip constraints), the
# build backend (setuptools) included: --build-constraint pins the one that builds the
# editable install too.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --build-constraint requirements.lock -c requirements.lock -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

## lock: re-pin requirements.lock to the newest versions pyproject.toml allows
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip && .lock-venv/bin/pip install -q '.[dev]'
	{ sed -n '1,3p' requirements.lock; \
	  .lock-venv/bin/pip freeze --all --exclude event-pipeline --exclude pip; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lock-venv

## dist: the sdist and the wheel in dist/, built offline with the lock's setuptools
dist: setup
	rm -rf build dist event_pipeline.egg-info
	$(BIN)/python -c 'import setuptools.build_meta as b; b.build_sdist("dist")' >/dev/null
	$(BIN)/pip wheel -q --no-deps --no-build-isolation --no-index --wheel-dir dist .
	rm -rf build event_pipeline.egg-info
	@ls dist

## demo: embedded broker + PostgreSQL, a worker, a demo load, rollups and a reconciliation
demo: setup
	$(BIN)/python -m tools demo

## tools: system tools the suite uses, from Debian's packages: docker-compose validates the
## compose file offline, headless chromium renders the gateway's live page, and promtool
## (package prometheus) checks and unit-tests the alert rules. One apt-get update for all.
tools:
	@need=""; \
	command -v docker-compose >/dev/null 2>&1 || need="$$need docker-compose"; \
	command -v chromium >/dev/null 2>&1 || need="$$need chromium"; \
	command -v promtool >/dev/null 2>&1 || need="$$need prometheus"; \
	if [ -z "$$need" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "missing tools the suite uses: install the Debian packages$$need"; exit 0; fi; \
	echo "installing the Debian packages the suite uses:$$need"; \
	apt-get update -qq >/dev/null; \
	for pkg in $$need; do \
	  flags=""; [ "$$pkg" = prometheus ] && flags="--no-install-recommends"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$flags $$pkg >/dev/null || exit 1; \
	done

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
	rm -rf .stack .pytest_cache build dist event_pipeline.egg-info
