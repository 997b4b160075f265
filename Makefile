# The two commands a fresh clone needs: `make run` and `make test`. Both create .venv if absent.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; on a GPU machine use e.g. `make TORCH_SPEC=torch run`.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: run test reference reference-fixed-val variance strategies minilm multisource benchmark install clean-venv

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
	$(BIN)/transfer-bench report results/movie_to_amazon_strategies

## minilm: regenerate the committed MiniLM study (50 and 200 labels, then 1,000; 3 seeds)
minilm: $(STAMP)
	$(BIN)/transfer-bench sweep experiment=movie_to_amazon_minilm $(ARGS)
	$(BIN)/transfer-bench sweep experiment=movie_to_amazon_minilm_1000 $(ARGS)
	$(BIN)/transfer-bench report results/movie_to_amazon_minilm

## multisource: regenerate the committed multi-source studies (product reviews, Reuters R8)
multisource: $(STAMP)
	$(BIN)/transfer-bench sweep experiment=amazon_multisource $(ARGS)
	$(BIN)/transfer-bench report results/amazon_multisource
	$(BIN)/transfer-bench sweep experiment=reuters_multisource $(ARGS)
	$(BIN)/transfer-bench report results/reuters_multisource

## benchmark: suite vs plain PyTorch throughput, per-trial overhead, default study wall time
benchmark: $(STAMP)
	$(BIN)/transfer-bench benchmark --study $(ARGS)

## test: the test suite, two worker processes (pytest-xdist) of one torch thread each
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
