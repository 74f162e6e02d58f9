"""Benchmark of the CPU training step: ours (megatron-core) vs plain Hugging Face, and packed vs padded.

Everything runs in one process on the CPU in fp32, torch.set_num_threads = the cores this process may
use; torch.distributed + megatron are initialised once (`ovpipe.train.loop.init_distributed`: gloo,
world size 1, the CPU workarounds). Two model sizes: "tiny" (configs/recipes/tiny.yaml: LLM 128 wide,
2 layers; MLCD 128 wide, 2 layers; packed capacity 512, 4 sequences per micro-batch as the recipe) and
"small" (LLM 512 wide, 4 layers, 8 heads / 4 groups, head_dim 64, ffn 1536; MLCD 256 wide, 4 layers;
capacity 2048, 1 sequence per micro-batch), where compute rather than Python overhead dominates.

Inputs (seeded, no downloads): a byte-level BPE trained with `train_tokenizer` on synthetic captions
(vocab 2000, padded to 2048 for the model); sub-samples = one caption conversation (`caption_turns`)
with one random-noise PNG of 16-64 image tokens (8-px patches, 2x2 merge: 64-128 px sides), total
length long-tailed (lognormal, median 120, clipped to [40, 500] for tiny; x4 for small). Micro-batches
are made by `ovpipe.train.data.build_micro_batch` (PNG decode, loss mask on the assistant tokens),
before any timing: a timed step is forward + backward + optimizer step, as `train_step` times it.

(a) ours vs HF on the same packed micro-batches. Ours: `VisionLanguageModel` (MLCD + projector +
    megatron GPTModel, local spec + `PackedCausalAttention`) in megatron DDP (grads reduced in fp32)
    with megatron's optimizer (Adam, clip_grad 1.0), stepped through megatron's forward-backward
    schedule with `loop._forward_step` / `loop._loss` (THD PackedSeqParams; per-token loss: masked
    sum, grads divided by the loss-token count in finalize_model_grads) -- `loop.train_step` minus
    the data loading. HF: a deep copy of the same MLCD + projector, `transformers.Qwen3ForCausalLM`
    with our weights converted by `megatron_to_hf`, attn_implementation="sdpa", use_cache=False. It
    gets the micro-batch as [sequences, longest] rows (right-padded; one row per packed sequence) with
    position_ids restarting at every sub-sample and no attention mask: transformers 5 detects packing
    from position_ids and builds a block-diagonal causal mask for sdpa (no flash-attn needed); the
    parity check below verifies that against an explicit 4-D block-diagonal mask and against our
    per-token losses. Loss = masked mean of the per-token cross-entropy; torch.optim.AdamW with the same
    lr, betas, eps and weight decay; torch.nn.utils.clip_grad_norm_(1.0). Steps alternate ours/HF (the
    order flips every step) so both see the same machine load; median of the timed steps after warm-up,
    and the median of the per-step ratios (each pair ran back to back: the least load-sensitive figure).
    Target: ours >= 0.85x HF's tokens/s (median step), at each size.
(b) packed vs padded, ours only, on one set of sub-samples, every sample trained once per mode:
    packed = best-fit-decreasing (`pack_lengths`) into capacity-long THD sequences, bins grouped so a
    step holds ~8 samples; padded = 8 samples per step, one per row, right-padded to the longest in the
    batch ([b, s], no packed_seq_params: `PackedCausalAttention` does causal attention per row, pad tokens
    come after the real ones and the loss mask drops them); padded-fixed = rows padded to the capacity
    (tiny only in the full run: for "small" it would take minutes of the budget). A check first: the
    per-token losses of the same 8 samples padded and packed agree. The modes' steps are interleaved
    round-robin. Tokens/s = real (non-padding) tokens / summed step time (ratio by CPU seconds beside it).

A torch-profiler breakdown of our step ("small") follows: vision tower, LLM forward, backward,
optimizer, and the top ops by self CPU time.

    python bench/train_bench.py            # full: ~6 min on 2 idle cores (11 min at load average 5)
    python bench/train_bench.py --quick    # fewer steps and samples, (b) on tiny only: ~1.5-3 min
    python bench/train_bench.py --models small --parts profile    # one part, one size

Writes bench/results/train.json (train_quick.json with --quick; --out to choose).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no downloads, ever
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ovpipe.config import load_recipe  # noqa: E402
from ovpipe.models import llm as llm_lib  # noqa: E402
from ovpipe.packing import pack_lengths  # noqa: E402
from ovpipe.packing.images import image_tokens  # noqa: E402
from ovpipe.packing.sequence import caption_turns  # noqa: E402
from ovpipe.packing.sequence import lengths as seq_lengths  # noqa: E402
from ovpipe.train.data import IGNORE, MicroBatch, build_micro_batch  # noqa: E402

TARGET = 0.85  # ours / HF tokens per second, "small"
PX = 16  # pixels per image token: 8-px patches, 2x2 merge
BATCH = 8  # samples per step in (b)
MODELS = {  # name -> recipe overrides, packing, length distribution (b)
    "tiny": {"model": {}, "capacity": 512, "seqs_per_step": 4, "lengths": (40, 500, 120)},
    "small": {"model": {"llm": {"hidden_size": 512, "num_layers": 4, "num_attention_heads": 8,
                                "num_query_groups": 4, "head_dim": 64, "ffn_hidden_size": 1536},
                        "vision": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
                                   "intermediate_size": 1024}},
              "capacity": 2048, "seqs_per_step": 1, "lengths": (160, 2000, 400)},
}
RUNS = {  # (a) warm-up, timed steps; (b) samples, passes over them, fixed padding on/off; profiled steps
    "full": {"tiny": {"warmup": 3, "steps": 24, "samples": 160, "epochs": 2, "fixed": True, "profile": 5},
             "small": {"warmup": 2, "steps": 10, "samples": 40, "epochs": 1, "fixed": False, "profile": 3}},
    "quick": {"tiny": {"warmup": 1, "steps": 4, "samples": 32, "epochs": 1, "fixed": True, "profile": 1},
              "small": {"warmup": 1, "steps": 2, "samples": 0, "epochs": 1, "fixed": False, "profile": 1}},
}


# ---------------------------------------------------------------- inputs

def _words(rng: np.random.Generator, n: int = 3000) -> list[str]:
    syll = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    return ["".join(rng.choice(syll, size=rng.integers(1, 4))) for _ in range(n)]


def make_tokenizer(out_dir: str, seed: int):
    from ovpipe.packing.tokenizer import load_tokenizer, train_tokenizer

    rng = np.random.default_rng(seed)
    words = _words(rng)
    texts = [" ".join(rng.choice(words, size=rng.integers(5, 40))) for _ in range(4000)]
    return load_tokenizer(train_tokenizer(texts, out_dir, vocab_size=2000)), words


def _png(w: int, h: int, rng: np.random.Generator) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def make_samples(n: int, lo: int, hi: int, median: int, capacity: int, tok, words, geometry, seed: int) -> list:
    """n sub-samples (dicts as the packed shards hold them, + "blob"): one image of 16-64 tokens each,
    total length lognormal(median, 0.7) clipped to [lo, hi]; the exact length is the tokenizer's."""
    rng = np.random.default_rng(seed)
    grids = [(gh, gw) for gh in range(4, 9) for gw in range(4, 9)]  # 16..64 image tokens
    targets = np.clip(np.rint(rng.lognormal(np.log(median), 0.7, n)), lo, min(hi, capacity)).astype(int)
    probe = [(caption_turns(" ".join(words[:100])), [16])]
    per_word = (int(seq_lengths(probe, tok)[0]) - 16 - 20) / 100  # ~tokens per word
    subs = []
    for i, target in enumerate(targets):
        gh, gw = grids[rng.integers(len(grids))]
        while gh * gw > target - 24:
            gh, gw = max(4, gh - 1), max(4, gw - 1)
            if gh * gw == 16:
                break
        k = max(1, int((target - gh * gw - 20) / per_word))
        subs.append({"id": str(i), "turns": caption_turns(" ".join(rng.choice(words, size=k))),
                     "image_tokens": [gh * gw], "images": [f"{i}.png"], "blob": _png(gw * PX, gh * PX, rng)})
        assert image_tokens(gw * PX, gh * PX, geometry) == gh * gw
    lens = seq_lengths([(s["turns"], s["image_tokens"]) for s in subs], tok)
    for s, n_tok in zip(subs, lens):
        while n_tok > capacity:  # rare: trim the caption until it fits
            cap = s["turns"][1]["content"].split()
            s["turns"] = caption_turns(" ".join(cap[: int(len(cap) * 0.9)]))
            n_tok = int(seq_lengths([(s["turns"], s["image_tokens"])], tok)[0])
        s["length"] = int(n_tok)
    return subs


