# Two commands do all set-up on a fresh machine (see README): `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test unit lint stack-up stack-down clean browser

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

stack-up: $(BIN)/.installed
	$(BIN)/cdcstream stack up

stack-down: $(BIN)/.installed
	$(BIN)/cdcstream stack down

## The main job: bring the stack up, mirror the demo database, run the worker.
run: stack-up
	$(BIN)/cdcstream demo

## Headless Chromium for the status-page test (Debian package; apt-get needs root or sudo).
browser:
	@command -v chromium >/dev/null 2>&1 || { SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

## Everything CI runs: lint and type checks first (seconds, before any server starts), then
## unit, integration and e2e tests on the real stack.
test: lint stack-up browser
	$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

unit: $(BIN)/.installed
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

## ruff, mypy, and the layer contracts (pyproject.toml [tool.importlinter]; docs/architecture.md).
lint: $(BIN)/.installed
	$(BIN)/ruff check cdcstream agents tables tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy cdcstream agents tables tests bench

clean:
	-$(BIN)/cdcstream stack down
	rm -rf .stack $(VENV)
