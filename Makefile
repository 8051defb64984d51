# The two set-up commands of README.md. Each installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   ?= demo

.PHONY: install demo test bench clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs only when requirements.txt or pyproject.toml change.
$(VENV)/.installed: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed

# The main job, end to end on the bundled corpus (examples/midi).
demo: install
	MAHLER_DEMO_ROOT=$(DEMO) bash scripts/demo.sh

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/encode.py

clean-demo:
	rm -rf $(DEMO)
