"""Container images the components run in (built from images/; tags pinned per release)."""
DATA_IMAGE = "ghcr.io/ovpipe/ovpipe-data:0.1.0"  # images/data.Dockerfile: CPU steps
GPU_IMAGE = "ghcr.io/ovpipe/ovpipe-gpu:0.1.0"  # images/gpu.Dockerfile: embed, caption
