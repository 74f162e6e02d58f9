"""Step `vit`: pretrain the vision tower when the recipe has none to load (tiny recipes).

The paper starts from RICE-ViT, pretrained on web-scale data by region-aware cluster discrimination.
A from-scratch tiny ViT learns shape very slowly through the language-model loss alone (a linear probe
of its features after sft: 0.50 on shape; the same tower trained by a classifier: 0.96), so tiny
recipes give it the same start in miniature: region-aware classification of synthetic scenes
(synth_stages.scene_images, disjoint from the eval images). Each image token's cell (the patches the
projector merges into one LLM token) and the whole image are classified: which shapes (multi-label),
which colours (multi-label), how many. Cluster recipes load RICE-ViT (model.vision.weights) and leave
this step off (vit.steps: 0).

Writes {run}/vit/hf (an MLCDVisionModel folder; stage 1 loads it) and {run}/vit/manifest.json with
metrics loss_first, loss_last, steps and held-out accuracies (shape and colour of a lone shape, count).
It takes about a minute on 2 cores; a rerun trains again from the start, to the same weights.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from ovpipe import manifest, storage
from ovpipe.data import synth_stages
from ovpipe.data.synth import COLORS, SHAPES
from ovpipe.models.vision import load_image, merge_windows, mlcd_config
from ovpipe.sharded import Context

STEP = "vit"
MAX_COUNT = 4  # shapes per synthetic scene
VAL_IMAGES = 512
log = logging.getLogger("ovpipe")


def tower_uri(ctx: Context) -> str:
    return ctx.uri(STEP, "hf")


def vision_weights(ctx: Context) -> str | None:
    """The tower stage 1 starts from: model.vision.weights, this run's vit output, or None (random)."""
    if not ctx.recipe.vit.steps:
        return ctx.recipe.model.vision.weights
    if not storage.exists(ctx.uri(STEP, "manifest.json")):
        raise FileNotFoundError(f"vit.steps={ctx.recipe.vit.steps}: stage 1 starts from the pretrained tower, "
                                f"but {ctx.uri(STEP, 'manifest.json')} does not exist (run `ovpipe vit`, or "
                                "`ovpipe run --from vit`)")
    return tower_uri(ctx)


