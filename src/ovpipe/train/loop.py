"""One training stage on megatron-core: setup → (resume) → fit → checkpoint, export, manifest.

    stage1   projector only (vision + LLM frozen), on the stage-1 alignment captions   (pack-stage1)
    mid      everything, on the curated, balanced, packed corpus                        (pack)
    sft      everything, loss on assistant tokens only, on instruction conversations   (pack-sft)

Each stage starts from the previous stage's final checkpoint (stage 1 from the recipe's HF weights
or a seeded random init) and resumes from its own latest checkpoint when one exists. The loss is
the mean over every loss token of the global batch (megatron's per-token loss: sums and token
counts all-reduced over data-parallel ranks), so 1 or N processes give the same steps.
"""
from __future__ import annotations

import gc
import os
import socket
import time
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.distributed as dist

from ovpipe import faults, manifest, storage
from ovpipe.config import Recipe
from ovpipe.models import cpu_compat, llm
from ovpipe.models.vlm import build_model, set_trainable
from ovpipe.packing.datasets import step_name
from ovpipe.sharded import Context
from ovpipe.steps import STAGES
from ovpipe.train import checkpoint
from ovpipe.train.data import StageData
from ovpipe.train.layout import check_layout
from ovpipe.train.tracking import Tracker

DATASET = {"stage1": "stage1", "mid": "mid", "sft": "sft"}
PREVIOUS = {"stage1": None, "mid": "stage1", "sft": "mid"}


def checkpoints_uri(ctx: Context, stage: str) -> str:
    return ctx.uri(stage, "checkpoints")


def export_uri(ctx: Context, stage: str) -> str:
    return ctx.uri(stage, "hf")


def data_uri(ctx: Context, stage: str) -> str:
    return getattr(ctx.recipe.train, stage).data or ctx.uri(step_name("pack", DATASET[stage]))


# ---------------------------------------------------------------- setup

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(recipe: Recipe) -> tuple[int, int]:
    """torch.distributed from torchrun's environment (or a single local process) + megatron's groups."""
    from megatron.core import parallel_state, tensor_parallel

    on_gpu = llm.use_gpu()
    if not on_gpu:
        cpu_compat.apply()
    if not dist.is_initialized():
        if "RANK" in os.environ:
            backend = "nccl" if on_gpu else "gloo"
            if on_gpu:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group(backend)
        else:
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    t = recipe.train
    check_layout(t, dist.get_world_size())
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(t.tensor_parallel, t.pipeline_parallel)
    tensor_parallel.model_parallel_cuda_manual_seed(recipe.seed)
    return parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()


def _dtype(recipe: Recipe) -> torch.dtype:
    p = recipe.train.precision
    if p == "auto":
        return torch.bfloat16 if llm.use_gpu() else torch.float32
    return torch.bfloat16 if p == "bf16" else torch.float32


@dataclass
class Trainer:
    recipe: Recipe
    stage: str
    ctx: Context
    model: object = None  # megatron DDP wrapper
    optimizer: object = None
    scheduler: object = None
    data: StageData = None
    export_rows: int = 0  # embedding rows the HF export writes (convert.vocab_rows)
    step: int = 0
    history: list = field(default_factory=list)


def lr_schedule(s) -> dict:
    """OptimizerParamScheduler's lr arguments for a stage: linear warmup, then the stage's decay style."""
    warmup = min(s.warmup_steps, max(s.steps - 1, 0))
    steps = max(s.steps, 1)
    out = dict(init_lr=0.0 if warmup else s.lr, max_lr=s.lr, min_lr=s.min_lr, lr_warmup_steps=warmup,
               lr_decay_steps=steps, lr_decay_style="WSD" if s.decay == "wsd" else s.decay)
    if s.decay == "wsd":
        anneal = s.decay_steps if s.decay_steps is not None else max(1, round(0.2 * steps))
        out.update(wsd_decay_steps=max(1, min(anneal, steps - warmup)), lr_wsd_decay_style="cosine")
    return out


