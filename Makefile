# Two commands do everything on a fresh machine:
#   make demo   set up, then run the main job on the embedded default model (SmolLM2)
#   make test   set up, then run the whole test suite (about 14 min on a 2-core CI machine)
#   make test-fast   the tiny-model unit tests only (no real model, no notebooks; 2 min 51 s)
#   make test-latest the backend tests on the newest releases the bounds allow (.venv-latest)
VENV ?= .venv
PY := $(VENV)/bin/python
NOTEBOOKS ?= $(sort $(wildcard notebooks/*.ipynb))

.PHONY: setup demo test test-fast test-latest lint bench tl3 clean-cache

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/semhooks run quickstart --out runs/quickstart

test: setup
	$(PY) -m pytest -q --durations=25 tests --nbmake $(NOTEBOOKS) --nbmake-timeout=1800

test-fast: setup
	$(PY) -m pytest -q -m "not real and not slow" tests

test-latest:
	SEMHOOKS_UNPINNED=1 VENV=.venv-latest bash scripts/setup.sh
	.venv-latest/bin/python -m pytest -q -m backend tests

clean-cache:
	$(VENV)/bin/semhooks cache clear

lint:
	$(VENV)/bin/ruff check semhooks recipes tests benchmarks
	$(VENV)/bin/ruff format --check semhooks recipes tests benchmarks
	$(VENV)/bin/mypy semhooks

tl3:
	bash scripts/setup_tl3.sh .venv-tl3
