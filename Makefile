# Two commands do everything on a fresh machine:
#   make demo   set up, then run the main job on the embedded default model (SmolLM2)
#   make test   set up, then run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
NOTEBOOKS ?= $(sort $(wildcard notebooks/*.ipynb))

.PHONY: setup demo test lint bench tl3

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/semhooks run quickstart --out runs/quickstart

test: setup
	$(PY) -m pytest -q tests --nbmake $(NOTEBOOKS) --nbmake-timeout=1800

lint:
	$(VENV)/bin/ruff check semhooks recipes tests benchmarks
	$(VENV)/bin/ruff format --check semhooks recipes tests benchmarks
	$(VENV)/bin/mypy semhooks

tl3:
	bash scripts/setup_tl3.sh .venv-tl3
