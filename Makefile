# ovpipe — `make run` runs the pipeline locally on the tiny recipe; `make test` runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
RECIPE ?= configs/recipes/tiny.yaml
RUN ?= tiny
STORE ?= local
RUNNER ?= subprocess
LOCAL_STORE ?= $(or $(OVPIPE_STORE),$(CURDIR)/store)
PIP_VERSION := 26.3
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: install run run-stage schedule-eval test compile bench lint clean base-image images compare-runners rehearsal

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==$(PIP_VERSION)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# STORE=local (default): a folder; STORE=s3: a SeaweedFS S3 server on 127.0.0.1 for the run's duration,
# its data kept in .ovpipe/s3 (browse it later: python -m ovpipe.s3server serve --dir .ovpipe/s3).
# RUNNER=docker: every task inside its component's image (make images), the store on a local S3 server.
run: install
ifeq ($(RUNNER),docker)
	images/build.sh serve -- $(PY) -m ovpipe.s3server run --bucket ovpipe --dir $(CURDIR)/.ovpipe/s3 -- \
		$(VENV)/bin/ovpipe run --runner docker --recipe $(RECIPE) --store s3://ovpipe/runs --run-id $(RUN) $(ARGS)
else ifeq ($(STORE),s3)
	$(PY) -m ovpipe.s3server run --bucket ovpipe --dir $(CURDIR)/.ovpipe/s3 -- \
		$(VENV)/bin/ovpipe run --recipe $(RECIPE) --store s3://ovpipe/runs --run-id $(RUN) $(ARGS)
else
	$(VENV)/bin/ovpipe run --recipe $(RECIPE) --store $(LOCAL_STORE) --run-id $(RUN) $(ARGS)
endif

# One training stage (vit | stage1 | mid | sft) of an earlier run, from that run's outputs: make run-stage STAGE=mid RUN=tiny
run-stage: install
	@case "$(STAGE)" in vit|stage1|mid|sft) ;; *) echo "STAGE must be vit, stage1, mid or sft (got '$(STAGE)')"; exit 2;; esac
ifeq ($(STORE),s3)
	$(PY) -m ovpipe.s3server run --bucket ovpipe --dir $(CURDIR)/.ovpipe/s3 -- \
		$(VENV)/bin/ovpipe run --recipe $(RECIPE) --store s3://ovpipe/runs --run-id $(RUN) --from $(STAGE) --until $(STAGE) $(ARGS)
else
	$(VENV)/bin/ovpipe run --recipe $(RECIPE) --store $(LOCAL_STORE) --run-id $(RUN) --from $(STAGE) --until $(STAGE) $(ARGS)
endif

# A nightly KFP recurring run of the evaluation pipeline (KFP_HOST from the environment; 6-field cron):
#   KFP_HOST=https://kfp.example.org make schedule-eval CRON="0 0 2 * * *" CHECKPOINT=latest
CRON ?= 0 0 2 * * *
CHECKPOINT ?= latest
schedule-eval: install
	$(PY) -m pipelines.schedule --cron "$(CRON)" --checkpoint "$(CHECKPOINT)" --recipe $(RECIPE) $(ARGS)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

compile: install
	$(PY) -m pipelines.compile

bench: install
	$(PY) -m pip install --quiet --no-deps trl==1.16.0  # the packing baseline (its deps are already here)
	$(PY) bench/topk_bench.py
	$(PY) bench/balance_bench.py
	$(PY) bench/pack_bench.py --full
	$(PY) bench/lengths_bench.py
	$(PY) bench/train_bench.py
	$(PY) bench/memory_bench.py

# Container images (images/README.md): podman where no Docker engine runs; a missing podman is installed.
base-image: install
	PY=$(PY) images/build.sh base

images: install
	PY=$(PY) images/build.sh images

# The images' acceptance check: the tiny DAG inside the images (on S3) and as local processes (in a folder)
# must make the same data artifacts.
compare-runners: install
	$(MAKE) run RUNNER=docker RUN=$(RUN)-docker
	$(MAKE) run RUN=$(RUN)
	$(PY) -m ovpipe.s3server run --bucket ovpipe --dir $(CURDIR)/.ovpipe/s3 -- \
		$(VENV)/bin/ovpipe digests --recipe $(RECIPE) --store s3://ovpipe/runs --run-id $(RUN)-docker --against $(LOCAL_STORE)/$(RUN)

# The cluster rehearsal: ov15-4b at its widths (2 layers per tower) at TP 2, every input on a SeaweedFS S3
# server under ov15-4b's URIs (written first, random init), curation -> packing -> 3 stages -> eval, checked.
rehearsal: install
	$(PY) -m ovpipe.s3server run --bucket ovpipe --bucket ovpipe-models --bucket ovpipe-data \
		--dir $(CURDIR)/.ovpipe/s3-rehearsal -- $(VENV)/bin/ovpipe rehearse --recipe configs/recipes/rehearsal.yaml \
		--store s3://ovpipe/runs --run-id rehearsal $(ARGS)

lint: install
	$(VENV)/bin/ruff check src components pipelines tests bench

clean:
	rm -rf $(LOCAL_STORE) .ovpipe
