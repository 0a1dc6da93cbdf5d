# Weight Atlas developer targets. `make help` lists them.
PY ?= .venv/bin/python
VENV ?= .venv

.PHONY: help install app test test-all lint format ci screenshots bench-app

help:
	@echo "make install   create .venv and install weightatlas with dev extras"
	@echo "make app       start the explorer on the embedded demo atlas (assets/demo)"
	@echo "make test      fast test suite"
	@echo "make test-all  every suite (slow + browser), as CI runs it"
	@echo "make lint      ruff check + format check"
	@echo "make screenshots  retake the README screenshots from assets/demo (headless Chromium)"
	@echo "make bench-app    explorer speed in the browser on a 20,000-model atlas (JSON)"

$(VENV)/bin/python:
	python3 -m venv $(VENV)

install: $(VENV)/bin/python
	$(PY) -m pip install -e ".[dev]"

app:
	$(PY) -m streamlit run explorer/app.py

test:
	$(PY) -m pytest

test-all:
	$(PY) -m pytest -m "slow or browser or not slow"

lint:
	$(PY) -m ruff check core explorer tests
	$(PY) -m ruff format --check core explorer tests

format:
	$(PY) -m ruff check --fix core explorer tests
	$(PY) -m ruff format core explorer tests

ci:
	bash .ci/run

screenshots:
	$(PY) -m explorer.bench screenshots

bench-app:
	$(PY) -m core.cli bench app --n 20000
