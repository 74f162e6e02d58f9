# syntax=docker/dockerfile:1.7
# ovpipe-gpu: the GPU steps (embed with MetaCLIP/open_clip, concepts on faiss-gpu, caption; later the
# training stages). Build from the repository root (see images/README.md):
#   docker build -f images/gpu.Dockerfile \
#     --build-arg OVPIPE_CODE_VERSION="$(git describe --always --dirty)" \
#     -t ghcr.io/ovpipe/ovpipe-gpu:0.1.0 .
#
# Base: CUDA 13.0, because the pinned torch 2.14.1 wheels are CUDA 13.0 builds (nvidia-*-cu13 13.0.x
# in constraints.txt): they need an NVIDIA driver >= 580, and the base image's NVIDIA_REQUIRE_CUDA
# makes the container toolkit refuse an older driver at start instead of torch failing mid-step.
# `runtime` rather than `cudnn-runtime`: torch brings its own cuDNN (nvidia-cudnn-cu13) from PyPI.
# Ubuntu 22.04 ships no final Python 3.11, so uv installs a relocatable CPython 3.11 build into
# /opt/python (the data image runs the same 3.11.14).
#
# Every base is a build argument (air-gapped clusters mirror them). The CPU build that `make images`
# makes here sets BUILD_BASE = RUNTIME_BASE = a Debian 12 base with python3, PYTHON_VERSION= (empty: the
# base's own Python 3.11 instead of uv's) and OVPIPE_EXTRAS= (no faiss-gpu, no Transformer Engine): the
# same steps and pins as on a GPU builder, minus CUDA.
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.8
ARG BUILD_BASE=nvidia/cuda:13.0.2-cudnn-devel-ubuntu22.04
ARG RUNTIME_BASE=nvidia/cuda:13.0.2-runtime-ubuntu22.04

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------------------------------------------
# build: CPython + a virtual environment in /opt/venv with the pinned dependencies, then ovpipe.
# devel: transformer-engine-torch compiles its PyTorch extension against the installed torch (nvcc,
# CUDA headers); the runtime stage below copies only the resulting venv.
FROM ${BUILD_BASE} AS build

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG PYTHON_VERSION=3.11.14
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_NO_CACHE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=uv /uv /usr/local/bin/uv
RUN if [ -n "${PYTHON_VERSION}" ]; then \
        uv python install "${PYTHON_VERSION}" && uv venv --seed --python "${PYTHON_VERSION}" /opt/venv; \
    else \
        mkdir -p /opt/python && python3 -m venv /opt/venv; \
    fi \
 && /opt/venv/bin/pip install --no-cache-dir pip==26.3 setuptools==84.2.1 wheel==0.48.0
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Extras of ovpipe to install: `gpu` = faiss-gpu, `train` = Transformer Engine (the training stages).
ARG OVPIPE_EXTRAS=gpu,train
# REQUIREMENTS: a requirements file to install instead of pyproject's (the captioning image:
# images/caption-requirements.txt, vLLM on its own pins). Its `# released-pins:` line names the packages
# of constraints.txt that it may resolve to other versions; every other pin holds.
ARG REQUIREMENTS=

# Dependencies first, read from pyproject.toml alone, so that a code change reuses this layer.
# constraints.txt is the `pip freeze` of the environment tested together (../shared/DESIGN.md).
#
# faiss-cpu (a core dependency) and faiss-gpu-cu12 (the `gpu` extra) both install the Python package
# `faiss`, sharing its .py files; faiss-cpu's extension is `_swigfaiss.abi3.so`, faiss-gpu's
# `_swigfaiss.so`, and Python prefers the abi3 name: installed together, `import faiss` silently
# loads the CPU build (no StandardGpuResources). So: remove both, then put faiss-gpu back alone,
# without dependencies (its CUDA libraries are already installed), and check no abi3 module is left.
COPY pyproject.toml constraints.txt images/caption-requirements.txt ./
# DL3013 (unpinned pip install) is a false positive: "${faiss_gpu}" is the exact name==version just installed.
# hadolint ignore=DL3013
RUN if [ -n "${REQUIREMENTS}" ]; then \
        cp "$(basename "${REQUIREMENTS}")" /tmp/requirements.txt \
        && released="$(sed -n 's/^# released-pins: *//p' /tmp/requirements.txt | tr ' ' '|')" \
        && grep -v -i -E "^(${released})==" constraints.txt > /tmp/constraints.txt \
        && mv /tmp/constraints.txt constraints.txt; \
    else \
        python -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; extras = [e for e in sys.argv[1].split(",") if e]; print("\n".join(p["dependencies"] + [d for e in extras for d in p["optional-dependencies"][e]]))' \
            "${OVPIPE_EXTRAS}" > /tmp/requirements.txt; \
    fi \
 && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt \
 && faiss_gpu="$(pip list --format=freeze | grep -i '^faiss-gpu' || true)" \
 && if [ -n "${faiss_gpu}" ]; then \
        pip uninstall -y faiss-cpu "${faiss_gpu%%==*}" && pip install --no-cache-dir --no-deps "${faiss_gpu}"; \
    fi \
 && python -c 'import importlib.util as u, pathlib, sys; d = pathlib.Path(u.find_spec("faiss").submodule_search_locations[0]); left = sorted(p.name for p in d.glob("_swigfaiss*.abi3.so")); gpu = "gpu" in sys.argv[1].split(","); assert not (gpu and left), f"faiss-cpu module left behind: {left}"' "${OVPIPE_EXTRAS}"

# The package itself. --no-deps: the layer above installed every dependency, and pip would otherwise
# bring faiss-cpu back over faiss-gpu (or, in the captioning image, our torch over vLLM's). pip check
# must then report nothing about any package but ovpipe (whose own requirements are not all met by design).
COPY . .
RUN pip install --no-cache-dir --no-deps --no-build-isolation -c constraints.txt . \
 && { pip check > /tmp/pip-check.txt || true; } \
 && if grep -v -e '^ovpipe ' -e '^No broken requirements found' /tmp/pip-check.txt; then \
        echo "pip check failed (above)" >&2; exit 1; fi

# ---------------------------------------------------------------------------------------------------
# runtime: the CUDA runtime base (or the CPU build's base), CPython and the venv, the recipes.
FROM ${RUNTIME_BASE} AS runtime

RUN groupadd --gid 1000 ovpipe \
 && useradd --uid 1000 --gid 1000 --home-dir /home/ovpipe --create-home --shell /usr/sbin/nologin ovpipe

# The venv's interpreter links into /opt/python: both keep the paths they were built at.
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv

# Recipes name their files relative to themselves (configs/recipes/*.yaml -> ../vocab/…) and components
# pass `configs/recipes/<name>.yaml` relative to the working directory. Owned by root: read-only to
# the step.
WORKDIR /app
COPY configs/ /app/configs/

# No hub downloads at run time: every weight comes from a path or object-store URI in the recipe.
# Object-store credentials come from the pod's environment (a Kubernetes Secret), never from here.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    OVPIPE_CACHE=/tmp/ovpipe-cache

# Last, so that a new code version does not invalidate the layers above. Written into every manifest.
ARG OVPIPE_CODE_VERSION=unknown
ENV OVPIPE_CODE_VERSION=${OVPIPE_CODE_VERSION}
LABEL org.opencontainers.image.title="ovpipe-gpu" \
      org.opencontainers.image.description="ovpipe GPU steps (LLaVA-OneVision-1.5 pipeline)" \
      org.opencontainers.image.revision="${OVPIPE_CODE_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

USER 1000:1000
CMD ["ovpipe", "--help"]
