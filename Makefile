# The two commands a fresh clone needs: `make run` and `make test`. Both create .venv if absent.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; on a GPU machine use e.g. `make TORCH_SPEC=torch run`.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: run test test-studies lint reports reference reference-fixed-val variance strategies minilm minilm-fits multisource wheelhouse benchmark install clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## run: the default study (movie -> product sentiment), then its table
run: $(STAMP)
	$(BIN)/transfer-bench sweep $(ARGS)

## reference: regenerate the committed reference study (budget protocol, 50/200/1000, 5 seeds)
reference: $(STAMP)
	$(BIN)/transfer-bench sweep experiment=movie_to_amazon_reference $(ARGS)
	$(BIN)/transfer-bench report results/movie_to_amazon_reference

## reference-fixed-val: the same study under the fixed validation split (n + 500 labels a cell)
reference-fixed-val: $(STAMP)
	$(BIN)/transfer-bench sweep experiment=movie_to_amazon_reference_fixed_val $(ARGS)
	$(BIN)/transfer-bench report results/movie_to_amazon_reference_fixed_val

## variance: seeds x source models x tuning replicates at 50 and 1000 labels; report/variance.md
variance: $(STAMP)
	$(BIN)/transfer-bench sweep experiment=movie_to_amazon_variance $(ARGS)
	$(BIN)/transfer-bench report results/movie_to_amazon_variance

## strategies: regenerate the committed all-strategies study (50, 200, 1000 labels, 5 seeds)
strategies: $(STAMP)
	$(BIN)/transfer-bench sweep experiment=movie_to_amazon_strategies $(ARGS)
	$(BIN)/transfer-bench report results/movie_to_amazon_strategies --against full

## minilm: run or resume the committed MiniLM study (10 strategies, 50/200/1,000 labels, 5 seeds; about 14 h of compute on a 2-core CPU, run it alone)
minilm: $(STAMP)
	$(BIN)/transfer-bench sweep experiment=movie_to_amazon_minilm $(ARGS)
	$(BIN)/transfer-bench report results/movie_to_amazon_minilm

## minilm-fits: run or resume the check of the transformer fit rules (full, lp_ft, gradual
## untuned on the MiniLM study's subsets, 5 seeds; about 5 h alone on a 2-core CPU), then the
## plain script at the same sizes and the paired table (fits_check.md)
minilm-fits: $(STAMP)
	$(BIN)/transfer-bench sweep experiment=movie_to_amazon_minilm_fits $(ARGS)
	$(BIN)/transfer-bench report results/movie_to_amazon_minilm_fits
	$(BIN)/python scripts/plain_finetune.py --sizes 50 200 1000 --seeds 0 1 2 3 4 \
	    --out results/movie_to_amazon_minilm_fits/plain_check
	$(BIN)/python scripts/fits_check.py

## multisource: regenerate the committed multi-source studies (product reviews, Reuters R8)
multisource: $(STAMP)
	$(BIN)/transfer-bench sweep experiment=amazon_multisource $(ARGS)
	$(BIN)/transfer-bench report results/amazon_multisource
	$(BIN)/transfer-bench sweep experiment=reuters_multisource $(ARGS)
	$(BIN)/transfer-bench report results/reuters_multisource
	$(BIN)/transfer-bench sweep experiment=reuters_multisource_longer $(ARGS)
	$(BIN)/transfer-bench report results/reuters_multisource_longer

## wheelhouse: every wheel transfer-bench needs except torch, for a machine without an index
## (the GPU image: `make wheelhouse WHEEL_PY=3.12`; there: `pip install --no-index
## --find-links wheelhouse transfer-bench`, which keeps the machine's own torch)
WHEEL_PY ?= 3.11
WHEEL_DEPS = $(shell $(PYTHON) -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); \
	print(' '.join(repr(x) for x in d['project']['dependencies'] \
	               if not x.startswith(('torch', 'lightning', 'peft'))))")
WHEEL_GET = $(PYTHON) -m pip download --quiet --disable-pip-version-check -d wheelhouse \
	--find-links wheelhouse \
	--only-binary=:all: --python-version $(WHEEL_PY) --platform manylinux2014_x86_64 \
	--platform manylinux_2_28_x86_64 --platform any
wheelhouse:
	rm -rf wheelhouse && mkdir wheelhouse
	# transfer-bench itself, and hydra's parser runtime, which PyPI has only as source: both
	# pure Python, so these wheels install on any platform
	$(PYTHON) -m pip wheel --quiet --disable-pip-version-check --no-deps -w wheelhouse . \
	    antlr4-python3-runtime==4.9.3
	# pyproject's dependencies with theirs, except those that would pull in a torch build ...
	$(WHEEL_GET) $(WHEEL_DEPS) psycopg2-binary psutil pyyaml "fsspec[http]" tqdm packaging
	# ... which come alone (the machine's torch stays)
	$(WHEEL_GET) --no-deps peft accelerate lightning pytorch-lightning torchmetrics \
	    lightning-utilities

## benchmark: suite vs plain PyTorch throughput, per-trial overhead, default study wall time
benchmark: $(STAMP)
	$(BIN)/transfer-bench benchmark --study $(ARGS)

## test: the test suite, two worker processes (pytest-xdist) of one torch thread each
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 -m "not studies" --durations=15 $(PYTEST_ARGS)

## reports: every committed report from its records, as committed (tests/test_reference.py
## checks them byte for byte; README/docs blocks quote them)
R := $(BIN)/transfer-bench report
reports: $(STAMP)
	$(R) results/movie_to_amazon_reference
	$(R) results/movie_to_amazon_reference_fixed_val
	$(R) results/movie_to_amazon_reference results/movie_to_amazon_reference_fixed_val \
	    --side-by-side results/movie_to_amazon_reference/report/protocols.md \
	    --side-by-side results/movie_to_amazon_reference/report/protocols.html
	$(R) results/movie_to_amazon_variance
	$(R) results/movie_to_amazon_strategies --against full
	$(R) results/amazon_multisource
	$(R) results/reuters_multisource
	$(R) results/reuters_multisource --metric test_f1
	$(R) results/reuters_multisource_longer
	$(R) results/reuters_multisource_longer --metric test_f1
	$(R) results/reuters_multisource results/reuters_multisource_longer \
	    --side-by-side results/reuters_multisource_longer/report/capped_vs_longer.md \
	    --side-by-side results/reuters_multisource_longer/report/capped_vs_longer.html
	$(R) results/movie_to_amazon_minilm
	$(R) results/movie_to_amazon_strategies results/movie_to_amazon_minilm \
	    --side-by-side results/movie_to_amazon_minilm/report/textcnn_vs_minilm.md \
	    --side-by-side results/movie_to_amazon_minilm/report/textcnn_vs_minilm.html
	$(R) results/legacy/movie_to_amazon_reference
	$(R) results/legacy/movie_to_amazon_strategies --against full

## lint: ruff over bench/ and tests/ (pyproject's [tool.ruff]; CI runs it)
lint: $(STAMP)
	$(BIN)/ruff check bench tests

## test-studies: rerun one recorded cell of every committed study (CI runs it after make test)
test-studies: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 -m studies $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
