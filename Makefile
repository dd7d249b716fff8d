# Two commands for a newcomer:  `make scan DIR=path/to/photos`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DIR ?= ../shared/eval/groups

.PHONY: setup bench-setup system-packages scan serve test lint screenshots docker-e2e

$(BIN)/image-grouping: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,licence-clean]'
	@touch $@

setup: system-packages $(BIN)/image-grouping

system-packages:
	@scripts/install-system-packages

# The benchmarks' references (bench/pipeline.py's plain InsightFace, psutil): not needed to run or test.
bench-setup: setup
	$(BIN)/pip install -q -e '.[bench]'

# Analyse a folder of photos into the embedded SQLite database, group the faces, write the gallery.
scan: setup
	$(BIN)/image-grouping scan "$(DIR)"
	@echo "See and correct the persons in your browser: make serve, then open http://127.0.0.1:8000/"

# The People web app on http://127.0.0.1:8000/ (API docs at /docs); Ctrl-C stops it.
serve: setup
	$(BIN)/image-grouping serve

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/pytest

# The README's screenshots of the web app, taken again into docs/ (a test run leaves them as they are).
screenshots: setup
	UPDATE_SCREENSHOTS=1 $(BIN)/pytest tests/web/test_browser.py -k screenshots

# Build the image and test its container end to end (as root; see scripts/docker-e2e).
docker-e2e: setup
	scripts/docker-e2e
