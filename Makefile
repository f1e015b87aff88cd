# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DEMO_OUT ?= demo-out

.PHONY: demo test install dev clean bench

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch/torchvision are pinned in pyproject.toml; pip takes them from the machine's local wheel store
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e '.[dev,ray,text]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/ddpm-guard sample --n 64 --fast --out $(DEMO_OUT)/samples --seed 0
	$(VENV)/bin/ddpm-guard demo --out $(DEMO_OUT)
	$(VENV)/bin/ddpm-guard scan --key $(DEMO_OUT)/demo.key $(DEMO_OUT)/watermarked $(DEMO_OUT)/edited $(DEMO_OUT)/plain $(DEMO_OUT)/real
	@echo "open $(DEMO_OUT)/samples/grid.png"

test: $(VENV)/.installed-dev
	$(PY) -m pytest

bench: $(VENV)/.installed-dev
	$(PIP) install -q diffusers
	$(PY) bench/speed.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
