# The two commands a newcomer needs: `make test` and `make demo`. Both create .venv and
# install the package into it, so a machine with only Python 3.10+ is enough.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-unprivileged demo dashboard bench bench-hotpath profile stress clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --config-settings editable_mode=compat -e '.[test,web]'
	touch $(STAMP)

# Two test processes (pytest-xdist, one file each at a time): most tests wait on workers and
# subprocesses, so two share 2 cores well (4:41-5:30 on this 2-core VM, with the
# JuiceFS and browser tests; a third process saved ~30 s once and made tests flaky).
# As root, a second pass runs the permission-sensitive tests as an unprivileged user.
TEST_PROCESSES ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_PROCESSES) --dist loadfile
	bash scripts/test-unprivileged

test-unprivileged: $(STAMP)
	bash scripts/test-unprivileged

stress: $(STAMP)
	$(BIN)/python -m pytest -q -m stress

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

dashboard: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/dashboard-demo.sh

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/run.py

# Issue 9's side-by-side table (direct spawn, task-spooler, queuectl), measured in a normal
# (non-editable) install: a throw-away venv with `pip install .`, removed afterwards.
# BENCH_ARGS is passed on, e.g. make bench-hotpath BENCH_ARGS="--reps 5 --scratch /dev/shm".
bench-hotpath:
	@venv=$$(mktemp -d "$${TMPDIR:-/tmp}/queuectl-hotpath-venv.XXXXXX") && \
	echo "building a normal install of this tree in $$venv" && \
	$(PYTHON) -m venv "$$venv" && "$$venv/bin/pip" install --quiet . && \
	PATH="$$venv/bin:$$PATH" "$$venv/bin/python" bench/run.py --only hotpath $(BENCH_ARGS); \
	rc=$$?; rm -rf "$$venv"; exit $$rc

# Where one worker's time per `true` job goes (py-spy, in the test extras).
JOBS ?= 2000
profile: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/profile_worker.py --jobs $(JOBS) \
		$(PROFILE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