def record(subs: list[dict]) -> dict:
    """One packed sequence as `PackedSequences.read` returns it."""
    return {"json": {"subsamples": [{k: v for k, v in s.items() if k != "blob"} for s in subs]},
            "images": [[s["blob"]] for s in subs]}


@dataclasses.dataclass
class Padded:
    """[b, s] rows, one sample each, right-padded (ours' padded mode and HF's input)."""
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor  # IGNORE on padding
    loss_mask: torch.Tensor
    images: list
    real_tokens: int

    @property
    def tokens(self) -> int:
        return self.input_ids.numel()


def to_rows(mb: MicroBatch, row_ends: list[int], fill_id: int, width: int | None = None) -> Padded:
    """Split a THD micro-batch at row_ends (token offsets) into right-padded rows; padding positions
    count from 0 again, so position-id packing detection sees the padding as a segment of its own."""
    starts = [0] + row_ends[:-1]
    width = width or max(b - a for a, b in zip(starts, row_ends))
    b = len(row_ends)
    ids = torch.full((b, width), fill_id, dtype=torch.int64)
    labels = torch.full((b, width), IGNORE, dtype=torch.int64)
    mask = torch.zeros(b, width)
    pos = torch.zeros(b, width, dtype=torch.int64)
    for r, (a, e) in enumerate(zip(starts, row_ends)):
        n = e - a
        ids[r, :n], labels[r, :n] = mb.input_ids[0, a:e], mb.labels[0, a:e]
        mask[r, :n], pos[r, :n] = mb.loss_mask[0, a:e], mb.position_ids[0, a:e]
        pos[r, n:] = torch.arange(width - n)
    return Padded(ids, pos, labels, mask, mb.images, int(row_ends[-1]))


