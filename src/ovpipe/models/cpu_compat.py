"""Every workaround that lets megatron-core 0.16 train on a CPU, in one place, applied only without a GPU.

megatron-core assumes CUDA in a few spots: buffers and scalars created with device="cuda" or
torch.cuda.current_device() (DDP grad buffers, optimizer, grad clipping, RNG tracker), CUDA streams
in the grad-sync path, and a causal mask built on the GPU. Rather than patching each function, the
modules listed in PATCHED see a `torch` whose device arguments "cuda" become "cpu" and whose
`torch.cuda` has CPU stand-ins (current_device, streams, synchronize, RNG state). Nothing else in
torch or megatron changes. `check()` (run by the tests) fails loudly when an upgrade moves things.
"""
from __future__ import annotations

import contextlib
import importlib
import types

import torch

PATCHED = (  # megatron modules whose global `torch` is replaced by the CPU view
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.distributed.distributed_data_parallel",
    "megatron.core.distributed.finalize_model_grads",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.tensor_parallel.random",
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.utils",  # local multi-tensor l2 norm / scale used by grad clipping
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.async_utils",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.dist_checkpointing.exchange_utils",
)
_FACTORIES = ("tensor", "zeros", "ones", "empty", "full", "arange", "zeros_like", "ones_like", "empty_like",
              "randn", "rand", "randint", "as_tensor")
_applied = False


def _cpu_device(device):
    if device is None:
        return None
    if isinstance(device, int) or str(device).startswith("cuda"):
        return torch.device("cpu")
    return device


def _wrap_factory(fn):
    def factory(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        return fn(*args, **kwargs)

    factory.__name__ = fn.__name__
    return factory


class _Stream:
    """A CUDA stream stand-in: CPU work is already ordered."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, other):
        pass

    def synchronize(self):
        pass

    def record_event(self, event=None):
        return None


def _cuda_view() -> types.SimpleNamespace:
    cuda = types.SimpleNamespace(**{k: getattr(torch.cuda, k) for k in dir(torch.cuda) if not k.startswith("__")})
    cuda.current_device = lambda: "cpu"
    cuda.is_available = lambda: False
    cuda.device_count = lambda: 0
    cuda.synchronize = lambda *a, **k: None
    cuda.empty_cache = lambda: None
    cuda.Stream = _Stream
    cuda.default_stream = lambda *a, **k: _Stream()
    cuda.current_stream = lambda *a, **k: _Stream()
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    cuda.manual_seed = lambda seed: torch.manual_seed(seed)
    cuda.random = types.SimpleNamespace(get_rng_state=cuda.get_rng_state, set_rng_state=cuda.set_rng_state)
    cuda.nvtx = types.SimpleNamespace(range_push=lambda *a, **k: None, range_pop=lambda *a, **k: None)
    return cuda


def _torch_view() -> types.ModuleType:
    view = types.ModuleType("torch")  # attribute lookups fall through to the real torch
    view.__dict__.update({k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
    for name in _FACTORIES:
        setattr(view, name, _wrap_factory(getattr(torch, name)))
    view.cuda = _cuda_view()
    return view


def _set_rng_state_cpu(new_state, device=-1, graph_safe=False):
    torch.set_rng_state(new_state)


def _get_rng_state_cpu(device="cuda", clone=False, graph_safe=False):
    state = torch.get_rng_state()
    return state.clone() if clone else state


def _clip_grad_by_total_norm_cpu(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """clip_grads.clip_grad_by_total_norm_fp32 without its `grad.type() == 'torch.cuda.FloatTensor'` assert."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attr).detach() for p in parameters if getattr(p, attr, None) is not None]
    coeff = max_norm / (total_norm + 1.0e-6)
    if coeff < 1.0 and grads:
        torch._foreach_mul_(grads, coeff)


def _reporting_cuda_types(fn):
    """Run fn with Tensor.type() naming CPU tensors as CUDA ones: the distributed optimizer sorts
    parameters by those names ('torch.cuda.FloatTensor', ...) and refuses anything else."""
    real_type = torch.Tensor.type

    def cuda_named(self, *args, **kwargs):
        name = real_type(self, *args, **kwargs)
        if args or kwargs or not isinstance(name, str) or ".cuda." in name:
            return name
        return name.replace("torch.", "torch.cuda.", 1)

    def wrapper(*args, **kwargs):
        torch.Tensor.type = cuda_named
        try:
            return fn(*args, **kwargs)
        finally:
            torch.Tensor.type = real_type

    return classmethod(wrapper)


def unshare_optimizer_steps(optimizer) -> None:
    """After a distributed optimizer loads its state without Apex/TE, every parameter's Adam `step` is one
    shared tensor (megatron sets the same object on each), which torch's AdamW then increments once per
    parameter: the bias correction of the next steps goes wrong. Give each parameter its own copy."""
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(sub, "optimizer", None)
        for state in getattr(inner, "state", {}).values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()


def apply() -> bool:
    """Apply the CPU view to the PATCHED modules (once); a no-op when CUDA is available."""
    global _applied
    if _applied or torch.cuda.is_available():
        return _applied
    view = _torch_view()
    for name in PATCHED:
        importlib.import_module(name).torch = view
    for name in ("megatron.core.optimizer.clip_grads", "megatron.core.optimizer.optimizer"):
        importlib.import_module(name).clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_cpu
    dist_opt = importlib.import_module("megatron.core.optimizer.distrib_optimizer").DistributedOptimizer
    build = dist_opt.__dict__["_build_model_and_main_param_groups"].__func__
    dist_opt._build_model_and_main_param_groups = _reporting_cuda_types(build)
    random = importlib.import_module("megatron.core.tensor_parallel.random")
    random._set_cuda_rng_state = _set_rng_state_cpu  # the tracker's save/restore of the "CUDA" generator
    random._get_cuda_rng_state = _get_rng_state_cpu
    _applied = True
    return True


def check() -> list[str]:
    """What in megatron-core no longer looks the way apply() expects (empty = fine)."""
    problems = []
    for name in PATCHED:
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:
            problems.append(f"{name}: cannot import ({exc})")
            continue
        if not hasattr(mod, "torch"):
            problems.append(f"{name}: no module-level `torch` to replace")
    for name in ("megatron.core.optimizer.clip_grads", "megatron.core.optimizer.optimizer"):
        if not hasattr(importlib.import_module(name), "clip_grad_by_total_norm_fp32"):
            problems.append(f"{name}.clip_grad_by_total_norm_fp32 is gone")
    dist_opt = importlib.import_module("megatron.core.optimizer.distrib_optimizer").DistributedOptimizer
    if not isinstance(dist_opt.__dict__.get("_build_model_and_main_param_groups"), classmethod):
        problems.append("DistributedOptimizer._build_model_and_main_param_groups is no longer a classmethod")
    random = importlib.import_module("megatron.core.tensor_parallel.random")
    for fn in ("_set_cuda_rng_state", "_get_cuda_rng_state"):
        if not hasattr(random, fn):
            problems.append(f"megatron.core.tensor_parallel.random.{fn} is gone")
    return problems
