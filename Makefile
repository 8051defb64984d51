# The two set-up commands of README.md. Each installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   ?= demo

.PHONY: install browser demo test test-cluster bench clean-demo

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

# Debian's chromium for the web-page test (tests/integration/test_serve_page.py), driven by Playwright.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

test: install browser
	$(BIN)/python -m pytest -q

# The cluster checks, a CI step of their own (~4 min): the whole path on S3 (moto on 127.0.0.1)
# across a simulated 3-node cluster, and `ray job submit` to a Ray head started for the test.
test-cluster: install
	$(BIN)/python -m pytest -q tests/cluster

bench: install
	$(BIN)/python bench/encode.py

clean-demo:
	rm -rf $(DEMO)
