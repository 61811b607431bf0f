# firstword: two commands on a fresh machine.
#   make run   - create .venv, install requirements.txt, serve page + WebSocket on 127.0.0.1:8765
#   make test  - same venv plus test tools; lint, types, then the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8765

.PHONY: run test lint bench bench-server cluster clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

# Tests cover the transformers VITS backend too: torch (CPU, pinned) and transformers.
$(VENV)/.dev: requirements-dev.txt requirements.txt requirements-vits.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt -r requirements-vits.txt
	touch $(VENV)/.runtime $@

run: $(VENV)/.runtime
	$(BIN)/python server.py --host $(HOST) --port $(PORT)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

test: lint
	$(BIN)/python -m pytest

bench: $(VENV)/.runtime
	$(BIN)/python -m engine.bench

bench-server: $(VENV)/.runtime
	$(BIN)/python -m client.bench --sessions 14 --duration 30

# N replicas behind nginx on 127.0.0.1 until Ctrl-C (needs Debian's nginx: apt-get install nginx).
REPLICAS     ?= 3
CLUSTER_PORT ?= 8080
cluster: $(VENV)/.runtime
	$(BIN)/python -m scripts.cluster --replicas $(REPLICAS) --port $(CLUSTER_PORT)

clean:
	rm -rf $(VENV) models/cache .mypy_cache .ruff_cache .pytest_cache
