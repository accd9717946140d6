# Two commands for a newcomer: `make demo` (the whole pipeline offline) and `make test`.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: these releases are the ones the project is tested with.
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/faces demo

test: setup
	$(BIN)/python -m pytest -q --durations=15

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# The benchmarks (bench/photos.py, bench/site.py and bench/timing.py are their helpers, not benchmarks).
BENCHES := metrics preprocess scrape train validate

bench: setup
	for m in $(BENCHES); do echo "== bench.$$m"; $(BIN)/python -m bench.$$m || exit 1; done

clean:
	rm -rf $(VENV) demo-data .pytest_cache
