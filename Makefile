# Two commands for a newcomer:  `make scan DIR=path/to/photos`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DIR ?= ../shared/eval/groups

.PHONY: setup system-packages scan test lint

$(BIN)/image-grouping: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

setup: system-packages $(BIN)/image-grouping

system-packages:
	@scripts/install-system-packages

# Analyse a folder of photos into the embedded SQLite database, group the faces, write the gallery.
scan: setup
	$(BIN)/image-grouping scan "$(DIR)"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/pytest