# ---------------------------------------------------------------- models

def recipe_for(name: str):
    base = load_recipe(str(ROOT / "configs" / "recipes" / "tiny.yaml"))
    spec = MODELS[name]
    model = dataclasses.replace(base.model, llm=dataclasses.replace(base.model.llm, **spec["model"].get("llm", {})),
                                vision=dataclasses.replace(base.model.vision, **spec["model"].get("vision", {})))
    # 16-64 image tokens per image: up to 128x128 px on the 16-px token grid
    packing = dataclasses.replace(base.packing, capacity=spec["capacity"], max_pixels=(8 * PX) ** 2)
    return dataclasses.replace(base, model=model, packing=packing)


def build_ours(recipe, vocab: int, pad_id: int):
    """VisionLanguageModel in megatron DDP + megatron's optimizer, as loop.setup builds them."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from ovpipe.models.vlm import build_model, set_trainable

    t, s = recipe.train, recipe.train.mid
    torch.manual_seed(recipe.seed)
    model = build_model(recipe, vocab, params_dtype=torch.float32, image_pad_id=pad_id)
    set_trainable(model, "all")
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=False), model)
    ddp.broadcast_params()
    opt = get_megatron_optimizer(OptimizerConfig(
        optimizer="adam", lr=s.lr, min_lr=s.min_lr, weight_decay=t.weight_decay, adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2, clip_grad=t.clip_grad, bf16=False, params_dtype=torch.float32,
        use_distributed_optimizer=False), [ddp])
    return ddp, opt


class HFModel(torch.nn.Module):
    """MLCD + projector (a copy of ours) + Qwen3ForCausalLM (our weights, converted)."""

    def __init__(self, vision, llm, image_pad_id: int):
        super().__init__()
        self.vision, self.llm, self.image_pad_id = vision, llm, image_pad_id

    def forward(self, batch: Padded, attention_mask=None) -> torch.Tensor:
        """Per-token losses [b, s] (0 at IGNORE labels)."""
        emb = self.llm.get_input_embeddings()(batch.input_ids)
        feats = self.vision(list(batch.images)).to(emb.dtype)
        emb = emb.masked_scatter((batch.input_ids == self.image_pad_id).unsqueeze(-1), feats)
        logits = self.llm(inputs_embeds=emb, position_ids=batch.position_ids, attention_mask=attention_mask,
                          use_cache=False).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), batch.labels.flatten(), ignore_index=IGNORE,
                               reduction="none").view(batch.labels.shape)


def build_hf(ddp, recipe, vocab: int, tok, pad_id: int):
    from transformers import Qwen3ForCausalLM

    from ovpipe.models.convert import language_state, megatron_to_hf, qwen3_hf_config

    module = ddp.module
    cfg = qwen3_hf_config(recipe.model.llm, vocab, tok)
    cfg.use_cache = False
    qwen = Qwen3ForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    qwen.load_state_dict(megatron_to_hf(language_state(module), recipe.model.llm), strict=True)
    model = HFModel(copy.deepcopy(module.vision), qwen, pad_id).train()
    t, s = recipe.train, recipe.train.mid
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(t.adam_beta1, t.adam_beta2), eps=1e-8,
                            weight_decay=t.weight_decay)
    return model, opt


def block_diagonal_mask(batch: Padded) -> torch.Tensor:
    """Explicit [b, 1, s, s] boolean causal mask that never crosses a sub-sample (nor the padding)."""
    seg = (batch.position_ids == 0).cumsum(1)
    same = seg[:, :, None] == seg[:, None, :]
    causal = torch.ones(seg.shape[1], seg.shape[1], dtype=torch.bool).tril()
    return (same & causal)[:, None]


# ---------------------------------------------------------------- steps

def _padded_forward_step(data_iterator, model):
    """forward_step_func for [b, s] rows: the VLM's embedding with image features placed row-major
    (VisionLanguageModel.embed handles one THD row only), then the GPTModel, causal per row."""
    from ovpipe.train.loop import _loss

    batch = next(data_iterator)
    vlm = model.module
    ids, pos = batch.input_ids, batch.position_ids
    emb = vlm.language.embedding(input_ids=ids, position_ids=pos)  # [s, b, h]
    feats = vlm.vision(list(batch.images)).to(emb.dtype)
    b_idx, s_idx = (ids == vlm.image_pad_id).nonzero(as_tuple=True)  # row-major: the images' order
    emb = emb.index_put((s_idx, b_idx), feats)
    losses = vlm.language(input_ids=None, position_ids=pos, attention_mask=None, decoder_input=emb,
                          labels=batch.labels.clamp(min=0))
    return losses, partial(_loss, batch.loss_mask)


def ours_step(ddp, opt, batches: list, forward_step) -> tuple[float, float]:
    """What loop.train_step does with its micro-batches: the step's wall and CPU seconds."""
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    ddp.config.finalize_model_grads_func = finalize_model_grads
    ddp.config.no_sync_func = ddp.no_sync
    t0, c0 = time.perf_counter(), time.process_time()
    ddp.zero_grad_buffer()
    opt.zero_grad()
    get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter(batches), model=[ddp],
                                num_microbatches=len(batches), seq_length=max(b.tokens for b in batches),
                                micro_batch_size=1, forward_only=False)
    ok, _, _ = opt.step()
    dt = time.perf_counter() - t0, time.process_time() - c0
    if not ok:
        raise FloatingPointError("our optimizer skipped the step")
    return dt