def setup(recipe: Recipe, stage: str, store: str, run_id: str) -> Trainer:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from ovpipe.models.convert import vocab_rows
    from ovpipe.packing.lengths import get_tokenizer

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} (expected one of {STAGES})")
    ctx = Context(recipe, store, run_id)
    dp_rank, dp_size = init_distributed(recipe)
    t, s = recipe.train, getattr(recipe.train, stage)
    tok = get_tokenizer(ctx)
    vocab, export_rows = vocab_rows(recipe, len(tok))
    dtype = _dtype(recipe)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe, vocab, params_dtype=dtype, image_pad_id=tok.convert_tokens_to_ids("<|image_pad|>"))
    if llm.use_gpu():
        model = model.cuda()
    prev = PREVIOUS[stage]
    if prev is None:
        from ovpipe.models.convert import load_pretrained
        from ovpipe.train.vit import vision_weights

        load_pretrained(model, recipe, vision_weights(ctx))
    else:
        found = checkpoint.latest(checkpoints_uri(ctx, prev))
        if found is None:
            raise FileNotFoundError(f"stage {stage} starts from {prev}'s final checkpoint, but "
                                    f"{checkpoints_uri(ctx, prev)} has none (run `ovpipe train --stage {prev}`)")
        checkpoint.load(found["uri"], model)
    set_trainable(model, s.trainable)
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=t.distributed_optimizer)
    ddp = DistributedDataParallel(model.config, ddp_config, model)
    ddp.broadcast_params()
    opt_config = OptimizerConfig(optimizer="adam", lr=s.lr, min_lr=s.min_lr, weight_decay=t.weight_decay,
                                 adam_beta1=t.adam_beta1, adam_beta2=t.adam_beta2, clip_grad=t.clip_grad,
                                 bf16=dtype == torch.bfloat16, params_dtype=dtype,
                                 use_distributed_optimizer=t.distributed_optimizer)
    optimizer = get_megatron_optimizer(opt_config, [ddp])
    scheduler = OptimizerParamScheduler(optimizer, start_wd=t.weight_decay, end_wd=t.weight_decay,
                                        wd_incr_steps=max(s.steps, 1), wd_incr_style="constant", **lr_schedule(s))
    data = StageData(data_uri(ctx, stage), tok, recipe.packing, seed=recipe.seed,
                     global_batch=t.global_batch, micro_batch=t.micro_batch, dp_rank=dp_rank, dp_size=dp_size)
    return Trainer(recipe, stage, ctx, ddp, optimizer, scheduler, data, export_rows)


# ---------------------------------------------------------------- one step

def _forward_step(data_iterator, model):
    mb = next(data_iterator).to(next(model.parameters()).device)
    losses = model(mb.input_ids, mb.position_ids, labels=mb.labels, images=mb.images,
                   packed_seq_params=mb.packed_seq_params(), loss_mask=mb.loss_mask)
    return losses, partial(_loss, mb.loss_mask)


def _loss(loss_mask, losses):
    """Sum of the token losses and their count: megatron divides by the global count (per-token loss)."""
    total = (losses.float().view(-1) * loss_mask.view(-1)).sum()
    n = loss_mask.sum().to(torch.int)
    return total, n, {"lm loss": torch.stack([total.detach(), n.detach().float()])}


def train_step(tr: Trainer) -> dict:
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    config = tr.model.config
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = tr.model.no_sync
    micro = tr.data.micro_batches(tr.step)
    t0 = time.perf_counter()
    tr.model.zero_grad_buffer()
    tr.optimizer.zero_grad()
    reports = get_forward_backward_func()(
        forward_step_func=_forward_step, data_iterator=iter(micro), model=[tr.model], num_microbatches=len(micro),
        seq_length=max(m.tokens for m in micro), micro_batch_size=1, forward_only=False)
    ok, grad_norm, _ = tr.optimizer.step()
    if not ok:
        raise FloatingPointError(f"step {tr.step}: the optimizer skipped the update (inf/nan gradients)")
    tr.scheduler.step(increment=1)
    # what the step saw, summed over data-parallel ranks: loss sum, loss tokens, tokens, capacity, samples
    local = torch.stack([r["lm loss"] for r in reports]).sum(0) if reports else torch.zeros(2)
    cap = tr.recipe.packing.capacity * sum(m.sequences for m in micro)
    samples = sum(len(m.cu_seqlens) - 1 for m in micro)  # sub-samples, not packed sequences
    totals = torch.tensor([float(local[0]), float(local[1]), sum(m.tokens for m in micro), cap, samples],
                          dtype=torch.float64)
    from megatron.core import parallel_state

    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    dt = time.perf_counter() - t0
    tr.step += 1
    return {"loss": float(totals[0] / max(totals[1], 1)), "lr": tr.optimizer.param_groups[0]["lr"],
            "grad_norm": float(grad_norm or 0.0), "tokens_per_second": float(totals[2]) / dt,
            "samples_per_second": float(totals[4]) / dt, "non_padding_fraction": float(totals[2] / totals[3]),
            "loss_tokens": float(totals[1]), "step_seconds": dt}


# ---------------------------------------------------------------- the stage

def _train_state(tr: Trainer, tracker: Tracker) -> dict:
    return {"scheduler": tr.scheduler.state_dict(), "history": tr.history, "mlflow_run_id": tracker.run_id,
            "stage": tr.stage, "config_digest": tr.recipe.digest(tr.stage)}


