"""What a stage proves and reports when it ends, at any width and tensor-parallel size:

* the HF export, read back with plain transformers (models/hf_vlm.py), gives the megatron model's
  per-token losses on one training micro-batch (the conversion, the TP gather and the row cut checked on
  the real weights, not only in the tests);
* each rank's peak memory and mean step time.
"""
from __future__ import annotations

import resource

import torch
import torch.distributed as dist

from ovpipe.models.llm import use_gpu

# |HF - megatron| per-token loss allowed: fp32 agrees to rounding; bf16 kernels differ by ~1e-2.
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.1}


@torch.no_grad()
def megatron_losses(model, mb) -> torch.Tensor:
    """Per-token losses [T] of micro-batch `mb` (every rank of the tensor-parallel group calls it)."""
    mb = mb.to(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    losses = model(mb.input_ids, mb.position_ids, labels=mb.labels.clamp(min=0), images=mb.images,
                   packed_seq_params=mb.packed_seq_params())
    model.train(was_training)
    return losses.float().view(-1).cpu()


def _images_per_sequence(mb, image_pad_id: int, tokens_per_pixel: float) -> list[list[torch.Tensor]]:
    """The micro-batch's images split by sub-sequence (each image fills H*W*tokens_per_pixel pad slots)."""
    cu = mb.cu_seqlens.tolist()
    out, queue = [], list(mb.images)
    for a, b in zip(cu[:-1], cu[1:]):
        slots, mine = int((mb.input_ids[0, a:b] == image_pad_id).sum()), []
        while slots > 0:
            im = queue.pop(0)
            mine.append(im)
            slots -= round(im.shape[-2] * im.shape[-1] * tokens_per_pixel)
        if slots:
            raise ValueError("the micro-batch's images do not fill its image-pad slots")
        out.append(mine)
    return out


@torch.no_grad()
def export_agreement(export_dir: str, mb, reference: torch.Tensor, dtype: torch.dtype) -> dict:
    """Rank 0: the export's per-token losses on `mb` against the megatron model's (`reference`)."""
    from ovpipe.models.hf_vlm import HFVisionLanguageModel

    hf = HFVisionLanguageModel.from_export(export_dir, dtype=dtype)
    device = torch.device("cuda" if use_gpu() else "cpu")
    hf.to(device)
    g = hf.geometry
    per_seq = _images_per_sequence(mb, hf.image_pad_id, 1.0 / (g.patch_size * g.merge_size) ** 2)
    labels = mb.labels.clamp(min=0)
    cu = mb.cu_seqlens.tolist()
    ours = torch.cat([hf.token_losses(mb.input_ids[0, a:b].to(device), labels[0, a:b].to(device),
                                      [im.to(device) for im in ims]).float().cpu()
                      for (a, b), ims in zip(zip(cu[:-1], cu[1:]), per_seq)])
    diff = (ours - reference).abs()
    del hf
    return {"tokens": int(diff.numel()), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "loss_megatron": float(reference.mean()), "loss_export": float(ours.mean()),
            "tolerance": TOLERANCE.get(dtype, 0.1)}


def check_agreement(result: dict, where: str) -> None:
    if not result["max_abs_diff"] <= result["tolerance"]:
        raise RuntimeError(f"{where}: the HF export does not reproduce the trained model: per-token losses differ by "
                           f"up to {result['max_abs_diff']:.3g} over {result['tokens']} tokens (allowed "
                           f"{result['tolerance']}); megatron {result['loss_megatron']:.4f}, export "
                           f"{result['loss_export']:.4f}")


def rank_report(history: list[dict]) -> list[dict] | None:
    """Every rank's peak memory and mean step time over the steps this process ran (`history`; the first,
    with its one-off costs, left out), gathered on rank 0 (None elsewhere)."""
    from megatron.core import parallel_state as ps

    timed = history[1:] or history
    if use_gpu():
        peak, kind = torch.cuda.max_memory_allocated(), "cuda_max_allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "max_rss"
    mine = {"rank": dist.get_rank(), "tp_rank": ps.get_tensor_model_parallel_rank(),
            "dp_rank": ps.get_data_parallel_rank(), "peak_memory_gib": round(peak / 2**30, 3), "memory": kind,
            "step_seconds": round(sum(h["step_seconds"] for h in timed) / len(timed), 4) if timed else None}
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    return gathered
