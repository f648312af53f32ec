# make train          set up .venv, fetch and prepare the corpus, train the default LSTM, print poems
# make test           the default test suite; CI (.ci/run) adds lint, test-slow (the real corpus) and test-browser
# make demo           the poem studio on http://127.0.0.1:7860 (the shipped models side by side)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: venv train sample demo bench compare-cells test test-slow test-browser gpu-study lint format clean

venv: $(VENV)/.installed

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# the studio needs the package and Gradio, not the test and search tools: a first `make demo` is quicker alone
$(VENV)/.demo: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.browser: $(VENV)/.installed $(VENV)/.demo
	$(PY) -m pip install --quiet -e '.[dev,browser]'
	touch $@

train: venv
	$(PY) scripts/train.py $(ARGS)

# make sample ARGS="begin=春 n=5"   (the shipped GRU; ARGS="ckpt=<.ckpt> …" for your own)
sample: venv
	$(PY) scripts/sample.py $(ARGS)

demo: $(VENV)/.demo
	$(PY) scripts/studio.py $(ARGS)

# training, sampling and start-up speed (about 15 min on 2 cores, docs/performance.md) → outputs/bench/
bench: venv
	$(PY) scripts/bench.py $(ARGS)

# The chapter's comparison (experiment=compare_cells, docs/rhyme.md section 4): 18 runs, 4.5 to 5.5 hours on
# 2 cores, its two halves (structure off, on) side by side at one thread each. Run it again to resume where it
# stopped (ckpt_path=last; finished runs are skipped); then the report and figures, in that directory.
COMPARE_CELLS ?= outputs/compare_cells/multiruns
compare-cells: venv
	mkdir -p $(COMPARE_CELLS)
	for s in false true; do \
		$(PY) scripts/train.py -m experiment=compare_cells model.structure=$$s torch_threads=1 ckpt_path=last \
			trainer.enable_progress_bar=false hydra.sweep.dir=$(COMPARE_CELLS)/chapter_structure_$$s $(ARGS) \
			> $(COMPARE_CELLS)/chapter_structure_$$s.log 2>&1 & \
	done; wait
	$(PY) scripts/compare.py $(COMPARE_CELLS) --no-ngram

test: venv
	$(PY) -m pytest -m "not slow and not browser" $(ARGS)

test-slow: venv
	$(PY) -m pytest -m slow $(ARGS)

# The studio in headless Chromium: Debian's chromium (Playwright cannot download its own browser here) and a
# CJK font for the screenshot; as root they are installed when missing.
test-browser: $(VENV)/.browser
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null; } \
		|| { echo "make test-browser needs Chromium: apt-get install chromium fonts-wqy-microhei"; exit 1; }
	STUDIO_SCREENSHOT=$(abspath outputs/readme/studio.png) $(PY) -m pytest -m browser $(ARGS)

# One GPU (~8 min on an H100/H200): experiment=scaling with jobs sharing the card, its report, make bench on
# the GPU, and a GPU-trained checkpoint analysed on the CPU. GPU_STUDY="…" overrides, e.g. for a tiny dry run.
GPU_SWEEP ?= outputs/scaling/multiruns/gpu
GPU_JOBS ?= 14
GPU_STUDY ?= trainer=gpu
gpu-study: venv
	$(PY) scripts/train.py -m experiment=scaling $(GPU_STUDY) hydra/launcher=parallel hydra.launcher.n_jobs=$(GPU_JOBS) \
		torch_threads=1 hydra.sweep.dir=$(GPU_SWEEP) $(ARGS)
	$(PY) scripts/compare.py $(GPU_SWEEP)
	$(PY) scripts/bench.py device=$(if $(findstring gpu,$(GPU_STUDY)),cuda,cpu) reps=2 startup_runs=1 \
		hydra.run.dir=outputs/bench/runs/gpu $(BENCH_ARGS)
	CUDA_VISIBLE_DEVICES= $(PY) scripts/analyse.py ckpt=$(GPU_SWEEP)/0_rnn_200000_seed0/checkpoints/best.ckpt \
		device=cpu n=16 out_dir=$(GPU_SWEEP)/cpu_check $(ANALYSE_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
