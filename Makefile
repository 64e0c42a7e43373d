# The two commands the README starts with:
#   make demo   set up .venv if needed, then train the shapes demo (prints the final validation accuracy)
#   make test   set up .venv if needed, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test env env-runtime lint tensorboard

env:
	@scripts/setup_env.sh $(VENV) dev

env-runtime:
	@scripts/setup_env.sh $(VENV) runtime

demo: env-runtime
	$(PY) -m lit_explain fit

test: env
	$(PY) -m pytest $(PYTEST_ARGS)

lint: env
	$(VENV)/bin/ruff check lit_explain tests scripts
	$(VENV)/bin/ruff format --check lit_explain tests scripts

tensorboard: env-runtime
	$(VENV)/bin/tensorboard --logdir lightning_logs --host 127.0.0.1
