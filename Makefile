# make train   set up .venv, fetch and prepare the corpus, train the default LSTM, print poems
# make test    the test suite (what CI runs); make test-slow adds the real-corpus tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: venv train sample bench test test-slow lint format clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

train: venv
	$(PY) scripts/train.py $(ARGS)

# make sample CKPT=outputs/train/runs/<run>/checkpoints/best.ckpt ARGS="begin=春 n=5"
sample: venv
	$(PY) scripts/sample.py ckpt=$(CKPT) $(ARGS)

# training, sampling and start-up speed and the options that trade it (~20 min on 2 cores) → outputs/bench/
bench: venv
	$(PY) scripts/bench.py $(ARGS)

test: venv
	$(PY) -m pytest -m "not slow" $(ARGS)

test-slow: venv
	$(PY) -m pytest -m slow $(ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