def hf_step(model, opt, batch: Padded, clip: float) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    opt.zero_grad(set_to_none=True)
    losses = model(batch)
    loss = (losses * batch.loss_mask).sum() / batch.loss_mask.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return time.perf_counter() - t0, time.process_time() - c0


def stats(times: list[tuple[float, float]], tokens: list[int]) -> dict:
    """Wall-clock step statistics; CPU seconds beside them (less sensitive to a shared machine's load,
    though OpenMP threads that spin while waiting count too)."""
    t, cpu = np.asarray(times).T
    per_step = np.asarray(tokens) / t
    return {"steps": len(times), "step_s_median": float(np.median(t)), "step_s_p10": float(np.percentile(t, 10)),
            "step_s_p90": float(np.percentile(t, 90)), "tokens_per_s_median": float(np.median(per_step)),
            "tokens_per_s_total": float(np.sum(tokens) / t.sum()), "real_tokens_per_step": float(np.mean(tokens)),
            "cpu_s_median": float(np.median(cpu)), "tokens_per_cpu_s_total": float(np.sum(tokens) / cpu.sum()),
            "step_s": [round(float(x), 4) for x in t], "cpu_s": [round(float(x), 4) for x in cpu]}


# ---------------------------------------------------------------- (a) ours vs HF

def pack_into(subs: list[dict], capacity: int) -> list[list[dict]]:
    bins = pack_lengths(np.array([s["length"] for s in subs]), capacity)
    out: dict[int, list] = {}
    for s, b in zip(subs, bins):
        out.setdefault(int(b), []).append(s)
    return [out[b] for b in sorted(out)]


