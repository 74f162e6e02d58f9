"""GPU benchmark of the training step: a Qwen3-4B-shaped megatron GPTModel on packed 8k sequences.

The model is configs/recipes/ov15-4b.yaml's LLM (hidden 2560, 36 layers, 32 query heads / 8 KV groups,
head dim 128, FFN 9728, RMSNorm on q and k, RoPE 1e6, tied embeddings, vocab 151,936) made by
ovpipe.models.llm (qwen3_config + build_gpt), bf16, in megatron DDP (fp32 gradient buffers) with
megatron's Adam and grad clipping, stepped through megatron's forward-backward schedule as
ovpipe.train.loop does: each micro-batch is one `--capacity`-token THD stream of several sub-sequences
(lognormal lengths, median 1024) with cu_seqlens, positions restarting per sub-sequence, and the
per-token loss. Attention: Transformer Engine's spec when it is installed (what the training image
runs); without it (a bare device) the local spec with a flash SDPA call per sub-sequence (torch's
fused kernel, keys/values expanded to the query heads); on CPU the local spec with ovpipe's
PackedCausalAttention. The JSON says which ran.

Why --layers: 36 layers with Adam need ~18 bytes per parameter (bf16 weights, fp32 gradients, fp32
master + two moments) = 72 GB for 4.0B parameters before any activation, more than one 80 GB H100.
So the step is timed at a few depths (default 4 and 12 layers), step time fitted as a + b·layers (the
embedding, output layer, loss and their optimizer share are a; each layer adds b), and the 36-layer
step extrapolated from that line; those figures are labelled "extrapolated" in the JSON.

FLOPs (MFU): per token 6·N (N = the matmul weights: per layer QKV h·(q + 2·kv), output q·h, MLP 3·h·f;
plus the h·V output layer; the embedding lookup is no matmul) plus causal attention 6·q·Σl² per
layer over the sub-sequence lengths l (QKᵀ and AV, half of each under the causal mask, ×3 for
backward); no recompute, so model FLOPs = hardware FLOPs. MFU = FLOPs / step time / dense bf16 peak
(gpu_embed.PEAK_BF16_TFLOPS; --peak-tflops overrides).

    python bench/gpu_train.py           # CUDA: ~1 min on one H100; bench/results/gpu_train.json
    python bench/gpu_train.py --tiny    # CPU, the tiny recipe's LLM, fp32, no TE: ~15 s
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import socket
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from gpu_embed import device_info, sync  # noqa: E402
from megatron.core.transformer.module import MegatronModule  # noqa: E402

from ovpipe.config import load_recipe  # noqa: E402
from ovpipe.models import llm as llm_lib  # noqa: E402

QWEN3_ROWS = 151_936  # Qwen3's embedding rows (more than its tokenizer's 151,669 tokens)


class SegmentFlashAttention(MegatronModule):
    """Core attention over THD packs for a GPU without Transformer Engine: one causal SDPA call per
    sub-sequence (flash on CUDA), keys/values expanded to the query heads so no math fallback is
    picked. Constructor and forward follow megatron's core-attention slot, as PackedCausalAttention."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, pg_collection=None):
        super().__init__(config=config)
        self.scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)

    def forward(self, query, key, value, attention_mask=None, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is None or packed_seq_params.qkv_format != "thd":
            raise ValueError("SegmentFlashAttention takes THD packed sequences only")
        # the host copy saves a device sync per layer (see make_micro_batch)
        cu = getattr(packed_seq_params, "cu_seqlens_host", None) or packed_seq_params.cu_seqlens_q.tolist()
        rep = query.shape[1] // key.shape[1]
        outs = []
        for a, b in zip(cu[:-1], cu[1:]):
            q, k, v = (x[a:b].transpose(0, 1)[None] for x in (query, key, value))  # [1, heads, l, d]
            if rep > 1:
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)[0].transpose(0, 1))
        out = torch.cat(outs)  # [t, heads, d]
        return out.reshape(out.shape[0], -1)


# ---------------------------------------------------------------- setup