def _loss_plot(history: list[dict], path: str, title: str) -> None:
    from ovpipe.plots import figure

    with figure(path, (6, 3.5), dpi=110) as (_, ax):
        ax.plot([h["step"] for h in history], [h["loss"] for h in history], lw=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (per loss token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)


def run_stage(recipe: Recipe, stage: str, store: str, run_id: str, log=print) -> dict | None:
    """Train one stage to its step budget (resuming if it was interrupted); returns the manifest (rank 0)."""
    with faults.active(stage):
        return _run_stage(recipe, stage, store, run_id, log)


def _run_stage(recipe: Recipe, stage: str, store: str, run_id: str, log) -> dict | None:
    from ovpipe.train.tracking import preflight

    t_start = time.perf_counter()
    if int(os.environ.get("RANK", "0")) == 0:
        preflight(store)  # an unreachable tracking server fails the stage now, not after it trained
    tr = setup(recipe, stage, store, run_id)
    rank = dist.get_rank()
    ckpt_root = checkpoints_uri(tr.ctx, stage)
    found = checkpoint.latest(ckpt_root)
    state = {}
    if found is not None:
        state = checkpoint.load(found["uri"], tr.model.module, tr.optimizer)
        if state.get("config_digest") != recipe.digest(stage):
            raise ValueError(f"{ckpt_root} holds a {stage} run with other settings; use another run id "
                             f"(or delete {storage.join(tr.ctx.store, run_id, stage)} to start over)")
        tr.scheduler.load_state_dict(state["scheduler"])
        tr.step, tr.history = state["step"], state["history"]
        if rank == 0:
            preflight(store, state.get("mlflow_run_id"))
            log(f"[{stage}] resuming from {found['uri']} (step {tr.step})")
    tracker = Tracker(store, run_id, stage, recipe.to_dict(), state.get("mlflow_run_id"), enabled=rank == 0)
    cfg, t = getattr(recipe.train, stage), recipe.train
    ran_from = len(tr.history)  # a resumed history's earlier steps are rank 0's, timed by another process
    try:
        while tr.step < cfg.steps:
            m = train_step(tr)
            tr.history.append({"step": tr.step, **{k: round(v, 6) for k, v in m.items()}})
            tracker.metrics({k: m[k] for k in ("loss", "lr", "grad_norm", "tokens_per_second",
                                               "samples_per_second", "non_padding_fraction")}, tr.step)
            if rank == 0 and (tr.step % t.log_every == 0 or tr.step in (1, cfg.steps)):
                log(f"[{stage}] step {tr.step}/{cfg.steps} loss {m['loss']:.4f} lr {m['lr']:.2e} "
                    f"grad-norm {m['grad_norm']:.3f} {m['tokens_per_second']:,.0f} tok/s")
            if tr.step % t.checkpoint_every == 0 or tr.step == cfg.steps:
                checkpoint.save(ckpt_root, tr.step, tr.model.module, tr.optimizer, _train_state(tr, tracker),
                                keep=t.keep_checkpoints)
    except BaseException:
        tracker.finish("FAILED")
        raise
    from ovpipe.models.convert import language_state
    from ovpipe.train import stage_checks

    # every rank: the check batch's losses and the full language weights (both need the whole TP group)
    check_mb = tr.data.micro_batches(0)[0]
    reference = stage_checks.megatron_losses(tr.model.module, check_mb)
    ranks = stage_checks.rank_report(tr.history[ran_from:])
    # The final checkpoint holds the optimizer: its moments (2 copies of the weights) go before the export's
    # copies of the weights come (gathered, converted, read back for the check).
    tr.optimizer = tr.scheduler = None
    gc.collect()
    language = [language_state(tr.model.module)]  # a holder _finish empties once the export is written
    result = _finish(tr, tracker, t_start, log, language, (check_mb, reference), ranks) if rank == 0 else None
    dist.barrier()
    return result


def _finish(tr: Trainer, tracker: Tracker, t_start: float, log, language: list, check: tuple, ranks: list) -> dict:
    """Rank 0: HF export (checked against the trained model), loss curve, manifest (metrics per DESIGN.md's
    contract), MLflow artifacts."""
    import json
    import tempfile

    from ovpipe.evaluate import exports
    from ovpipe.models.convert import export_hf
    from ovpipe.packing.lengths import tokenizer_uri
    from ovpipe.train import stage_checks

    ctx, stage = tr.ctx, tr.stage
    hist = tr.history
    with tempfile.TemporaryDirectory() as tmp:
        out = export_hf(tr.model.module, tr.recipe, storage.localize(tokenizer_uri(ctx)), os.path.join(tmp, "hf"),
                        tr.export_rows, language.pop())
        gc.collect()
        agreement = stage_checks.export_agreement(out, *check, _dtype(tr.recipe))
        log(f"[{stage}] export check: per-token losses of the export and the model differ by at most "
            f"{agreement['max_abs_diff']:.2e} over {agreement['tokens']} tokens")
        stage_checks.check_agreement(agreement, f"stage {stage}")
        # ovpipe.json last: `latest:<run>` and the eval step take a folder holding it as a whole export
        storage.put_tree(out, export_uri(ctx, stage), last="ovpipe.json", fault="mid_export")
        plot = os.path.join(tmp, "loss.png")
        _loss_plot(hist, plot, f"{ctx.run_id} · {stage}")
        storage.put_file(plot, ctx.uri(stage, "loss.png"))
        hist_path = os.path.join(tmp, "history.json")
        with open(hist_path, "w") as f:
            json.dump(hist, f)
        storage.put_file(hist_path, ctx.uri(stage, "history.json"))
        cfg_path = os.path.join(tmp, "recipe.json")
        with open(cfg_path, "w") as f:
            json.dump(tr.recipe.to_dict(), f, indent=2, sort_keys=True)
        for p in (plot, cfg_path):
            tracker.artifact(p)
    tracker.metrics({"export_max_abs_loss_diff": agreement["max_abs_diff"],
                     "peak_memory_gib": max(r["peak_memory_gib"] for r in ranks)}, tr.step)
    tracker.finish()
    timed = hist[1:] or hist  # the first step carries one-off costs
    seconds = sum(h["step_seconds"] for h in timed)
    tps = sum(h["tokens_per_second"] * h["step_seconds"] for h in timed) / max(seconds, 1e-9)
    metrics = {"loss_first": hist[0]["loss"], "loss_last": hist[-1]["loss"], "steps": len(hist),
               "tokens_per_second": tps,
               "non_padding_fraction": sum(h["non_padding_fraction"] for h in hist) / len(hist),
               "mlflow_run_id": tracker.run_id, "export_check": agreement, "ranks": ranks}
    prev = PREVIOUS[stage]
    data_manifest = storage.join(data_uri(ctx, stage), "manifest.json")
    inputs = [manifest.ref(data_manifest)] if storage.exists(data_manifest) else []
    if prev:
        inputs.append(manifest.ref(ctx.uri(prev, "manifest.json")))
    latest = checkpoint.latest(checkpoints_uri(ctx, stage))
    outputs = [{"uri": latest["uri"], "sha256": storage.sha256_uri(storage.join(latest["uri"], "train_state.json")),
                "samples": 0},
               {"uri": export_uri(ctx, stage), "sha256": storage.sha256_uri(storage.join(export_uri(ctx, stage),
                                                                                          "llm", "model.safetensors")),
                "samples": 0}]
    samples = int(round(sum(h["samples_per_second"] * h["step_seconds"] for h in hist)))  # trained on, repeats counted
    m = manifest.build(stage, ctx.run_id, tr.recipe.to_dict(), inputs, outputs, manifest.counts(samples, samples, {}),
                       time.perf_counter() - t_start, metrics=metrics)
    manifest.write(ctx.uri(stage, "manifest.json"), m)
    exports.publish(ctx.store, ctx.run_id, stage, export_uri(ctx, stage))  # after the manifest: the stage is done
    log(f"[{stage}] loss {metrics['loss_first']:.4f} -> {metrics['loss_last']:.4f} over {metrics['steps']} steps; "
        f"export {export_uri(ctx, stage)}")
    return m


def train_locally(ctx: Context, stage: str, recipe_uri: str, overrides: list[str] | dict) -> dict | None:
    """Run a stage on this machine: in this process, or under torchrun (gloo on CPU) when the recipe
    asks for train.processes > 1 and we are not already one of torchrun's workers."""
    t = ctx.recipe.train
    n = t.processes
    if n > 1 and "RANK" not in os.environ:
        import json
        import subprocess
        import sys

        check_layout(t, n)  # fail here with the reason, not inside torchrun's workers (the rest get SIGTERM)

        sets = [f"{k}={json.dumps(v)}" for k, v in overrides.items()] if isinstance(overrides, dict) else overrides
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
               "-m", "ovpipe.cli", "train", "--stage", stage, "--recipe", recipe_uri, "--store", ctx.store,
               "--run-id", ctx.run_id, *(f"--set={s}" for s in sets)]
        code = subprocess.call(cmd)
        if code:
            raise RuntimeError(f"torchrun ({n} processes) for stage {stage} exited with code {code}")
        return storage.read_json(ctx.uri(stage, "manifest.json"))
    return run_stage(ctx.recipe, stage, ctx.store, ctx.run_id)
