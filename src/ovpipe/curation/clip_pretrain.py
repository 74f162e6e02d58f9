"""Step `clip`: train the embed model contrastively when the recipe has none to load (tiny recipes).

The paper embeds with MetaCLIP-H/14, pretrained on web-scale, concept-balanced image-text pairs; a
random-init tower makes concept assignment and the filter's CLIP score noise. Tiny recipes give the
same start in miniature: the open_clip model of `embed` (arch, model_config) trained with the CLIP loss
on synthetic scenes drawn like the corpus's, from RNG streams of their own (not the corpus's images,
nor the eval's: those come from synth_stages). As MetaCLIP's own data, the training scenes are
concept-balanced (each realizes a concept drawn uniformly); each image's text is its English caption
or, for `phrase_fraction` of them, one of its true concepts in `concepts.prompt_template` (the short
alt-text of web pairs). Texts that are equal in a batch are positives of each other.

Held out, on scenes drawn with the corpus's Zipf law: concept assignment (precision@K, recall@K of
the vocabulary's top-K against each scene's realized concepts) and caption separation (ROC AUC of
image-caption cosine, true vs shuffled), for the trained model and the random init it replaces.
Cluster recipes load MetaCLIP (embed.weights) and leave this step off (clip.steps: 0).

Writes {run}/clip/open_clip.pt (the state dict embed.weights would name) and {run}/clip/manifest.json.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ovpipe import manifest, storage
from ovpipe.config import EmbedConfig
from ovpipe.curation import quality
from ovpipe.data.decode import SquareInput, square_pixels
from ovpipe.data.synth import load_vocab, synth_samples
from ovpipe.data.truth import phrase_ids
from ovpipe.models.clip import encode_images, encode_texts, import_open_clip, load_clip
from ovpipe.sharded import Context

STEP = "clip"
TRAIN_STREAM, VAL_STREAM = 1 << 32, 2 << 32  # added to the seed: the corpus uses the seed itself
PER_SHARD = 1000  # scenes per synth_samples call
log = logging.getLogger("ovpipe")


def checkpoint_uri(ctx: Context) -> str:
    return ctx.uri(STEP, "open_clip.pt")


def embed_settings(ctx: Context) -> EmbedConfig:
    """The recipe's embed section with the weights every CLIP user loads: embed.weights, or this run's
    clip output when clip.steps > 0."""
    cfg = ctx.recipe.embed
    if not ctx.recipe.clip.steps:
        return cfg
    if not storage.exists(ctx.uri(STEP, "manifest.json")):
        raise FileNotFoundError(f"clip.steps={ctx.recipe.clip.steps}: embed loads the model the clip step trains, "
                                f"but {ctx.uri(STEP, 'manifest.json')} does not exist (run `ovpipe clip`, or "
                                "`ovpipe run --from clip`)")
    return dataclasses.replace(cfg, weights=checkpoint_uri(ctx))


def scenes(ctx: Context, stream: int, count: int, size: int, zipf_s: float | None = None):
    """(uint8 (n, size, size, 3) pixels as embed sees them, English captions, true concept phrases);
    zipf_s None: the corpus's law (synth_samples' default), 0: concepts drawn uniformly."""
    law = {} if zipf_s is None else {"zipf_s": zipf_s}
    s = ctx.recipe.synth
    vocab = load_vocab(s.vocab)
    pixels, captions, truths = [], [], []
    for shard in range(math.ceil(count / PER_SHARD)):
        n = min(PER_SHARD, count - shard * PER_SHARD)
        for sample in synth_samples(ctx.recipe.seed + stream, shard, n, vocab, bad_fraction=0.0,
                                    min_size=s.min_size, max_size=s.max_size, zh_fraction=0.0, **law):
            meta = json.loads(sample["json"])
            blob = next(sample[k] for k in ("jpg", "png", "webp") if k in sample)
            pixels.append(square_pixels(blob, size)[0])
            captions.append(meta["caption_en"])
            truths.append([vocab[j] for j in meta["concepts"]])
    return np.stack(pixels), captions, truths


def _texts(captions: list[str], truths: list[list[str]], template: str, fraction: float, seed: int) -> list[str]:
    rng = np.random.default_rng([seed, TRAIN_STREAM, 1])
    out = []
    for cap, phrases in zip(captions, truths):
        use_phrase = rng.random() < fraction
        pick = int(rng.integers(len(phrases)))
        out.append(template.format(phrases[pick]) if use_phrase else cap)
    return out


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _loss(model, x, tokens, same):
    img = model.encode_image(x, normalize=True)
    txt = model.encode_text(tokens, normalize=True)
    logits = model.logit_scale.exp() * img @ txt.T
    target = same / same.sum(1, keepdim=True)  # equal texts are each other's positives
    return 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                  + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean())


def evaluate(model, tokenizer, square: SquareInput, val, ctx: Context, device: str) -> dict:
    """Held-out concept assignment and caption separation of one model."""
    pixels, captions, truths = val
    cfg = ctx.recipe.concepts
    vocab = load_vocab(storage.localize(cfg.vocab))
    model.eval()
    img = np.concatenate([encode_images(model, square.batch(list(pixels[i:i + 256])), device)
                          for i in range(0, len(pixels), 256)])
    concept_emb = encode_texts(model, tokenizer, [cfg.prompt_template.format(c) for c in vocab], device)
    top = np.argsort(-(img @ concept_emb.T), axis=1)[:, :cfg.k]
    cap = encode_texts(model, tokenizer, captions, device)
    matched = (img * cap).sum(1)
    shuffled = (img * cap[quality.derangement(len(cap), ctx.recipe.seed)]).sum(1)
    return {**quality.topk_precision_recall(top, phrase_ids(truths, vocab)),
            **quality.caption_separation(matched, shuffled)}


def run(ctx: Context) -> dict:
    t0 = time.perf_counter()
    recipe, cfg = ctx.recipe, ctx.recipe.clip
    if not cfg.steps:
        raise ValueError("clip.steps is 0: this recipe loads its embed model (embed.weights) or embeds with a "
                         "random one")
    # the random init embed would load without this step (fp32: it is trained from here)
    fp32 = dataclasses.replace(recipe.embed, precision="fp32")
    init, preprocess, tokenizer, device = load_clip(fp32, recipe.seed)
    square = SquareInput.of(preprocess)
    if square is None:
        raise ValueError(f"clip: embed.arch={recipe.embed.arch!r} does not preprocess by resize + center crop; "
                         "the clip step trains only such towers")
    open_clip = import_open_clip()
    torch.manual_seed(recipe.seed)
    model = open_clip.create_model(recipe.embed.arch, pretrained=None, precision="fp32", device=device)
    model.load_state_dict(init.state_dict())  # the same start as the random init reported beside it
    pixels, captions, truths = scenes(ctx, TRAIN_STREAM, cfg.images, square.size, zipf_s=0.0)
    texts = _texts(captions, truths, recipe.concepts.prompt_template, cfg.phrase_fraction, recipe.seed)
    tokens = tokenizer(texts)
    text_id = torch.from_numpy(np.unique(np.array(texts), return_inverse=True)[1].reshape(-1))
    val = scenes(ctx, VAL_STREAM, cfg.val_images, square.size)
    log.info("clip: %d training scenes (%d distinct texts) at %d px, %d steps", len(texts),
             int(text_id.max()) + 1, square.size, cfg.steps)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg.steps, cfg.warmup_steps))
    order = np.random.default_rng([recipe.seed, TRAIN_STREAM, 2])
    history = []
    for step in range(cfg.steps):
        idx = order.choice(len(texts), min(cfg.batch_size, len(texts)), replace=False)
        x = square.batch(list(pixels[idx])).to(device)
        ids = text_id[idx]
        loss = _loss(model, x, tokens[idx].to(device), (ids[:, None] == ids[None, :]).float().to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        history.append(loss.item())
        if (step + 1) % max(cfg.steps // 10, 1) == 0:
            log.info("[clip] step %d/%d loss %.4f", step + 1, cfg.steps, np.mean(history[-50:]))
    trained = evaluate(model, tokenizer, square, val, ctx, device)
    before = evaluate(init, tokenizer, square, val, ctx, device)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    digest = storage.write_bytes(checkpoint_uri(ctx), buf.getvalue())
    plot = _plot(ctx, history, trained, before)
    metrics = {"loss_first": history[0], "loss_last": float(np.mean(history[-50:])), "steps": cfg.steps,
               **trained, **{f"random_init_{k}": v for k, v in before.items()}}
    n = cfg.images + cfg.val_images
    body = manifest.build(STEP, ctx.run_id, recipe.to_dict(), [], [{"uri": checkpoint_uri(ctx), "sha256": digest,
                          "samples": cfg.images}], manifest.counts(n, n, {}), time.perf_counter() - t0,
                          metrics=metrics, plots=[plot])
    manifest.write(ctx.uri(STEP, "manifest.json"), body)
    log.info("clip: held-out P@%d %.3f (random init %.3f), R@%d %.3f (%.3f), caption AUC %.3f (%.3f)",
             trained["k"], trained["precision_at_k"], before["precision_at_k"], trained["k"],
             trained["recall_at_k"], before["recall_at_k"], trained["clip_score_auc"], before["clip_score_auc"])
    return body


def _plot(ctx: Context, history: list[float], trained: dict, before: dict) -> str:
    from ovpipe.plots import figure

    uri = ctx.uri(STEP, "clip.png")
    with storage.atomic_output(uri, ".png") as path, figure(path, (9, 3.5)) as (fig, ax):
        ax.remove()
        ax, right = fig.subplots(1, 2)
        ax.plot(np.arange(1, len(history) + 1), history, lw=0.8)
        ax.set(xlabel="step", ylabel="contrastive loss", title="clip: training loss")
        names = ["precision_at_k", "recall_at_k", "clip_score_auc"]
        x = np.arange(len(names))
        right.bar(x - 0.2, [before[k] for k in names], 0.4, label="random init")
        right.bar(x + 0.2, [trained[k] for k in names], 0.4, label="trained")
        right.set_xticks(x, [f"P@{trained['k']}", f"R@{trained['k']}", "caption AUC"])
        right.set(ylim=(0, 1), title="held out")
        right.legend(fontsize=8)
    return uri