def init_megatron(on_gpu: bool, seed: int) -> None:
    """One process, world size 1: NCCL on GPU, gloo + ovpipe's CPU view of megatron on CPU."""
    from megatron.core import parallel_state, tensor_parallel

    from ovpipe.models import cpu_compat

    if not on_gpu:
        cpu_compat.apply()
    if not dist.is_initialized():
        if on_gpu:
            torch.cuda.set_device(0)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("nccl" if on_gpu else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                                rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def attention_kind(on_gpu: bool) -> str:
    if not on_gpu:
        return "local spec + ovpipe PackedCausalAttention (CPU)"
    if llm_lib.transformer_engine_available():
        return "transformer_engine spec (THD fused attention)"
    return "local spec + per-sub-sequence flash SDPA (Transformer Engine not installed)"


@contextlib.contextmanager
def spec_for_device(on_gpu: bool):
    """build_gpt picks TE on any GPU; without TE on a GPU, hand it the local spec with SegmentFlashAttention
    instead (patched for the one call, so build_gpt's GPTModel arguments stay the single source)."""
    if not on_gpu or llm_lib.transformer_engine_available():
        yield
        return
    original = llm_lib.layer_spec

    def local_flash(_on_gpu: bool):
        spec = original(False)
        spec.submodules.self_attention.submodules.core_attention = SegmentFlashAttention
        return spec
    llm_lib.layer_spec = local_flash
    try:
        yield
    finally:
        llm_lib.layer_spec = original


def build(recipe, layers: int, vocab: int, dtype: torch.dtype, on_gpu: bool):
    """GPTModel (ovpipe's Qwen3 config, `layers` deep) in megatron DDP + megatron's optimizer, as loop.setup."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    cfg = dataclasses.replace(recipe.model.llm, num_layers=layers)
    t, s = recipe.train, recipe.train.mid
    torch.manual_seed(recipe.seed)
    config = llm_lib.qwen3_config(cfg, params_dtype=dtype, init_std=recipe.model.init_std)
    with spec_for_device(on_gpu):
        model = llm_lib.build_gpt(cfg, config, vocab)
    if on_gpu:
        model = model.cuda()
    ddp = DistributedDataParallel(config, DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=False), model)
    ddp.broadcast_params()
    opt = get_megatron_optimizer(OptimizerConfig(
        optimizer="adam", lr=s.lr, min_lr=s.min_lr, weight_decay=t.weight_decay, adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2, clip_grad=t.clip_grad, bf16=dtype == torch.bfloat16, params_dtype=dtype,
        use_distributed_optimizer=False), [ddp])
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = ddp.no_sync
    return ddp, opt, cfg


def sub_lengths(capacity: int, median: int, rng: np.random.Generator) -> list[int]:
    """Lognormal sub-sequence lengths filling `capacity` exactly (the packer fills ~99.9%)."""
    out = []
    while sum(out) < capacity:
        out.append(int(np.clip(rng.lognormal(math.log(median), 0.8), 32, capacity)))
    out[-1] -= sum(out) - capacity
    return [n for n in out if n > 0]


def make_micro_batch(lengths: list[int], vocab: int, device, rng: np.random.Generator) -> dict:
    """One THD stream: random ids, next-token labels within each sub-sequence, restarting positions."""
    from megatron.core.packed_seq_params import PackedSeqParams

    ids = rng.integers(0, vocab, sum(lengths))
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    labels, mask = np.roll(ids, -1), np.ones(len(ids), np.float32)
    mask[cu[1:] - 1] = 0.0  # a sub-sequence's last token has no next token
    pos = np.concatenate([np.arange(n) for n in lengths])
    t = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dt)[None]  # noqa: E731
    cu_t = torch.from_numpy(cu).to(device=device, dtype=torch.int32)
    psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_t, cu_seqlens_kv=cu_t,
                          max_seqlen_q=max(lengths), max_seqlen_kv=max(lengths))
    psp.cu_seqlens_host = cu.tolist()
    return {"input_ids": t(ids, torch.long), "labels": t(labels, torch.long), "loss_mask": t(mask, torch.float32),
            "position_ids": t(pos, torch.long), "packed_seq_params": psp, "lengths": lengths}


def _forward_step(data_iterator, model):
    mb = next(data_iterator)
    losses = model(mb["input_ids"], mb["position_ids"], None, labels=mb["labels"],
                   packed_seq_params=mb["packed_seq_params"])
    return losses, partial(_loss, mb["loss_mask"])


def _loss(loss_mask, losses):
    """loop._loss: the masked sum and its token count (megatron's per-token loss divides)."""
    total = (losses.float().view(-1) * loss_mask.view(-1)).sum()
    n = loss_mask.sum().to(torch.int)
    return total, n, {"lm loss": torch.stack([total.detach(), n.detach().float()])}


def train_step(ddp, opt, micro: list[dict]) -> dict:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    sync()
    t0 = time.perf_counter()
    ddp.zero_grad_buffer()
    opt.zero_grad()
    reports = get_forward_backward_func()(
        forward_step_func=_forward_step, data_iterator=iter(micro), model=[ddp], num_microbatches=len(micro),
        seq_length=micro[0]["input_ids"].shape[1], micro_batch_size=1, forward_only=False)
    sync()
    t1 = time.perf_counter()
    ok, grad_norm, _ = opt.step()
    sync()
    t2 = time.perf_counter()
    if not ok:
        raise FloatingPointError("the optimizer skipped the update (inf/nan gradients)")
    loss = torch.stack([r["lm loss"] for r in reports]).sum(0)
    return {"step": t2 - t0, "fwd_bwd": t1 - t0, "optimizer": t2 - t1, "loss": float(loss[0] / loss[1]),
            "grad_norm": float(grad_norm or 0.0)}


# ---------------------------------------------------------------- FLOPs

def matmul_params(cfg, layers: int, vocab: int) -> int:
    h, q, kv, f = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_query_groups * cfg.head_dim, \
        cfg.ffn_hidden_size
    return layers * (h * (q + 2 * kv) + q * h + 3 * h * f) + h * vocab


def step_flops(cfg, layers: int, vocab: int, micro: list[dict]) -> float:
    q = cfg.num_attention_heads * cfg.head_dim
    tokens = sum(sum(m["lengths"]) for m in micro)
    sq = sum(n * n for m in micro for n in m["lengths"])
    return 6 * matmul_params(cfg, layers, vocab) * tokens + 6 * q * sq * layers


def counted_flops(ddp, mb: dict) -> int:
    """torch's FLOP counter over one micro-batch's forward + backward (its matmuls: on CPU the fused
    attention kernel is not counted), to check the analytic 6·N·tokens."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        losses, _ = _forward_step(iter([mb]), ddp)
        losses.sum().backward()
    ddp.zero_grad_buffer()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------- main

def measure(recipe, layers, vocab, dtype, on_gpu, micro, warmup, steps) -> dict:
    device = "cuda" if on_gpu else "cpu"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() / 2 ** 30 if on_gpu else None  # > 0: an earlier depth leaked
    t0 = time.perf_counter()
    ddp, opt, cfg = build(recipe, layers, vocab, dtype, on_gpu)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in ddp.module.parameters())
    try:
        for _ in range(warmup):
            train_step(ddp, opt, micro)
        timed = [train_step(ddp, opt, micro) for _ in range(steps)]
        counted = None if on_gpu else counted_flops(ddp, micro[0])  # TE's kernels are invisible to the counter
    finally:
        del ddp, opt
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
    med = {k: statistics.median(r[k] for r in timed) for k in ("step", "fwd_bwd", "optimizer")}
    tokens = sum(sum(m["lengths"]) for m in micro)
    return {"layers": layers, "parameters": params, "build_seconds": round(build_s, 2),
            "step_seconds": round(med["step"], 4), "fwd_bwd_seconds": round(med["fwd_bwd"], 4),
            "optimizer_seconds": round(med["optimizer"], 4), "tokens_per_step": tokens,
            "tokens_per_second": round(tokens / med["step"], 1), "step_flops": step_flops(cfg, layers, vocab, micro),
            "losses": [round(r["loss"], 4) for r in timed],
            "flop_check": counted and {"counted_matmul": counted, "analytic_matmul":
                                       6 * matmul_params(cfg, layers, vocab) * sum(micro[0]["lengths"])},
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if on_gpu else None,
            "memory_before_gib": round(before, 2) if on_gpu else None,
            "device": device}


def with_mfu(r: dict, peak: float | None) -> dict:
    achieved = r["step_flops"] / r["step_seconds"] / 1e12
    return {**r, "model_tflops": round(achieved, 2), "mfu": round(achieved / peak, 4) if peak else None}


def extrapolate(rows: list[dict], target: int, recipe, vocab: int, micro: list[dict], peak) -> dict | None:
    """Least-squares step time (and memory) = a + b·layers over the measured depths, read at `target`."""
    ok = [r for r in rows if "step_seconds" in r]
    if len({r["layers"] for r in ok}) < 2:
        return None
    x = np.array([r["layers"] for r in ok], float)
    fit = lambda key: np.polyfit(x, np.array([r[key] for r in ok], float), 1)  # noqa: E731
    b, a = fit("step_seconds")
    step = a + b * target
    out = {"extrapolated": True, "layers": target, "from_layers": [r["layers"] for r in ok],
           "fixed_seconds": round(float(a), 4), "per_layer_seconds": round(float(b), 5),
           "step_seconds": round(float(step), 4), "tokens_per_second": round(ok[0]["tokens_per_step"] / step, 1),
           "step_flops": step_flops(recipe.model.llm, target, vocab, micro)}
    if all(r["peak_memory_gib"] is not None for r in ok):
        mb, ma = fit("peak_memory_gib")
        out["peak_memory_gib"] = round(float(ma + mb * target), 1)
    return with_mfu(out, peak)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU-sized run (automatic without CUDA)")
    ap.add_argument("--out", default=None, help="JSON path (bench/results/gpu_train.json; _tiny with --tiny)")
    ap.add_argument("--layers", default=None, help="depths to time, comma-separated (4,12; tiny 1,2)")
    ap.add_argument("--micro-batches", type=int, default=None, help="packed sequences per optimizer step")
    ap.add_argument("--capacity", type=int, default=None, help="tokens per packed sequence (recipe's: 8192)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--full-layers", type=int, default=None,
                    help="depth to report or extrapolate to (the recipe's; tiny: 4, so the fit is exercised)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the dense bf16 peak")
    args = ap.parse_args(argv)
    on_gpu = torch.cuda.is_available() and not args.tiny
    tiny = not on_gpu
    recipe = load_recipe(str(ROOT / "configs" / "recipes" / ("tiny.yaml" if tiny else "ov15-4b.yaml")))
    full_layers = args.full_layers or (4 if tiny else recipe.model.llm.num_layers)
    depths = [int(v) for v in (args.layers or ("1,2" if tiny else "4,12")).split(",")]
    vocab = 2048 if tiny else llm_lib.padded_vocab(QWEN3_ROWS)
    capacity = args.capacity or (256 if tiny else recipe.packing.capacity)
    n_micro = args.micro_batches or (2 if tiny else 4)
    warmup, steps = args.warmup or (1 if tiny else 2), args.steps or (2 if tiny else 5)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    t_start = time.perf_counter()

    info = device_info(args.peak_tflops)
    peak = info["peak_bf16_tflops"]
    init_megatron(on_gpu, recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    median = max(32, capacity // 8)
    micro = [make_micro_batch(sub_lengths(capacity, median, rng), vocab, "cuda" if on_gpu else "cpu", rng)
             for _ in range(n_micro)]
    attention = attention_kind(on_gpu)
    print(f"{info['device']}: peak {peak} TFLOP/s bf16 dense, 8192^3 matmul {info['matmul_bf16_tflops']} TFLOP/s")
    print(f"model: {recipe.name} LLM (hidden {recipe.model.llm.hidden_size}, {recipe.model.llm.num_layers} layers "
          f"in the recipe, reported at {full_layers}), vocab {vocab}, {dtype}; attention: {attention}")
    print(f"batch: {n_micro} x {capacity}-token packs, {sum(len(m['lengths']) for m in micro)} sub-sequences")
    rows = []
    for layers in sorted(depths):
        try:
            r = with_mfu(measure(recipe, layers, vocab, dtype, on_gpu, micro, warmup, steps), peak)
        except torch.cuda.OutOfMemoryError as exc:  # record the depth that did not fit, keep the others
            rows.append({"layers": layers, "oom": str(exc).splitlines()[0]})
            print(f"  {layers:2d} layers: out of memory")
            gc.collect()
            torch.cuda.empty_cache()
            break
        rows.append(r)
        mfu = f"MFU {r['mfu']:.1%}" if r["mfu"] is not None else "no peak known"
        mem = f", peak {r['peak_memory_gib']} GiB" if r["peak_memory_gib"] is not None else ""
        print(f"  {layers:2d} layers: step {r['step_seconds']:.3f} s (fwd+bwd {r['fwd_bwd_seconds']:.3f}, optimizer "
              f"{r['optimizer_seconds']:.3f}), {r['tokens_per_second']:,.0f} tok/s, {r['model_tflops']} TFLOP/s, "
              f"{mfu}{mem}; loss {r['losses'][-1]}")
    full = next((r for r in rows if r.get("layers") == full_layers and "step_seconds" in r), None)
    ext = None if full else extrapolate(rows, full_layers, recipe, vocab, micro, peak)
    if ext:
        mfu = f"MFU {ext['mfu']:.1%}" if ext["mfu"] is not None else "no peak known"
        print(f"  {full_layers} layers EXTRAPOLATED from {ext['from_layers']} (a + b*layers: {ext['fixed_seconds']} s "
              f"+ {ext['per_layer_seconds']} s/layer): step {ext['step_seconds']:.3f} s, "
              f"{ext['tokens_per_second']:,.0f} tok/s, {mfu}" +
              (f", ~{ext['peak_memory_gib']} GiB" if "peak_memory_gib" in ext else ""))
    result = {"bench": "gpu_train", "tiny": tiny, **info, "recipe": recipe.name, "attention": attention,
              "dtype": str(dtype), "vocab": vocab, "capacity": capacity, "micro_batches": n_micro,
              "sub_sequences": [m["lengths"] for m in micro], "warmup_steps": warmup, "timed_steps": steps,
              "model": {k: getattr(recipe.model.llm, k) for k in ("hidden_size", "num_layers", "num_attention_heads",
                                                                 "num_query_groups", "head_dim", "ffn_hidden_size")},
              "rows": rows, "full_depth": full, "extrapolated_full_depth": ext,
              "seconds": round(time.perf_counter() - t_start, 1)}
    out = Path(args.out or ROOT / "bench" / "results" / ("gpu_train_tiny.json" if tiny else "gpu_train.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['seconds']} s)")
    if dist.is_initialized():
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
