"""lengths → pack through the real steps, for the curated corpus and the stage-1/stage-2 data:
accounting, the loader builds exactly the packed lengths, determinism, energon reads the shards,
bad inputs become reasoned rejects, over-capacity samples are rejected or truncated."""
from __future__ import annotations

import shutil

import pytest

from ovpipe import storage
from ovpipe.data import tables
from ovpipe.packing.lengths import get_tokenizer
from ovpipe.packing.packed_shards import energon_loader, read_packed
from ovpipe.packing.sequence import encode
from ovpipe.sharded import make_context
from ovpipe.steps import run as run_step
from tests.helpers import SMALL, TINY, rejects

OPTS = SMALL + ["synth.shards=2", "synth.samples_per_shard=60", "packing.stage1.synth_samples_per_shard=60",
                "packing.sft.synth_samples_per_shard=80", "packing.sequences_per_shard=4"]
CURATION = ("synth", "embed", "concepts", "balance", "caption", "filter")
STAGE_BAD = {"corrupt_image": "corrupt_header", "empty_answer": "empty_text",
             "placeholder_mismatch": "placeholder_mismatch", "no_assistant_turn": "no_assistant_turn"}


def pack_all(ctx, workers=1) -> dict:
    out = {}
    for dataset in ("mid", "stage1", "sft"):
        if dataset != "mid":
            run_step(ctx, "synth", workers=workers, dataset=dataset)
        out[("lengths", dataset)] = run_step(ctx, "lengths", workers=workers, dataset=dataset)
        out[("pack", dataset)] = run_step(ctx, "pack", workers=workers, dataset=dataset)
    return out


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    ctx = make_context(TINY, str(tmp_path_factory.mktemp("pack")), "p", OPTS)
    for step in CURATION:
        run_step(ctx, step)
    return ctx, pack_all(ctx)


def folder(step, dataset):
    return step if dataset == "mid" else f"{step}-{dataset}"


def _digests(ctx):
    out = {}
    for step in ("lengths", "pack"):
        for dataset in ("mid", "stage1", "sft"):
            body = storage.read_json(ctx.uri(folder(step, dataset), "manifest.json"))
            out[(step, dataset)] = sorted(o["sha256"] for o in body["outputs"]) + [
                storage.sha256_uri(ctx.uri(folder(step, dataset), "rejects.parquet"))]
    return out


def test_accounting_and_every_sample_packed_once(packed):
    ctx, bodies = packed
    for (step, dataset), body in bodies.items():
        c = body["counts"]
        assert c["in"] == c["out"] + sum(c["rejected"].values()), (step, dataset)
    for dataset in ("mid", "stage1", "sft"):
        assert bodies[("pack", dataset)]["counts"]["in"] == bodies[("lengths", dataset)]["counts"]["out"]
        ids = [sub["id"] for o in bodies[("pack", dataset)]["outputs"] for seq in read_packed(o["uri"])
               for sub in seq["json"]["subsamples"]]
        assert len(ids) == len(set(ids)) == bodies[("pack", dataset)]["counts"]["out"]
        stats = bodies[("pack", dataset)]["packing"]
        assert stats["bins"] >= stats["lower_bound"] and 0 < stats["efficiency"] <= 1


def test_loader_builds_exactly_the_packed_lengths(packed):
    ctx, bodies = packed
    tok = get_tokenizer(ctx)
    capacity = ctx.recipe.packing.capacity
    for dataset in ("mid", "stage1", "sft"):
        lengths = {}
        for o in bodies[("lengths", dataset)]["outputs"]:
            t = tables.read_parquet(o["uri"], ["id", "length"])
            lengths.update(zip(t.column("id").to_pylist(), t.column("length").to_pylist()))
        for o in bodies[("pack", dataset)]["outputs"]:
            for seq in read_packed(o["uri"]):
                total = 0
                for sub in seq["json"]["subsamples"]:
                    enc = encode(sub["turns"], sub["image_tokens"], tok)
                    assert len(enc.input_ids) == sub["length"] == lengths[sub["id"]], (dataset, sub["id"])
                    assert enc.loss_mask.sum() > 0
                    total += sub["length"]
                assert total == seq["json"]["length"] <= capacity
                assert seq["json"]["cu_seqlens"][-1] == total


def test_bad_stage_samples_are_rejected_with_their_reason(packed):
    import json

    from ovpipe.data.shards import ShardReport, iter_samples

    ctx, _ = packed
    for dataset in ("stage1", "sft"):
        got = rejects(ctx, folder("lengths", dataset))
        bad = {}
        for uri in storage.list_uris(ctx.uri(folder("synth", dataset)), ".tar"):
            for s in iter_samples(uri, ShardReport(uri)):
                kind = json.loads(s.members["json"]).get("bad")
                if kind:
                    bad[s.key] = kind
        assert bad and {STAGE_BAD[k] for k in bad.values()} <= set(got.values())
        for key, kind in bad.items():
            assert got.get(key) == STAGE_BAD[kind], (key, kind, got.get(key))
        assert set(got) == set(bad), "only the deliberately bad samples are rejected"


def test_energon_opens_the_packed_shards(packed):
    ctx, bodies = packed
    for dataset in ("mid", "sft"):
        expected = {seq["key"] for o in bodies[("pack", dataset)]["outputs"] for seq in read_packed(o["uri"])}
        seen = [s["key"] for s in energon_loader(ctx.uri(folder("pack", dataset)), batch_size=None,
                                                 num_workers=0, training=False)]
        assert sorted(seen) == sorted(expected)


def test_two_workers_and_a_rerun_give_identical_outputs(packed, tmp_path):
    ctx, _ = packed
    other = make_context(TINY, str(tmp_path), "p", OPTS)
    for step in ("synth",) + CURATION[1:]:
        shutil.copytree(ctx.uri(step), other.uri(step))
    pack_all(other, workers=2)
    assert _digests(other) == _digests(ctx)
    pack_all(other, workers=1)  # rerun: every shard already committed
    assert _digests(other) == _digests(ctx)


@pytest.mark.parametrize("policy", ["reject", "truncate"])
def test_samples_over_capacity(packed, tmp_path, policy):
    ctx, _ = packed
    small = make_context(TINY, str(tmp_path), "p", OPTS + ["packing.capacity=48", f"packing.too_long={policy}"])
    for step in ("synth",) + CURATION[1:]:
        shutil.copytree(ctx.uri(step), small.uri(step))
    run_step(small, "lengths")
    body = run_step(small, "pack")
    c = body["counts"]
    assert c["in"] == c["out"] + sum(c["rejected"].values())
    if policy == "reject":
        assert c["rejected"].get("too_long", 0) > 0
        assert all(r == "too_long" for r in rejects(small, "pack").values())
    else:
        assert body["packing"]["truncated"] > 0
