"""The three datasets a run packs, and how a stored sample becomes a conversation with images.

  mid     the curated corpus (filter's shards: image + caption) for stage 1.5
  stage1  alignment pairs (LLaVA-558K style) for stage 1
  sft     instruction conversations for stage 2

Their steps live under `{run}/{step}` for mid and `{run}/{step}-{dataset}` for the others
(`synth-stage1`, `lengths-sft`, `pack-stage1`, …).
"""
from __future__ import annotations

import json
import re

from ovpipe import manifest, steps, storage
from ovpipe.data.shards import IMAGE_EXTS, Sample, list_shards, sniff_ext
from ovpipe.packing.sequence import caption_turns, normalize_turns

DATASETS = steps.DATASETS
PLACEHOLDER = "<image>"


class SampleError(ValueError):
    """A sample that cannot become a training sequence: counted as a reject with this reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


step_name = steps.folder


def stage_config(ctx, dataset: str):
    return getattr(ctx.recipe.packing, dataset)


def dataset_shards(ctx, dataset: str) -> list[str]:
    """Input shards of a dataset, sorted: filter's output for mid; the stage input or its synth step."""
    if dataset == "mid":
        body = manifest.read(ctx.uri("filter", "manifest.json"))
        return [o["uri"] for o in body["outputs"] if o["uri"].endswith(".tar")]
    cfg = stage_config(ctx, dataset)
    if cfg.input:
        return list_shards(cfg.input, ctx.recipe.data.format)
    body = manifest.read(ctx.uri(step_name("synth", dataset), "manifest.json"))
    return [o["uri"] for o in body["outputs"]]


def dataset_inputs(ctx, dataset: str) -> list[dict]:
    """Manifest `inputs` for a dataset's lengths step."""
    if dataset == "mid":
        return [manifest.ref(ctx.uri("filter", "manifest.json"))]
    cfg = stage_config(ctx, dataset)
    if cfg.input:
        listing = "\n".join(dataset_shards(ctx, dataset)).encode()
        return [{"uri": cfg.input, "sha256": storage.sha256_bytes(listing)}]
    return [manifest.ref(ctx.uri(step_name("synth", dataset), "manifest.json"))]


def _image_members(sample: Sample) -> list[tuple[bytes, str]]:
    """Images in order: `jpg` alone, or numbered members `0.jpg`, `1.png`, … (parquet: the image column)."""
    found = []
    for ext, data in sample.members.items():
        m = re.fullmatch(r"(?:(\d+)\.)?([a-z]+)", ext)
        if m and m.group(2) in IMAGE_EXTS:
            found.append((int(m.group(1) or -1), data, m.group(2)))
    if not found and sample.image is not None:  # parquet input: one image column
        return [(sample.image, sample.image_ext or sniff_ext(sample.image))]
    return [(data, ext) for _, data, ext in sorted(found, key=lambda t: t[0])]


def sample_turns(sample: Sample, dataset: str, caption_prompt: str = "") -> tuple[list[dict], list[tuple[bytes, str]]]:
    """(turns, [(image bytes, ext)]) of a stored sample; SampleError with a reason otherwise."""
    if sample.error:
        raise SampleError(*sample.error)
    images = _image_members(sample)
    if dataset == "mid":
        text = sample.caption_text()
        if text is None:
            raise SampleError("caption_not_utf8", "caption is not valid UTF-8")
        if not text.strip():
            raise SampleError("empty_text", "empty caption")
        turns = caption_turns(text.strip(), caption_prompt)
    else:
        raw = sample.members.get("json")
        if raw is None:
            raise SampleError("missing_json", "no json member holding the conversation")
        try:
            meta = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SampleError("bad_metadata", f"json member: {exc}") from exc
        if not isinstance(meta, dict):
            raise SampleError("bad_metadata", f"json member is a {type(meta).__name__}, expected an object")
        conv = meta.get("conversation", meta.get("conversations"))
        if conv is None:
            raise SampleError("bad_conversation", "json has no 'conversation' or 'conversations'")
        try:
            turns = normalize_turns(conv)
        except ValueError as exc:
            reason = "no_assistant_turn" if str(exc).startswith("no assistant turn") else "bad_conversation"
            raise SampleError(reason, str(exc)) from exc
        if any(not t["content"].strip() for t in turns if t["role"] == "assistant"):
            raise SampleError("empty_text", "an assistant turn is empty")
    placeholders = sum(t["content"].count(PLACEHOLDER) for t in turns)
    if placeholders != len(images):
        raise SampleError("placeholder_mismatch", f"{placeholders} {PLACEHOLDER} placeholders but {len(images)} images")
    return turns, images
