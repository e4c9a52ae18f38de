# mmpipe developer targets. `make demo` and `make test` do all setup themselves.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# uv needs the system CA store on our build machines; it ignores pip's local torch folder.
export UV_SYSTEM_CERTS := 1
# uv, unlike pip, writes no bytecode unless asked; with PYTHONDONTWRITEBYTECODE set (as on CI)
# every Ray helper and worker would then compile ray and torch from source at each start,
# which tripled Ray's start-up here (docs/benchmarks.md). Setup compiles them once.
# Under `uv run` Ray would rebuild the env in every worker: we call .venv/bin directly.
export RAY_ENABLE_UV_RUN_RUNTIME_ENV := 0
DEMO_DIR ?= demo_out
DEMO_N ?= 1200

.PHONY: setup lock demo test test-slow lint format bench clean

UV := $(PY) -m uv

$(BIN)/.synced: requirements.lock pyproject.toml
	@$(UV) --version >/dev/null 2>&1 || $(PY) -m pip install -q uv
	@test -x $(BIN)/python || $(UV) venv -q --python $(PY) $(VENV)
	$(UV) pip sync -q --python $(BIN)/python --compile-bytecode --require-hashes requirements.lock
	$(UV) pip install -q --python $(BIN)/python --no-deps -e .
	$(BIN)/python -m compileall -q pipeline jobs schemas tests >/dev/null
	@touch $@

setup: $(BIN)/.synced  ## create .venv from the hashed lock

lock:  ## re-resolve requirements.lock from pyproject.toml (no URLs are written)
	$(UV) pip compile pyproject.toml --all-extras --generate-hashes -q -o requirements.lock --python-version 3.11

demo: setup  ## sample corpus -> build -> curate -> features -> train -> eval -> report -> embed -> search, on a local Ray
	rm -rf $(DEMO_DIR)
	$(BIN)/mmpipe sample-corpus $(DEMO_DIR)/corpus --n $(DEMO_N)
	$(BIN)/mmpipe build $(DEMO_DIR)/corpus/manifest.jsonl --output $(DEMO_DIR)/build \
		--resize 224 --resize-mode keep_ratio --image-format jpg --shard-samples 100
	$(BIN)/python -c "import json,sys; r=json.load(open('$(DEMO_DIR)/build/build.json')); print('build.json counts:', json.dumps(r['counts']))"
	$(BIN)/mmpipe curate $(DEMO_DIR)/build --output $(DEMO_DIR)/curated
	$(BIN)/python -m jobs.extract_features --config jobs/configs/features.yaml \
		--shards $(DEMO_DIR)/curated --output $(DEMO_DIR)/features
	$(BIN)/python -m jobs.train_fusion --config jobs/configs/train.yaml \
		--data $(DEMO_DIR)/features --output $(DEMO_DIR)/run
	$(BIN)/mmpipe report $(DEMO_DIR)/run
	$(BIN)/mmpipe export $(DEMO_DIR)/run
	$(BIN)/python -m jobs.embed_bulk --config jobs/configs/embed.yaml \
		--shards $(DEMO_DIR)/curated --model $(DEMO_DIR)/run --output $(DEMO_DIR)/embeddings
	$(BIN)/python -m jobs.nightly_refresh --config jobs/configs/refresh.yaml \
		--shards $(DEMO_DIR)/curated --model $(DEMO_DIR)/run --output $(DEMO_DIR)/embeddings
	$(BIN)/mmpipe index $(DEMO_DIR)/embeddings
	$(BIN)/mmpipe search $(DEMO_DIR)/embeddings --text "a large red circle in the center" --column image -k 5
	$(BIN)/mmpipe search $(DEMO_DIR)/embeddings --text "a small blue star, top left" --column image -k 5 \
		--model $(DEMO_DIR)/run/export/model.onnx

test: setup  ## lint, type-check and run the test suite but the `slow` end-to-end runs
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest -q -x -m "not slow" -p no:cacheprovider --durations=15

test-slow: setup  ## the `slow` end-to-end runs: Ray Train, faults, two nodes, Jobs API (CI runs both)
	$(BIN)/python -m pytest -q -x -m slow -p no:cacheprovider --durations=25

lint: setup  ## ruff (lint + format check) and mypy on pipeline/
	$(BIN)/ruff check pipeline schemas jobs tests bench
	$(BIN)/ruff format --check pipeline schemas jobs tests bench
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix pipeline schemas jobs tests bench
	$(BIN)/ruff format pipeline schemas jobs tests bench

bench: setup  ## build throughput against a bare loop and img2dataset (see docs/benchmarks.md)
	$(BIN)/python bench/bench_build.py

clean:
	rm -rf $(DEMO_DIR) .mypy_cache .ruff_cache
