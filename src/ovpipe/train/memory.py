"""GPU memory of a training layout, from the model's own parameter counts: does a recipe fit its GPUs?

Per GPU of a `tensor_parallel` × data-parallel layout (pipeline_parallel 1), with what train.loop builds:

    weights        params_per_rank × 2 bytes (bf16)
    gradients      params_per_rank × 4 (DDP's buffers are fp32: grad_reduce_in_fp32)
    optimizer      params_per_rank × 12 (fp32 main copy, Adam's two moments) / data-parallel size when
                   train.distributed_optimizer, else × 1
    activations    the LLM at `tokens` per micro-batch (Korthikanti et al. 2022, flash/THD attention, no
                   sequence parallelism): per layer s·h·(10 + 24/t) bytes kept, or with full recompute only
                   each layer's bf16 input (2·s·h) plus one layer's working set; the output layer's bf16
                   logits and fp32 softmax on the loss rows, s·V/t·6; the vision tower (not recomputed,
                   replicated over TP) on `image_tokens` × merge² patches, 34·p·h_v per layer.

The counts come from the architectures themselves (transformers' Qwen3 and MLCD on the meta device, so
8B costs nothing), the per-rank share from how megatron splits them (ovpipe.models.sharding: everything
but the norms is divided by TP). The estimate leaves out allocator fragmentation and NCCL/TE workspaces;
`headroom` is what remains of `gpu_gb` after it.
"""
from __future__ import annotations

GB = 1024 ** 3


def parameter_counts(recipe, vocab: int) -> dict:
    """{'llm', 'llm_norms', 'vision', 'projector'} parameter counts of the recipe's model."""
    import torch
    from transformers import MLCDVisionModel, Qwen3ForCausalLM

    from ovpipe.models.convert import qwen3_hf_config
    from ovpipe.models.vision import Projector, mlcd_config

    m, p = recipe.model, recipe.packing
    with torch.device("meta"):
        qwen = Qwen3ForCausalLM(qwen3_hf_config(m.llm, vocab))
        tower = MLCDVisionModel(mlcd_config(m.vision, p.patch_size))
        projector = Projector(m.vision.hidden_size, m.llm.hidden_size, p.merge_size)
    llm = {n: t.numel() for n, t in qwen.named_parameters()}  # tied embeddings appear once
    return {"llm": sum(llm.values()), "llm_norms": sum(v for n, v in llm.items() if "norm" in n),
            "vision": sum(t.numel() for t in tower.parameters()),
            "projector": sum(t.numel() for t in projector.parameters())}


def estimate(recipe, vocab: int, *, gpus: int, tokens: int | None = None, image_tokens: int = 0,
             recompute: str | None = None, gpu_gb: float = 80.0) -> dict:
    """Bytes per GPU (in GiB) for the recipe's layout over `gpus` GPUs; see the module docstring."""
    t_cfg, m = recipe.train, recipe.model
    tp = t_cfg.tensor_parallel
    dp = gpus // (tp * t_cfg.pipeline_parallel)
    s = tokens or recipe.packing.capacity * t_cfg.micro_batch
    recompute = recompute or t_cfg.recompute
    n = parameter_counts(recipe, vocab)
    per_rank = (n["llm"] - n["llm_norms"]) / tp + n["llm_norms"] + n["vision"] + n["projector"]
    h, layers = m.llm.hidden_size, m.llm.num_layers
    working = s * h * (10 + 24 / tp)  # one layer's activations kept for its backward
    llm_act = layers * working if recompute == "none" else layers * 2 * s * h + working
    logits = s * vocab / tp * 6
    patches = image_tokens * recipe.packing.merge_size ** 2
    vision_act = m.vision.num_hidden_layers * 34 * patches * m.vision.hidden_size
    parts = {"weights": per_rank * 2, "gradients": per_rank * 4,
             "optimizer": per_rank * 12 / (dp if t_cfg.distributed_optimizer else 1),
             "activations_llm": llm_act, "logits": logits, "activations_vision": vision_act}
    total = sum(parts.values())
    return {"gpus": gpus, "tensor_parallel": tp, "data_parallel": dp, "tokens": s, "image_tokens": image_tokens,
            "recompute": recompute, "parameters": n, "parameters_per_rank": int(per_rank),
            "gib": {k: round(v / GB, 2) for k, v in parts.items()}, "total_gib": round(total / GB, 2),
            "gpu_gib": gpu_gb, "fits": total / GB < gpu_gb, "headroom_gib": round(gpu_gb - total / GB, 2)}
