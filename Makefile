# Developer entry points for the e-POP relay.  GNU make.
#
#   make venv    create .venv and install the project (editable, with tests)
#   make run     run the relay in the foreground (RELAY_ARGS="..." for options)
#   make test    run the test suite, default reactor then asyncio reactor
#   make demo    sandbox + relay + upload on loopback, in .demo/
#   make clean   remove build artefacts and scratch folders

PYTHON ?= python3
VENV := .venv
VENV_BIN := $(VENV)/bin
VENV_STAMP := $(VENV)/.installed
RELAY_ARGS ?=
TRIAL := $(VENV_BIN)/python -m twisted.trial

.PHONY: all venv run test demo clean catalogs bench

all: test

venv: $(VENV_STAMP)

$(VENV_BIN)/python:
	$(PYTHON) -m venv $(VENV)

# An editable install: setup.cfg's package_dir makes setuptools put the
# project folder on sys.path, where twistd finds twisted/plugins/epop_plugin.py
# (tests/test_packaging.py runs this very command in a fresh virtualenv).
$(VENV_STAMP): setup.cfg pyproject.toml | $(VENV_BIN)/python
	$(VENV_BIN)/python -m pip install --upgrade pip
	$(VENV_BIN)/python -m pip install -e '.[test,pac]'
	touch $@

run: venv
	$(VENV_BIN)/twistd -n --pidfile= epop $(RELAY_ARGS)

test: venv
	$(TRIAL) tests
	$(TRIAL) --reactor=asyncio tests

demo: venv
	bash scripts/demo.sh

# Benchmarks (docs/performance.md): a table on stdout, raw JSON in
# benchmarks/results/.  Several minutes; ARGS=--quick for a short run.
bench: venv
	$(VENV_BIN)/python -m benchmarks.run $(ARGS)

clean:
	rm -rf build dist .demo _trial_temp* *.egg-info
	find . -path ./$(VENV) -prune -o -name dropin.cache -type f -exec rm -f {} +
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# The French catalog: gather the messages (every Text("...") in epop/),
# merge them into the .po for translators, and compile the .mo that ships.
catalogs: venv
	$(VENV_BIN)/pybabel extract -k Text --no-default-keywords --no-location --omit-header -o epop/locale/epop.pot epop
	$(VENV_BIN)/pybabel update -i epop/locale/epop.pot -d epop/locale -D epop -l fr --no-fuzzy-matching --width 100
	$(VENV_BIN)/pybabel compile -d epop/locale -D epop
