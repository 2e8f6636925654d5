# Two commands for a fresh machine: `make demo` (set up + run the demo) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)

.PHONY: demo test install clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ns-distill demo

# Debian's chromium for the viewer's browser test (tests/viewer/test_viewer.py skips, saying why, where it cannot be installed)
browser:
	@command -v chromium >/dev/null || $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
		|| ($(SUDO) apt-get update -qq >/dev/null 2>&1 && $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1) \
		|| echo "chromium could not be installed with apt-get: the viewer's browser test will skip"

test: $(STAMP) browser
	$(BIN)/ruff check pvdal_ns tests benchmarks scripts
	$(BIN)/python -m pytest -q --durations=30 tests

clean:
	rm -rf $(VENV) outputs
