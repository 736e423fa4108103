# olmac: every target bootstraps .venv from the pinned requirements on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JOBS   ?= 2

BOARD  ?= icebreaker

.PHONY: help venv demo test test-full formal bench bitstream clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

venv: $(STAMP) ## create .venv from requirements.txt + constraints.txt

demo: $(STAMP) ## the residual CNN on the whole digits test split through the RTL (Verilator), checked bit for bit against golden; report in build/demo
	$(VENV)/bin/olmac demo

test: $(STAMP) ## the suite: golden, Amaranth-simulator and cocotb/Verilator tests (CI runs this)
	$(PY) -m pytest -n $(JOBS) --dist loadgroup -m "not slow"

test-full: $(STAMP) ## the suite plus the slow sweeps
	$(PY) -m pytest -n $(JOBS) --dist loadgroup

formal: $(STAMP) ## every SymbiYosys proof (k-induction, z3) and its broken variants; logs in build/formal
	$(PY) -m olmac.formal build/formal

bench: $(STAMP) ## print cycle, utilization, simulation-speed and LUT/FF figures
	$(PY) -m bench

bitstream: $(STAMP) ## BOARD=icebreaker|ulx3s-85f|...: a BRAM-fed MAC array bitstream and its report (never programs)
	$(VENV)/bin/olmac build --board $(BOARD)

clean: ## remove build outputs (keeps .venv)
	rm -rf build
