# syntax=docker/dockerfile:1.7
# ovpipe-data: the CPU steps (synth, concepts on CPU faiss, balance, filter, lengths, pack) and every
# lightweight KFP component that needs no GPU. Build from the repository root (see images/README.md):
#   docker build -f images/data.Dockerfile \
#     --build-arg OVPIPE_CODE_VERSION="$(git describe --always --dirty)" \
#     -t ghcr.io/ovpipe/ovpipe-data:0.1.0 .
# or `make images` (podman where there is no Docker engine). BASE_IMAGE is any Debian 12-like image with
# python3 (3.11) and its venv module: a mirrored python:slim, or the one `make base-image` makes offline.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------------------------------
# build: a virtual environment in /opt/venv holding the pinned dependencies, then ovpipe itself.
FROM ${BASE_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# pip and the build backend are pinned too, so that building ovpipe does not depend on whatever
# setuptools is newest on the day of the build (ovpipe is installed without build isolation below).
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir pip==26.3 setuptools==84.2.1 wheel==0.48.0
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, read from pyproject.toml alone: a code change then reuses this multi-GB layer.
# constraints.txt is the `pip freeze` of the environment tested together (../shared/DESIGN.md).
COPY pyproject.toml constraints.txt ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
 && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt

# The package (src/ovpipe, components/, pipelines/); .dockerignore keeps .venv, store/, .git out.
COPY . .
RUN pip install --no-cache-dir --no-build-isolation -c constraints.txt . \
 && pip check

# ---------------------------------------------------------------------------------------------------
# runtime: the same base, the virtual environment, the recipes; no compilers, no build files.
FROM ${BASE_IMAGE} AS runtime

RUN groupadd --gid 1000 ovpipe \
 && useradd --uid 1000 --gid 1000 --home-dir /home/ovpipe --create-home --shell /usr/sbin/nologin ovpipe

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
LABEL org.opencontainers.image.title="ovpipe-data" \
      org.opencontainers.image.description="ovpipe CPU steps (LLaVA-OneVision-1.5 pipeline)" \
      org.opencontainers.image.revision="${OVPIPE_CODE_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

USER 1000:1000
CMD ["ovpipe", "--help"]
