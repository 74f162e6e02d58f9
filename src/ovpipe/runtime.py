"""Where this process runs: inside a Kubernetes pod (a KFP task or a training job's node) or not."""
from __future__ import annotations

import os


def on_kubernetes() -> bool:
    """True inside a pod; kfp.local tasks and `ovpipe` commands on this machine run as local processes."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
