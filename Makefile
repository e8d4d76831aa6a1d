# Everything a fresh Debian/Ubuntu machine needs, from nothing. Idempotent: stamps skip done work.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_PIN := torch==2.13.0
APT_PKGS := clang llvm libbpf-dev libbpf1 bpftool linux-perf
BPF_SRC := bpf/lbprobe.bpf.c
BPF_OBJ := lbagent/bpf/lbprobe.bpf.o
VMLINUX_H := bpf/vmlinux.h
PYTEST_ARGS ?=

.PHONY: all test lint demo deps venv venv-base bpf bench clean install-service

all: venv bpf

# System packages: only asked for when a tool is missing, so a second run costs nothing.
deps: $(VENV)/.apt
$(VENV)/.apt:
	@mkdir -p $(VENV)
	@if ! command -v clang >/dev/null || ! command -v bpftool >/dev/null || ! command -v perf >/dev/null \
	    || ! ls /usr/include/bpf/bpf_helpers.h >/dev/null 2>&1; then \
	  if [ "$$(id -u)" != 0 ]; then echo "need root for apt-get install $(APT_PKGS) (run: sudo make deps)"; exit 1; fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	fi
	@touch $@

# The daemon-side install: no torch.
venv-base: $(VENV)/.base
$(VENV)/.base: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -e .
	@touch $@

# Training and tests: torch pinned to the local CPU build before anything can pull a CUDA one.
venv: $(VENV)/.dev
$(VENV)/.dev: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[dev]'
	@touch $@

$(VMLINUX_H): | deps
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

bpf: $(if $(wildcard $(BPF_SRC)),$(BPF_OBJ))
$(BPF_OBJ): $(BPF_SRC) $(VMLINUX_H) $(wildcard bpf/*.h)
	@mkdir -p $(dir $@)
	clang -O2 -g -Wall -target bpf -D__TARGET_ARCH_x86 -Ibpf -c $(BPF_SRC) -o $@

test: deps venv bpf
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Keeps the layout honest: style and imports (ruff), types (mypy), and the layer contracts in pyproject.toml.
lint: venv
	$(VENV)/bin/ruff check lbagent tests
	$(VENV)/bin/mypy lbagent
	$(VENV)/bin/lint-imports

demo: deps venv bpf
	$(VENV)/bin/lbagent demo

bench: venv bpf
	$(VENV)/bin/lbagent bench sim

install-service: venv-base
	$(VENV)/bin/lbagent service install

clean:
	rm -rf $(VENV) $(BPF_OBJ) $(VMLINUX_H) build *.egg-info
