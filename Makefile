# Two commands do everything on a fresh machine: `make train` and `make test`.
# Each creates .venv/ and installs the project (editable, with test extras) the first time,
# and again only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export WANDB_MODE ?= offline
export HYDRA_FULL_ERROR ?= 0

.PHONY: train test test-fast setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v java >/dev/null || echo "warning: java not found; METEOR and the PTB tokenizer of pycocoevalcap need Java (apt-get install -y openjdk-17-jre-headless)"
	@command -v chromedriver >/dev/null || echo "warning: chromedriver not found; the demo's browser test will skip (apt-get install -y chromium chromium-driver)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

train: $(STAMP)
	$(PY) train.py $(ARGS)

# Test files are spread over TEST_WORKERS processes (pytest-xdist; one file stays on one worker, so a module's
# fixtures are built once): 237 s instead of 306 s on 2 cores (experiments/README.md, "The test suite's wall time").
# TEST_WORKERS=0 runs in this process (pdb, -x).
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(ARGS)
