# The README's two commands: `make demo` and `make test`. Each installs what it needs first (on a fresh
# Debian/Ubuntu machine: the X server packages for napari, a virtual environment with the pinned
# torch, the package with its test extras), then runs. `.ci/run` calls the same targets.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_PACKAGES := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 \
	libxcb-render-util0 libxkbcommon-x11-0 libxcb-shape0 libxcb-cursor0 libegl1 libgl1 libdbus-1-3 \
	libfontconfig1
XVFB := xvfb-run -a -s "-screen 0 1600x1200x24"

.PHONY: demo test install system lint benchmark

demo: install
	$(BIN)/spahgc demo --out out/demo

test: install system
	$(XVFB) $(BIN)/python -m pytest -q

benchmark: install
	$(BIN)/spahgc benchmark examples/her2st_cohort.csv --genes ../shared/data/her2st/her2st_785_genes.txt --out out/benchmark

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

install: $(VENV)/.installed

# torch and torchvision first, pinned (the CPU machines' pip cap); then the package, editable
$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install -q -e ".[testing]"
	touch $@

# napari's tests draw real windows: an X server (Xvfb) and the libraries Qt needs
system:
	@if ! command -v xvfb-run >/dev/null || ! command -v xauth >/dev/null; then \
		export DEBIAN_FRONTEND=noninteractive; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi
