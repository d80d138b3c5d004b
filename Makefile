# viralwatch: `make demo` runs the main job, `make test` runs every check CI runs.
# Both set everything up on a fresh machine (a virtual environment in .venv;
# Apache Kafka's jars from Maven Central in .kafka/lib, which needs Java 17 and
# Maven; as root, the Debian programs the integration tests drive).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# `make test`'s pytest workers: two, a module each (its fixtures start once); the suite
# waits half its time (replays at a set speed, brokers' starts), so two overlap on two cores.
TEST_WORKERS ?= -n 2 --dist loadfile
# The compiled core (rust/) builds with cargo; rustup installs it in ~/.cargo/bin.
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
CARGO_MANIFEST := rust/Cargo.toml
# Every input of the compiled core: a change to any rebuilds the editable install.
CORE_SOURCES := $(shell find rust -path rust/target -prune -o -type f \( -name '*.rs' -o -name 'Cargo.*' \) -print)

.PHONY: demo test lint typecheck unit programs kafka bench clean core cargo-test golden docs-img

KAFKA_STAMP := .kafka/lib/.built

# Apache Kafka (KRaft) from Maven Central's jars: the broker's runtime classpath,
# copied into .kafka/lib (git-ignored). `viralwatch broker --kafka` runs it.
$(KAFKA_STAMP): deploy/kafka/pom.xml
	@if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        echo "installing Java 17 and Maven (apt-get)"; \
	        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	            openjdk-17-jdk-headless maven >/dev/null; \
	    else echo "Apache Kafka needs Java 17 and Maven (java/mvn not found)"; exit 1; fi; \
	fi
	mvn -B -q -Dstyle.color=never -f deploy/kafka/pom.xml package
	touch $@

kafka: $(KAFKA_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# An editable install: streams/ and graphs/ are imported from this tree, and
# maturin builds the compiled core into streams/_core*.so. Re-run (it is, by
# any target here) whenever rust/ changes: Python imports the built module,
# not the sources.
$(VENV)/.installed: pyproject.toml $(CORE_SOURCES) | $(BIN)/python
	@command -v $(CARGO) >/dev/null || { echo "the compiled core needs a Rust toolchain (cargo): https://rustup.rs"; exit 1; }
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

core: $(VENV)/.installed

# lint and typecheck read the sources (mypy reads streams/_core.pyi, not the build): they
# need the dev tools, which the first install brings, not a fresh build of the core. A
# dependency on .installed rebuilt the core (pip rewrites streams/_core*.so) whenever a file
# under rust/ was newer, under a `make golden` or test run going on beside.
$(BIN)/ruff $(BIN)/mypy: | $(BIN)/python
	$(MAKE) --no-print-directory $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/viralwatch demo

# The Debian programs the integration tests run for real: Prometheus,
# Alertmanager (promtool, amtool) and Chromium. Installed when missing and
# this is root with apt-get; otherwise those tests skip and say why.
programs:
	@if command -v prometheus >/dev/null && command -v prometheus-alertmanager >/dev/null \
	    && command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing prometheus, prometheus-alertmanager, chromium (apt-get)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	        prometheus prometheus-alertmanager chromium >/dev/null; \
	else echo "note: prometheus/alertmanager/chromium missing and not root: their tests will skip"; fi

lint: | $(BIN)/ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(CARGO) fmt --manifest-path $(CARGO_MANIFEST) --all --check
	$(CARGO) clippy --manifest-path $(CARGO_MANIFEST) --workspace --all-targets --quiet -- -D warnings

cargo-test:
	$(CARGO) test --manifest-path $(CARGO_MANIFEST) --workspace --quiet

typecheck: | $(BIN)/mypy
	$(BIN)/mypy streams graphs bench

unit: $(VENV)/.installed
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

test: $(VENV)/.installed $(KAFKA_STAMP) programs lint typecheck cargo-test
	@$(BIN)/pytest $(TEST_WORKERS) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc = 5 ]; then echo "pytest ran no test: that is a failure here"; exit 1; fi; exit $$rc

# Every golden output (tests/golden), the million-event stream included (minutes;
# `make test` checks the others): run after a change to the compiled core.
golden: $(VENV)/.installed
	$(BIN)/python tests/golden.py

# The README's screenshots of the views (docs/img), taken again by the browser test
# (Debian's Chromium, two workers on Apache Kafka); a plain test run writes them to tmp.
docs-img: $(VENV)/.installed $(KAFKA_STAMP)
	DOCS_IMG_DIR=$(CURDIR)/docs/img $(BIN)/pytest tests/test_views_integration.py -k browser $(PYTEST_ARGS)

bench: $(VENV)/.installed $(KAFKA_STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/bench_pdq.py
	$(BIN)/python bench/bench_core.py
	$(BIN)/python bench/bench_reorder.py
	$(BIN)/python bench/bench_prediction.py
	$(BIN)/python bench/bench_broker.py
	$(BIN)/python bench/bench_pipeline.py

clean:
	rm -rf $(VENV) .kafka .pytest_cache .mypy_cache .ruff_cache rust/target streams/_core*.so
