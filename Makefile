# One-command set-up: `make quickstart` and `make test` each build .venv from scratch.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install quickstart test demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch/torchvision first, pinned: on these machines pip takes them from local disk.
	$(BIN)/pip install --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --disable-pip-version-check -e ".[dev,demo]"
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/sewer-hf quickstart --out runs/quickstart

# one pytest-xdist worker per core, whole files to a worker, the slow files first (tests/conftest.py)
test: $(STAMP)
	$(BIN)/python -m pytest -q tests -n auto --dist loadfile --no-loadscope-reorder

demo: $(STAMP)
	$(BIN)/python spaces_demo/app.py

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) runs build *.egg-info
