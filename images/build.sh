#!/usr/bin/env bash
# Build the container images on this machine (images/README.md):
#   images/build.sh base      a Debian 12 + Python 3.11 base made offline (debootstrap → podman import) and a
#                             local copy of uv's image (the uv binary from its PyPI wheel), for when no
#                             registry base can be pulled
#   images/build.sh images    the data image, a CPU build of the training image (images/gpu.Dockerfile) and
#                             the chart's MLflow server (images/mlflow.Dockerfile)
#   images/build.sh tags      the tags the components run: the cluster profile's (PROFILE, default local:
#                             localhost/ovpipe/…); PUSH=1 pushes them to the profile's registry
#   images/build.sh serve -- CMD ...   CMD with DOCKER_HOST at a Docker API: Docker's own, or podman's
#                             service, started for CMD and stopped after it (kfp.local.DockerRunner needs one)
# ENGINE=docker|podman (default: docker when a Docker engine answers, else podman). A missing podman,
# buildah, runc or debootstrap is installed with apt-get. Podman reads images/containers.conf (runc,
# cgroupfs, host network, ulimits at or below the host's) unless CONTAINERS_CONF names another file.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PY:-python3}
case "$PY" in /*|"") ;; */*) PY="$ROOT/$PY" ;; esac
BASE=${BASE_IMAGE:-localhost/ovpipe/debian-python:bookworm}
UV_VERSION=0.13.8
UV_IMAGE=${UV_IMAGE:-localhost/ovpipe/uv:$UV_VERSION}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/images/containers.conf}
PROFILE=${PROFILE:-local}

engine() {
    if [ -n "${ENGINE:-}" ]; then echo "$ENGINE"; elif docker info >/dev/null 2>&1; then echo docker; else echo podman; fi
}

need() {  # apt packages for the commands given, installed only when one is missing
    local missing=()
    for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing ${missing[*]} (apt-get)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman buildah runc debootstrap \
        uidmap ca-certificates >/dev/null
}

tag() {  # tag FAMILY: the profile's tag of that image family (configs/cluster/$PROFILE.yaml)
    "$PY" -m ovpipe.profile tag "$PROFILE" "$1"
}

# The builder's own pip settings and trust store travel into RUN steps (podman only): a machine whose pip
# reads a local wheel mirror, or whose egress needs its own CA, builds with them. Nothing is copied into
# the image.
build_mounts() {
    [ "$(engine)" = podman ] || return 0
    local p
    for p in /etc/pip.conf /etc/xdg/pip /opt/pypi /opt/pypi-more /opt/wheels /etc/ssl/certs/ca-certificates.crt; do
        [ -e "$p" ] && printf -- '-v %s:%s:ro ' "$p" "$p"
    done
    return 0
}

base() {
    need podman debootstrap runc
    local e; e=$(engine)
    if ! $e image inspect "$BASE" >/dev/null 2>&1; then
        local rootfs; rootfs=$(mktemp -d /tmp/ovpipe-rootfs.XXXXXX)
        echo "debootstrap bookworm → $BASE" >&2
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd bookworm "$rootfs" \
            >/dev/null
        tar -C "$rootfs" -c . | $e import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
        rm -rf "$rootfs"
    fi
    if ! $e image inspect "$UV_IMAGE" >/dev/null 2>&1; then  # uv's image holds /uv (and /uvx) only
        local d; d=$(mktemp -d /tmp/ovpipe-uv.XXXXXX)
        "$PY" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 \
            "uv==$UV_VERSION" -d "$d"
        (cd "$d" && "$PY" -m zipfile -e uv-*.whl x && cp x/uv-*.data/scripts/uv uv && chmod 755 uv)
        printf 'FROM scratch\nCOPY uv /uv\n' > "$d/Dockerfile"
        $e build -q -t "$UV_IMAGE" "$d" >/dev/null
        rm -rf "$d"
    fi
    echo "$BASE $UV_IMAGE"
}

images() {
    base >/dev/null
    local e version; e=$(engine)
    version=$(git describe --always --dirty 2>/dev/null || echo unknown)
    # shellcheck disable=SC2046
    $e build $(build_mounts) -f images/data.Dockerfile --build-arg BASE_IMAGE="$BASE" \
        --build-arg OVPIPE_CODE_VERSION="$version" -t "$(tag data)" .
    # shellcheck disable=SC2046
    $e build $(build_mounts) -f images/gpu.Dockerfile --build-arg UV_IMAGE="$UV_IMAGE" \
        --build-arg BUILD_BASE="$BASE" --build-arg RUNTIME_BASE="$BASE" --build-arg PYTHON_VERSION= \
        --build-arg OVPIPE_EXTRAS= --build-arg OVPIPE_CODE_VERSION="$version" -t "$(tag gpu)" .
    # shellcheck disable=SC2046
    $e build $(build_mounts) -f images/mlflow.Dockerfile --build-arg BASE_IMAGE="$BASE" -t "$(tag mlflow)" .
    tags
    if [ "${PUSH:-0}" = 1 ]; then
        local t
        for t in $(tags); do $e push "$t"; done
    fi
}

tags() {
    echo "$(tag data) $(tag gpu) $(tag mlflow)"
}

serve() {
    [ "${1:-}" = "--" ] && shift
    if [ -n "${DOCKER_HOST:-}" ] || [ "$(engine)" = docker ]; then "$@"; return; fi
    need podman runc
    local rc=0
    SOCK="$(mktemp -u /tmp/ovpipe-podman-XXXXXX).sock"
    podman system service --time=0 "unix://$SOCK" &
    SERVICE=$!
    trap 'kill "$SERVICE" 2>/dev/null; rm -f "$SOCK"' EXIT  # an interrupted run leaves no service behind
    trap 'exit 130' INT TERM
    for _ in $(seq 300); do [ -S "$SOCK" ] && break; sleep 0.1; done
    [ -S "$SOCK" ] || { echo "podman system service did not start" >&2; return 1; }
    DOCKER_HOST="unix://$SOCK" "$@" || rc=$?
    return "$rc"
}

cmd=${1:-images}
shift || true
case "$cmd" in base|images|tags|serve) "$cmd" "$@" ;; *) echo "usage: images/build.sh base|images|tags|serve -- CMD" >&2; exit 2 ;; esac
