# The two commands a newcomer needs: `make test` and `make demo`. Both create .venv and
# install the package into it, so a machine with only Python 3.10+ is enough.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-unprivileged demo bench stress clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --config-settings editable_mode=compat -e '.[test]'
	touch $(STAMP)

# As root, a second pass runs the permission-sensitive tests as an unprivileged user.
test: $(STAMP)
	$(BIN)/python -m pytest -q
	bash scripts/test-unprivileged

test-unprivileged: $(STAMP)
	bash scripts/test-unprivileged

stress: $(STAMP)
	$(BIN)/python -m pytest -q -m stress

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