def parity(ddp, hf, mb: MicroBatch, rows: Padded) -> dict:
    from megatron.core.packed_seq_params import PackedSeqParams

    psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=mb.cu_seqlens, cu_seqlens_kv=mb.cu_seqlens,
                          max_seqlen_q=mb.max_seqlen, max_seqlen_kv=mb.max_seqlen)
    with torch.no_grad():
        ours = ddp.module(mb.input_ids, mb.position_ids, labels=mb.labels.clamp(min=0), images=mb.images,
                          packed_seq_params=psp)[0]
        auto = hf(rows)
        explicit = hf(rows, attention_mask=block_diagonal_mask(rows))
    real = rows.labels != IGNORE
    keep = mb.labels[0] != IGNORE
    return {"max_abs_diff_ours_vs_hf": float((ours[keep] - auto[real]).abs().max()),
            "max_abs_diff_hf_position_ids_vs_explicit_mask": float((auto[real] - explicit[real]).abs().max())}


def compare_hf(name: str, recipe, subs, tok, vocab, pad_id, run: dict) -> dict:
    spec = MODELS[name]
    bins = pack_into(subs, recipe.packing.capacity)[:-1]  # the last BFD bin is the emptiest
    k = spec["seqs_per_step"]
    groups = [bins[i:i + k] for i in range(0, len(bins) - k + 1, k)][:4]  # cycled over the steps
    mbs, rows = [], []
    for g in groups:
        mb = build_micro_batch([record(b) for b in g], tok, recipe.packing)
        mbs.append(mb)
        rows.append(to_rows(mb, np.cumsum([sum(s["length"] for s in b) for b in g]).tolist(), tok.pad_token_id))
    ddp, opt = build_ours(recipe, vocab, pad_id)
    hf, hf_opt = build_hf(ddp, recipe, vocab, tok, pad_id)
    check = parity(ddp, hf, mbs[0], rows[0])
    from ovpipe.train.loop import _forward_step

    times = {"ours": [], "hf": []}
    tokens = []
    clip = recipe.train.clip_grad
    for i in range(run["warmup"] + run["steps"]):
        j = i % len(mbs)
        sides = [("ours", partial(ours_step, ddp, opt, [mbs[j]], _forward_step)),
                 ("hf", partial(hf_step, hf, hf_opt, rows[j], clip))]
        for side, fn in (sides if i % 2 == 0 else sides[::-1]):
            dt = fn()
            if i >= run["warmup"]:
                times[side].append(dt)
        if i >= run["warmup"]:
            tokens.append(mbs[j].tokens)
    res = {side: stats(t, tokens) for side, t in times.items()}
    ratio = res["ours"]["tokens_per_s_median"] / res["hf"]["tokens_per_s_median"]
    cpu_ratio = res["ours"]["tokens_per_cpu_s_total"] / res["hf"]["tokens_per_cpu_s_total"]
    p10_ratio = res["hf"]["step_s_p10"] / res["ours"]["step_s_p10"]  # same tokens per step on both sides
    # each step's pair ran back to back on the same micro-batch: the least load-sensitive ratio
    paired = float(np.median(np.array(res["hf"]["step_s"]) / np.array(res["ours"]["step_s"])))
    return {"micro_batches": len(mbs), "sequences_per_step": k, "capacity": recipe.packing.capacity,
            "real_tokens_per_step": float(np.mean([m.tokens for m in mbs])),
            "subsamples_per_step": float(np.mean([len(m.cu_seqlens) - 1 for m in mbs])),
            "images_per_step": float(np.mean([len(m.images) for m in mbs])),
            "hf_padding_fraction": float(1 - sum(r.real_tokens for r in rows) / sum(r.tokens for r in rows)),
            "parity": check, "hf_llm_attn_implementation": hf.llm.config._attn_implementation,
            "mlcd_attn_implementation": hf.vision.encoder.config._attn_implementation, **res,
            "ratio_ours_over_hf": ratio, "meets_target": bool(ratio >= TARGET),
            "ratio_ours_over_hf_cpu_time": cpu_ratio, "ratio_ours_over_hf_p10_step": p10_ratio,
            "ratio_ours_over_hf_paired_median": paired,
            "warmup_steps": run["warmup"]}


# ---------------------------------------------------------------- (b) packed vs padded

def padded_parity(ddp, mb: MicroBatch, rows: Padded) -> float:
    """Per-token losses of the same samples as one THD stream and as padded rows (same weights)."""
    from ovpipe.train.loop import _forward_step

    with torch.no_grad():
        packed, _ = _forward_step(iter([mb]), ddp)
        padded, _ = _padded_forward_step(iter([rows]), ddp)
    keep = mb.labels[0] != IGNORE
    return float((packed[0][keep] - padded[rows.labels != IGNORE]).abs().max())


