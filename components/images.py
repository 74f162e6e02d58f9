"""Container images the components run in (built from images/; images/build.sh tags them).

The registry is OVPIPE_IMAGE_REGISTRY when set at import (compile time): a cluster's mirror, or
`localhost/ovpipe` for the images `make images` builds here (`ovpipe run --runner docker` sets it).
"""
import os

REGISTRY = os.environ.get("OVPIPE_IMAGE_REGISTRY", "ghcr.io/ovpipe")
VERSION = "0.1.0"
DATA_IMAGE = f"{REGISTRY}/ovpipe-data:{VERSION}"  # images/data.Dockerfile: CPU steps
GPU_IMAGE = f"{REGISTRY}/ovpipe-gpu:{VERSION}"  # images/gpu.Dockerfile: embed, caption, eval, training
# gpu.Dockerfile with REQUIREMENTS=images/caption-requirements.txt: vLLM on its own pins (caption.backend vllm)
CAPTION_IMAGE = f"{REGISTRY}/ovpipe-caption:{VERSION}"
