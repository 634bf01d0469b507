# The two commands of the contract: `make demo` and `make test`. Both set up what they need on a
# fresh Debian machine (root): Mosquitto from apt, a .venv with pinned dependencies, and the
# MicroPython libraries the ESP32 firmware has frozen in.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.meetkit-installed
MPYLIB := build/mpylib/umqtt/simple.py

.PHONY: setup demo test faults bench soak clean system-deps

setup: system-deps $(STAMP) $(MPYLIB)

system-deps:
	@command -v mosquitto >/dev/null 2>&1 || command -v /usr/sbin/mosquitto >/dev/null 2>&1 \
	  || { echo "installing mosquitto (apt)"; apt-get update -qq && \
	       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null \
	  || { echo "installing python3-venv (apt)"; apt-get update -qq && \
	       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >/dev/null; }
	@command -v gcc >/dev/null 2>&1 \
	  || { echo "installing gcc (apt): the noise kernel's C reference"; apt-get update -qq && \
	       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null; }

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

$(MPYLIB): $(STAMP) tools/mpylib.py
	$(BIN)/python -m meetkit_tools.mpylib build/mpylib

demo: setup
	$(BIN)/meetkit demo

test: setup
	$(BIN)/python -m pytest -q -m "not soak"

# The fault suite alone, with its table and the faults_* figures in build/bench/results.jsonl.
faults: setup
	MEETKIT_FAULTS_RECORD=1 $(BIN)/python -m pytest -q -rA tests/faults

soak: setup
	$(BIN)/python -m pytest -q -m soak

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf build $(VENV)