def packed_vs_padded(name: str, recipe, subs, tok, vocab, pad_id, run: dict) -> dict:
    from ovpipe.train.loop import _forward_step

    cap = recipe.packing.capacity
    bins = pack_into(subs, cap)
    per_bin = len(subs) / len(bins)
    k = max(1, round(BATCH / per_bin))
    modes = {"packed": [build_micro_batch([record(b) for b in bins[i:i + k]], tok, recipe.packing)
                        for i in range(0, len(bins), k)]}
    padded = []
    for i in range(0, len(subs), BATCH):
        batch = subs[i:i + BATCH]
        mb = build_micro_batch([record(batch)], tok, recipe.packing)
        padded.append((mb, np.cumsum([s["length"] for s in batch]).tolist()))
    fill = tok.pad_token_id
    modes["padded"] = [to_rows(mb, ends, fill) for mb, ends in padded]
    if run["fixed"]:
        modes["padded_fixed"] = [to_rows(mb, ends, fill, width=cap) for mb, ends in padded]
    models = {m: build_ours(recipe, vocab, pad_id) for m in modes}
    fwd = {"packed": _forward_step, "padded": _padded_forward_step, "padded_fixed": _padded_forward_step}
    check = padded_parity(models["padded"][0], padded[0][0], modes["padded"][0])
    for m, batches in modes.items():  # warm-up: one step per mode, not counted
        ours_step(*models[m], [batches[0]], fwd[m])
    times = {m: [] for m in modes}
    for _ in range(run["epochs"]):
        for j in range(max(len(b) for b in modes.values())):  # round-robin over the modes
            for m, batches in modes.items():
                if j < len(batches):
                    times[m].append(ours_step(*models[m], [batches[j]], fwd[m]))
    real = sum(s["length"] for s in subs)
    res = {"samples": len(subs), "real_tokens": real, "capacity": cap, "max_abs_diff_padded_vs_packed_loss": check,
           "lengths_p10_50_90_max": np.percentile([s["length"] for s in subs], [10, 50, 90, 100]).tolist()}
    for m, batches in modes.items():
        toks = [b.tokens if m == "packed" else b.real_tokens for b in batches] * run["epochs"]
        computed = sum(b.tokens for b in batches)
        res[m] = {**stats(times[m], toks), "optimizer_steps_per_epoch": len(batches),
                  "samples_per_step": len(subs) / len(batches), "computed_tokens": computed,
                  "padding_fraction": 1 - real / computed,
                  "padding_fraction_of_capacity": 1 - real / (len(bins) * cap) if m == "packed" else None}
    for m in modes:
        if m != "packed":
            res[f"ratio_packed_over_{m}"] = res["packed"]["tokens_per_s_total"] / res[m]["tokens_per_s_total"]
            res[f"ratio_packed_over_{m}_cpu_time"] = (res["packed"]["tokens_per_cpu_s_total"]
                                                      / res[m]["tokens_per_cpu_s_total"])
    return res


# ---------------------------------------------------------------- profile

