# Two entry points: `make demo` (bundled samples end to end) and `make test`.
# Both set everything up first: system packages (as root), a virtual environment, the project.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test system venv clean

demo: system venv
	$(BIN)/corpus demo --output demo-output

test: system venv
	$(BIN)/python -m pytest -q

system:
	bash scripts/system-packages.sh

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) demo-output