def labels(scene: dict, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell of the token grid (row-major), then the whole image: shapes and colours present (multi-hot)
    and the number of shapes. A shape belongs to the cell holding its centre."""
    gh, gw = grid
    cells = gh * gw
    shapes = np.zeros((cells + 1, len(SHAPES)), np.float32)
    colors = np.zeros((cells + 1, len(COLORS)), np.float32)
    count = np.zeros(cells + 1, np.int64)
    for s in scene["shapes"]:
        r = min(int(s["y"] / scene["height"] * gh), gh - 1)
        c = min(int(s["x"] / scene["width"] * gw), gw - 1)
        for k in (r * gw + c, cells):
            shapes[k, SHAPES.index(s["shape"])] = 1
            colors[k, list(COLORS).index(s["color"])] = 1
            count[k] += 1
    return shapes, colors, np.minimum(count, MAX_COUNT)


def cell_features(patches: torch.Tensor, grid_h: int, grid_w: int, merge: int) -> torch.Tensor:
    """[n, grid_h * grid_w, D] row-major patch features -> [n, cells + 1, D]: the mean over each merge
    window (the projector's grouping), then the mean over the whole image."""
    x = merge_windows(patches, grid_h, grid_w, merge).mean(2)
    return torch.cat([x, patches.mean(1, keepdim=True)], dim=1)


class Heads(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.out = torch.nn.Linear(width, len(SHAPES) + len(COLORS) + MAX_COUNT + 1)

    def forward(self, feats):
        z = self.out(feats)
        return z[..., :len(SHAPES)], z[..., len(SHAPES):len(SHAPES) + len(COLORS)], z[..., -MAX_COUNT - 1:]


def _data(ctx: Context, split: str, count: int, geometry):
    xs, ys = [], ([], [], [])
    token_px = geometry.patch_size * geometry.merge_size
    for scene, blob in synth_stages.scene_images(ctx.recipe.seed, split, count, ctx.recipe.vit.image_size):
        x = load_image(blob, geometry)  # square scenes: every image gets the same token grid
        grid = (x.shape[1] // token_px, x.shape[2] // token_px)
        xs.append(x)
        for acc, y in zip(ys, labels(scene, grid)):
            acc.append(y)
    return torch.stack(xs), *(torch.from_numpy(np.stack(y)) for y in ys)


def _loss(heads_out, shapes, colors, count):
    zs, zc, zn = heads_out
    return (F.binary_cross_entropy_with_logits(zs, shapes) + F.binary_cross_entropy_with_logits(zc, colors)
            + F.cross_entropy(zn.reshape(-1, zn.shape[-1]), count.reshape(-1)))


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    # warmup, hold, linear anneal over the last 20%: a cosine from the start left single-shape accuracy
    # at 0.73 after 600 steps where holding the rate reached 0.93
    return min((step + 1) / max(warmup, 1), 1.0, (steps - step) / max(0.2 * steps, 1))


@torch.no_grad()
def accuracies(encoder, heads, x, shapes, colors, count, geometry) -> dict:
    """Held-out accuracy of the whole-image heads: shape and colour of lone shapes, shape count."""
    out = heads(_features(encoder, x, geometry))
    zs, zc, zn = (z[:, -1] for z in out)
    lone = count[:, -1] == 1
    return {"shape_accuracy": float((zs[lone].argmax(1) == shapes[lone, -1].argmax(1)).float().mean()),
            "color_accuracy": float((zc[lone].argmax(1) == colors[lone, -1].argmax(1)).float().mean()),
            "count_accuracy": float((zn.argmax(1) == count[:, -1]).float().mean())}


def _features(encoder, x, geometry):
    p = geometry.patch_size
    patches = encoder(pixel_values=x).last_hidden_state[:, 1:]  # drop CLS, as the VLM does
    return cell_features(patches, x.shape[2] // p, x.shape[3] // p, geometry.merge_size)


def run(ctx: Context) -> dict:
    from transformers import MLCDVisionModel

    t0 = time.perf_counter()
    recipe, cfg = ctx.recipe, ctx.recipe.vit
    if not cfg.steps:
        raise ValueError("vit.steps is 0: this recipe loads its tower (model.vision.weights) or starts it random")
    geometry = recipe.packing  # the resize and token grid of training
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(recipe.seed)
    train = [t.to(device) for t in _data(ctx, "train", cfg.images, geometry)]
    val = [t.to(device) for t in _data(ctx, "val", VAL_IMAGES, geometry)]
    log.info("vit: %d training scenes at %s px, %d steps", len(train[0]), tuple(train[0].shape[2:]), cfg.steps)
    encoder = MLCDVisionModel(mlcd_config(recipe.model.vision, recipe.packing.patch_size)).to(device)
    heads = Heads(recipe.model.vision.hidden_size).to(device)
    params = list(encoder.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg.steps, cfg.warmup_steps))
    order = np.random.default_rng([recipe.seed, 4])
    history = []
    for step in range(cfg.steps):
        idx = torch.from_numpy(order.choice(len(train[0]), min(cfg.batch_size, len(train[0])), replace=False))
        x, *ys = (t[idx.to(device)] for t in train)
        loss = _loss(heads(_features(encoder, x, geometry)), *ys)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        history.append(float(loss))
        if (step + 1) % max(cfg.steps // 10, 1) == 0:
            log.info("[vit] step %d/%d loss %.4f", step + 1, cfg.steps, np.mean(history[-50:]))
    encoder.eval()
    acc = accuracies(encoder, heads, *val, geometry)
    with tempfile.TemporaryDirectory() as tmp:
        encoder.to("cpu").save_pretrained(tmp, safe_serialization=True)
        with open(os.path.join(tmp, "model.safetensors"), "rb") as f:
            digest = storage.sha256_bytes(f.read())
        storage.put_tree(tmp, tower_uri(ctx))
    n = cfg.images + VAL_IMAGES
    metrics = {"loss_first": history[0], "loss_last": float(np.mean(history[-50:])), "steps": cfg.steps, **acc}
    body = manifest.build(STEP, ctx.run_id, recipe.to_dict(), [], [{"uri": tower_uri(ctx), "sha256": digest,
                          "samples": cfg.images}], manifest.counts(n, n, {}), time.perf_counter() - t0,
                          metrics=metrics)
    manifest.write(ctx.uri(STEP, "manifest.json"), body)
    log.info("vit: held-out %s", {k: round(v, 3) for k, v in acc.items()})
    return body
