# The two commands of the contract: `make demo` and `make test`. Both set up what they need on a
# fresh Debian machine (root): Mosquitto from apt, a .venv with pinned dependencies, and the
# MicroPython libraries the ESP32 firmware has frozen in.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.meetkit-installed
MPYLIB := build/mpylib/umqtt/simple.py

.PHONY: setup demo test faults bench soak clean system-deps install-gateway

setup: system-deps $(STAMP) $(MPYLIB)

system-deps:
	@command -v mosquitto >/dev/null 2>&1 || command -v /usr/sbin/mosquitto >/dev/null 2>&1 \
	  || { echo "installing mosquitto (apt)"; apt-get update -qq && \
	       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null \
	  || { echo "installing python3-venv (apt)"; apt-get update -qq && \
	       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >/dev/null; }
	@command -v ip >/dev/null 2>&1 || command -v /usr/sbin/ip >/dev/null 2>&1 \
	  || { echo "installing iproute2 (apt): a network namespace for a node whose gateway goes silent"; \
	       apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null; }
	@command -v gcc >/dev/null 2>&1 \
	  || { echo "installing gcc (apt): the noise kernel's C reference"; apt-get update -qq && \
	       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null; }
	@{ command -v victoria-metrics && command -v chromium && command -v openssl; } >/dev/null 2>&1 \
	  || { echo "installing victoria-metrics, chromium, openssl (apt): the gateway's upstream, page and TLS tests"; \
	       apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	       victoria-metrics chromium openssl >/dev/null; }
# promtool (Debian ships it in prometheus) checks /metrics and the region's alert rules in the tests,
# and the region's tests run /usr/bin/prometheus itself (tests/region); where systemd runs, the
# package also starts a Prometheus server on :9090 (`systemctl disable --now prometheus` stops it)
	@{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 \
	  || { echo "installing prometheus (apt): promtool and Prometheus for the gateway's /metrics and the region's alerts"; apt-get update -qq && \
	       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

$(MPYLIB): $(STAMP) tools/mpylib.py
	$(BIN)/python -m meetkit_tools.mpylib build/mpylib

# DEMO_PORT=8090: the status page's port (default 8470, or $$MEETKIT_DEMO_PORT)
demo: setup
	$(BIN)/meetkit demo $(if $(DEMO_PORT),--port $(DEMO_PORT))

test: setup
	$(BIN)/python -m pytest -q -m "not soak" -n 3 --dist loadfile

# The fault suite alone (and the region's scenarios), with its table and the faults_* and region_*
# figures in build/bench/results.jsonl.
faults: setup
	MEETKIT_FAULTS_RECORD=1 $(BIN)/python -m pytest -q -rA tests/faults tests/region/test_region_faults.py

# The long runs (tests/soak), never part of `make test`: a simulated week of the fault suite's
# faults on two nodes (about half an hour) and a day of steady load on the gateway process, its
# memory and descriptors watched (24 hours; MEETKIT_SOAK_HOURS=1 for a shorter one); and a power
# cut at every flash program of an install, a rollback and a proof (tests/sim/test_trial.py, about
# 6 minutes; `make test` cuts at every 5th), and of a proof in a rollout with the real gateway
# (tests/sim/test_proof_cut.py, about 4 minutes; `make test`: every 5th); and a rollout to 20 simulated nodes in waves with the
# real gateway (tests/faults/test_fleet_faults.py, about a minute; `make test` rolls out to 6); and a
# gateway of a region cut off from the regional store for 6 simulated hours (tests/region/test_region_faults.py;
# `make test`: one hour).
soak: setup
	$(BIN)/python -m pytest -q -rA -s -m soak tests/soak tests/sim/test_trial.py tests/sim/test_appswap.py tests/sim/test_proof_cut.py tests/faults/test_fleet_faults.py tests/region/test_region_faults.py

bench: setup
	$(BIN)/python -m bench

# The gateway on a Raspberry Pi (Raspberry Pi OS bookworm), as root: a venv with the gateway and
# its runtime dependency only (no simulator, no dev tools), the config, the systemd unit. DESTDIR
# installs into another root (the tests do); systemd is started only on a machine that runs it.
PREFIX ?= /opt/meetkit
DESTDIR ?=
install-gateway:
	@command -v mosquitto >/dev/null 2>&1 || [ -n "$(DESTDIR)" ] || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients python3-venv >/dev/null; }
	$(PYTHON) -m venv $(DESTDIR)$(PREFIX)/venv
	$(DESTDIR)$(PREFIX)/venv/bin/pip install -q --disable-pip-version-check .
	install -d $(DESTDIR)$(PREFIX)/docs $(DESTDIR)/etc/meetkit $(DESTDIR)/etc/systemd/system
	install -m 0644 docs/operator.md $(DESTDIR)$(PREFIX)/docs/operator.md
	[ -f $(DESTDIR)/etc/meetkit/gateway.toml ] || install -m 0644 gateway/gateway.example.toml $(DESTDIR)/etc/meetkit/gateway.toml
	install -m 0644 packaging/meetkit-gateway.service $(DESTDIR)/etc/systemd/system/meetkit-gateway.service
	# the public page's publisher, not enabled (docs/operator.md, "The public page")
	install -m 0644 packaging/meetkit-public.service packaging/meetkit-public.timer $(DESTDIR)/etc/systemd/system/
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
	  systemctl daemon-reload && systemctl enable --now meetkit-gateway && \
	  systemctl --no-pager status meetkit-gateway | head -5; \
	else echo "installed; start it with: systemctl daemon-reload && systemctl enable --now meetkit-gateway"; fi

clean:
	rm -rf build $(VENV)
