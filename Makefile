# make test  - create .venv if needed, install wsgi_bg with its test dependencies, run the tests
#             in parallel (TEST_WORKERS=6 xdist workers; PYTEST_ARGS=... for more options)
# make demo  - create .venv if needed, install wsgi_bg alone (no test tools), serve the
#             ported web.py example on http://127.0.0.1:8080
# make bench - run the benchmarks in bench/ (not part of make test)
# make lint  - ruff and mypy on the package
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet -e . --group tests --group typing
	touch $(STAMP)

# The tests mostly wait on processes: more xdist workers than cores pays
# (docs/testing.md has the measurements). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 6

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# The demo needs wsgi_bg and Werkzeug only: not the test and typing groups
# (49 packages, uWSGI among them). A venv set up for the tests has them too.
DEMO_STAMP := $(VENV)/.installed-demo

$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e .
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/wsgi-bg demo

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --group bench
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check wsgi_bg tests examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