def profile(name: str, recipe, subs, tok, vocab, pad_id, steps: int) -> dict:
    """Where our step's time goes: the schedule's pieces called by hand, timed, then torch.profiler."""
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.packed_seq_params import PackedSeqParams
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    bins = pack_into(subs, recipe.packing.capacity)[:-1]
    k = MODELS[name]["seqs_per_step"]
    groups = sorted([bins[i:i + k] for i in range(0, len(bins) - k + 1, k)], key=lambda g: sum(map(len, g)))
    mb = build_micro_batch([record(b) for b in groups[len(groups) // 2]], tok, recipe.packing)  # a typical one
    ddp, opt = build_ours(recipe, vocab, pad_id)
    vlm = ddp.module
    from ovpipe.models.attention import PackedCausalAttention

    hooked = {"core attention (PackedCausalAttention, fwd)": [m for m in vlm.modules()
                                                             if isinstance(m, PackedCausalAttention)],
              "vision encoder (MLCD, fwd)": [vlm.vision.encoder], "projector (fwd)": [vlm.vision.projector]}
    inside: dict = {}
    in_step: dict = {}  # module time summed over this step's calls

    def post(tag):
        in_step[tag] = in_step.get(tag, 0.0) + time.perf_counter() - inside[tag]

    for tag, mods in hooked.items():
        for m in mods:
            m.register_forward_pre_hook(lambda mod, a, tag=tag: inside.__setitem__(tag, time.perf_counter()))
            m.register_forward_hook(lambda mod, a, o, tag=tag: post(tag))
    psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=mb.cu_seqlens, cu_seqlens_kv=mb.cu_seqlens,
                          max_seqlen_q=mb.max_seqlen, max_seqlen_kv=mb.max_seqlen)
    labels = mb.labels.clamp(min=0)
    regions = {}

    def step(prof: bool):
        def timed(tag, fn):
            t0 = time.perf_counter()
            with record_function(tag) if prof else contextlib.nullcontext():
                out = fn()
            regions.setdefault(tag, []).append(time.perf_counter() - t0)
            return out

        ddp.zero_grad_buffer()
        opt.zero_grad()
        emb = timed("1 embed + vision tower (fwd)", lambda: vlm.embed(mb.input_ids, mb.position_ids, mb.images))
        losses = timed("2 LLM forward + loss", lambda: vlm.language(
            input_ids=None, position_ids=mb.position_ids, attention_mask=None, decoder_input=emb, labels=labels,
            packed_seq_params=psp))
        total = (losses.view(-1) * mb.loss_mask.view(-1)).sum()
        timed("3 backward (all)", total.backward)
        timed("4 finalize grads (DDP)", lambda: finalize_model_grads([ddp], mb.loss_mask.sum().to(torch.int)))
        timed("5 optimizer step (clip + Adam)", opt.step)
        for tag, v in in_step.items():
            regions.setdefault(f"  of which {tag}", []).append(v)
        in_step.clear()

    step(False)
    regions.clear()
    for _ in range(steps):
        step(False)
    under = {"vision": 1.1, "projector": 1.2, "core attention": 2.1}  # sub-regions after their region

    def order(key: str) -> float:
        return next((v for w, v in under.items() if w in key), 0) if key.startswith(" ") else float(key[0])

    wall = {k: float(np.median(regions[k])) for k in sorted(regions, key=order)}
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step(True)
    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    sdpa = [e for e in events if "scaled_dot_product" in e.key]
    return {"tokens": mb.tokens, "subsamples": len(mb.cu_seqlens) - 1, "images": len(mb.images),
            "region_seconds_median": wall, "step_seconds": sum(v for k, v in wall.items() if not k.startswith(" ")),
            "top_ops_self_cpu": [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "calls": e.count,
                                  "share": e.self_cpu_time_total / total_self} for e in top],
            "sdpa_calls": {e.key: e.count for e in sdpa}}


# ---------------------------------------------------------------- main

def _print_a(name: str, r: dict) -> None:
    print(f"\n(a) {name}: {r['real_tokens_per_step']:.0f} real tokens/step ({r['sequences_per_step']} x "
          f"{r['capacity']} packed, {r['subsamples_per_step']:.1f} sub-samples, {r['images_per_step']:.1f} images); "
          f"parity max|diff| {r['parity']['max_abs_diff_ours_vs_hf']:.1e}")
    print(f"{'side':<8}{'tokens/s':>11}{'step med':>10}{'p10':>8}{'p90':>8}")
    for side in ("ours", "hf"):
        s = r[side]
        print(f"{side:<8}{s['tokens_per_s_median']:>11,.0f}{s['step_s_median']:>10.3f}{s['step_s_p10']:>8.3f}"
              f"{s['step_s_p90']:>8.3f}")
    print(f"ours / HF = {r['ratio_ours_over_hf']:.3f} (medians; target >= {TARGET}: "
          f"{'met' if r['meets_target'] else 'MISSED'}); median of per-step pairs "
          f"{r['ratio_ours_over_hf_paired_median']:.3f}, by p10 step {r['ratio_ours_over_hf_p10_step']:.3f}, "
          f"by CPU seconds {r['ratio_ours_over_hf_cpu_time']:.3f}")


def _print_b(name: str, r: dict) -> None:
    print(f"\n(b) {name}: {r['samples']} samples, {r['real_tokens']:,} real tokens, lengths p10/50/90/max "
          f"{[int(x) for x in r['lengths_p10_50_90_max']]}, capacity {r['capacity']}")
    print(f"{'mode':<14}{'real tok/s':>11}{'steps':>7}{'samp/step':>10}{'padding':>9}{'step med':>10}{'p10':>8}"
          f"{'p90':>8}{'packed x':>10}")
    for m in ("packed", "padded", "padded_fixed"):
        if m not in r:
            continue
        s = r[m]
        ratio = r.get(f"ratio_packed_over_{m}", 1.0)
        print(f"{m:<14}{s['tokens_per_s_total']:>11,.0f}{s['optimizer_steps_per_epoch']:>7}{s['samples_per_step']:>10.1f}"
              f"{s['padding_fraction']:>9.1%}{s['step_s_median']:>10.3f}{s['step_s_p10']:>8.3f}{s['step_s_p90']:>8.3f}"
              f"{ratio:>10.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps and samples (~3 min)")
    ap.add_argument("--models", default="tiny,small", help="comma-separated: tiny, small")
    ap.add_argument("--parts", default="a,b,profile", help="comma-separated: a, b, profile")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    t_start = time.perf_counter()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(cores)
    load_start = os.getloadavg()
    from ovpipe.train.loop import init_distributed

    init_distributed(recipe_for("tiny"))
    torch.set_num_threads(cores)
    runs = RUNS["quick" if args.quick else "full"]
    parts = set(args.parts.split(","))
    names = [n for n in args.models.split(",") if n]
    results: dict = {"a": {}, "b": {}}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        tok, words = make_tokenizer(tmp, args.seed)
    pad_id = tok.convert_tokens_to_ids("<|image_pad|>")
    vocab = llm_lib.padded_vocab(len(tok))
    print(f"{cores} threads, load average {load_start}, tokenizer {len(tok)} -> vocab {vocab}")
    for name in names:
        recipe, run = recipe_for(name), runs[name]
        lo, hi, median = MODELS[name]["lengths"]
        cap = recipe.packing.capacity
        if "a" in parts:
            n_a = 4 * MODELS[name]["seqs_per_step"] * cap // median + 8
            subs = make_samples(n_a, lo, hi, median, cap, tok, words, recipe.packing, args.seed + 1)
            results["a"][name] = compare_hf(name, recipe, subs, tok, vocab, pad_id, run)
            loads.append(os.getloadavg())
            _print_a(name, results["a"][name])
        if "b" in parts and run["samples"]:  # --quick: tiny only (same code paths)
            subs = make_samples(run["samples"], lo, hi, median, cap, tok, words, recipe.packing, args.seed + 2)
            results["b"][name] = packed_vs_padded(name, recipe, subs, tok, vocab, pad_id, run)
            loads.append(os.getloadavg())
            _print_b(name, results["b"][name])
    prof = None
    if "profile" in parts:
        name = "small" if "small" in names else names[0]
        recipe = recipe_for(name)
        lo, hi, median = MODELS[name]["lengths"]
        cap = recipe.packing.capacity
        subs = make_samples(6 * MODELS[name]["seqs_per_step"] * cap // median, lo, hi, median, cap, tok, words,
                            recipe.packing, args.seed + 3)
        prof = {"model": name, **profile(name, recipe, subs, tok, vocab, pad_id, runs[name]["profile"])}
        loads.append(os.getloadavg())
        print(f"\nprofile of our step ({name}, {prof['tokens']} tokens, {prof['subsamples']} sub-samples, "
              f"{prof['images']} images): {prof['step_seconds']:.3f} s")
        for k, v in prof["region_seconds_median"].items():
            print(f"  {k:<34}{v:>8.3f} s {v / prof['step_seconds']:>6.1%}")
        print("  top ops by self CPU time:")
        for e in prof["top_ops_self_cpu"][:10]:
            print(f"    {e['op']:<52}{e['self_cpu_s']:>8.3f} s {e['share']:>6.1%} {e['calls']:>6} calls")

    import megatron.core
    import transformers

    doc = {
        "config": {"quick": args.quick, "seed": args.seed, "models": {n: {**MODELS[n], **{
            "llm": dataclasses.asdict(recipe_for(n).model.llm), "vision": dataclasses.asdict(
                recipe_for(n).model.vision)}} for n in names}, "runs": {n: runs[n] for n in names},
            "batch_samples_b": BATCH, "target_ours_over_hf": TARGET, "vocab": vocab, "dtype": "float32",
            "optimizer": {"lr": recipe_for("tiny").train.mid.lr, "betas": [0.9, 0.95], "eps": 1e-8,
                          "weight_decay": recipe_for("tiny").train.weight_decay, "clip_grad": 1.0}},
        "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "platform": platform.platform(),
                    "processor": platform.processor(), "python": platform.python_version(),
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "megatron_core": megatron.core.__version__, "load_average_at_start": load_start,
                    "load_average_after_each_part": loads, "load_average_at_end": os.getloadavg()},
        "a_ours_vs_hf": results["a"],
        "meets_target": all(r["meets_target"] for r in results["a"].values()) if results["a"] else None,
        "b_packed_vs_padded": results["b"],
        "profile_ours": prof,
        "seconds": time.perf_counter() - t_start,
    }
    out = args.out or ROOT / "bench" / "results" / ("train_quick.json" if args.quick else "train.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nload average at end {os.getloadavg()}; {doc['seconds']:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
