# homefeed: `make demo` runs the whole platform locally, `make test` the test suite, `make bench` the
# benchmarks. Each creates what it needs on a fresh machine: .venv (the platform), .venv-triton (the
# Triton server's python backend, numpy<2) and tools/bin/helm (from a PyPI wheel).
PYTHON ?= python3.11
VENV := .venv
VENV_TRITON := .venv-triton
HELM := tools/bin/helm
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(CURDIR)/tools/bin:$(PATH)
export HOMEFEED_TRITON_VENV := $(CURDIR)/$(VENV_TRITON)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: all venv venv-triton helm test lint demo demo-stop bench report images clean

all: test

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	$(VENV)/bin/pip install --quiet -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
	# ML-100k ships inside recbole==1.2.1; it goes beside site-packages (--target) so that its unmet
	# dependencies do not make `pip check` fail: only its data files are read.
	test -d $(VENV)/share/recbole/recbole || $(VENV)/bin/pip install --quiet --no-deps --target $(VENV)/share/recbole recbole==1.2.1 2>&1 | grep -v '^WARNING: Location' || true
	$(VENV)/bin/pip check
	$(VENV)/bin/python -c "import components, torch, feast, kfp, pymilvus, tritonclient"
	touch $@

$(VENV_TRITON)/.installed: triton_models/requirements.txt
	test -x $(VENV_TRITON)/bin/python || $(PYTHON) -m venv $(VENV_TRITON)
	$(VENV_TRITON)/bin/pip install --quiet -r triton_models/requirements.txt 2>&1 | grep -v '^WARNING: Location' || true
	$(VENV_TRITON)/bin/pip check
	$(VENV_TRITON)/bin/python -c "import numpy, onnxruntime, pytriton; assert numpy.__version__ < '2'"
	touch $@

$(HELM): tools/install_helm.sh
	PYTHON=$(PYTHON) bash tools/install_helm.sh tools/bin

venv: $(VENV)/.installed
venv-triton: $(VENV_TRITON)/.installed
helm: $(HELM)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# Two pytest-xdist workers (CI has 2 cores; TEST_WORKERS=0 runs in one process): each test module goes whole to one
# worker, the modules sharing the server stack together, slowest first (tests/conftest.py).
TEST_WORKERS ?= 2
test: venv venv-triton helm lint
	$(VENV)/bin/pytest -q tests --ignore=tests/bench -n $(TEST_WORKERS)

# The demo leaves tritonserver and the recommend service running (its summary says how to query them);
# `make demo-stop` stops them (a new `make demo` does too).
demo: venv venv-triton helm
	$(PY) -m pipelines.demo

demo-stop: venv
	$(PY) -m pipelines.demo --stop-serving

bench: venv venv-triton
	$(VENV)/bin/homefeed bench run

report: venv
	$(VENV)/bin/homefeed report

# Regenerate the Kubeflow step image build files (kfp component build --no-build-image, CPU and GPU) and
# print the docker commands that build the images (a Docker engine is needed for those).
images: venv
	$(PY) -m components.steps.images
	$(PY) -m components.steps.images commands

clean:
	-test ! -f out/demo/serving.json || $(PY) -m pipelines.demo --stop-serving
	rm -rf out .pytest_cache
