"""The five curation steps end to end (called directly): accounting, bad samples, determinism, resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ovpipe import storage
from ovpipe.data.synth import BAD_KINDS
from ovpipe.sharded import make_context, shard_name
from ovpipe.steps import run as run_step
from tests.helpers import SMALL, STEPS, TINY, data_digests, rejects, run_all, small_context, synth_meta


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted single-worker run every test compares against."""
    ctx = small_context(str(tmp_path_factory.mktemp("ref")))
    manifests = run_all(ctx, workers=1)
    return ctx, manifests, data_digests(ctx)


def test_every_step_balances_its_accounts(reference):
    ctx, manifests, _ = reference
    for step in STEPS:
        c = manifests[step]["counts"]
        assert c["in"] == c["out"] + sum(c["rejected"].values()), step
        by_reason: dict[str, int] = {}
        for reason in rejects(ctx, step).values():
            by_reason[reason] = by_reason.get(reason, 0) + 1
        assert by_reason == c["rejected"], f"{step}: rejects.parquet disagrees with the manifest"
    # Each step consumes exactly what the previous one emitted.
    chain = [("synth", "embed"), ("embed", "concepts"), ("concepts", "balance"), ("balance", "caption"),
             ("caption", "filter")]
    for up, down in chain:
        assert manifests[down]["counts"]["in"] == manifests[up]["counts"]["out"], (up, down)
    # ~8% deliberately bad; a one-shape scene's caption is sometimes another's near-duplicate (~2%)
    assert manifests["filter"]["counts"]["out"] >= 0.88 * manifests["synth"]["counts"]["out"]


def test_manifest_keys_and_lineage(reference):
    ctx, manifests, _ = reference
    for step in STEPS:
        body = manifests[step]
        for key in ("step", "run_id", "config", "code_version", "inputs", "outputs", "counts", "wall_seconds"):
            assert key in body, (step, key)
        for ref in body["inputs"]:
            assert storage.sha256_uri(ref["uri"]) == ref["sha256"], (step, ref["uri"])
        for out in body["outputs"]:
            assert storage.sha256_uri(out["uri"]) == out["sha256"], (step, out["uri"])
    assert manifests["embed"]["inputs"][0]["uri"].endswith("synth/manifest.json")


def test_each_bad_sample_is_rejected_with_its_reason(reference):
    ctx, _, _ = reference
    metas = synth_meta(ctx)
    all_rejects = {}
    for step in STEPS:
        for key, reason in rejects(ctx, step).items():
            all_rejects.setdefault(key, []).append((step, reason))
    bad = {k: m["bad"] for k, m in metas.items() if m.get("bad")}
    assert set(bad.values()) == set(BAD_KINDS), "every bad kind must be present in the corpus"
    for key, kind in bad.items():
        reasons = [r for _, r in all_rejects.get(key, [])]
        assert reasons == [BAD_KINDS[kind]], f"{key} ({kind}) → {all_rejects.get(key)}"
    # Good samples are never rejected for a bad-sample reason.
    for key, hits in all_rejects.items():
        if key not in bad:
            assert not {r for _, r in hits} & set(BAD_KINDS.values()), (key, hits)


def test_two_workers_give_byte_identical_outputs(reference, tmp_path):
    _, _, digests = reference
    ctx = small_context(str(tmp_path))
    run_all(ctx, workers=2)
    assert data_digests(ctx) == digests


def test_rerun_recomputes_nothing(reference):
    ctx, _, digests = reference
    markers = sorted(storage.list_uris(ctx.uri("embed", "_parts"), ".json"))
    before = [storage.read_bytes(m) for m in markers]
    run_all(ctx, workers=1)
    assert [storage.read_bytes(m) for m in markers] == before  # markers hold per-shard timings
    assert data_digests(ctx) == digests


def test_killed_embed_resumes_without_recomputing(reference, tmp_path):
    _, _, digests = reference
    ctx = small_context(str(tmp_path))
    run_all(ctx, steps=("synth",))
    first_marker = ctx.uri("embed", "_parts", f"embed-{shard_name(0)}.json")
    cmd = [sys.executable, "-m", "ovpipe.cli", "embed", "--recipe", ctx.recipe.source, "--store", ctx.store,
           "--run-id", ctx.run_id, "--workers", "1"] + sum((["--set", s] for s in SMALL), [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not os.path.exists(first_marker) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert os.path.exists(first_marker), "embed never committed its first shard"
    last_marker = ctx.uri("embed", "_parts", f"embed-{shard_name(2)}.json")
    assert not os.path.exists(last_marker), "killed too late: every shard was already committed"
    saved = storage.read_bytes(first_marker)
    run_all(ctx, steps=STEPS[1:])
    assert storage.read_bytes(first_marker) == saved, "a committed shard was recomputed"
    assert data_digests(ctx) == digests


def test_rerun_with_other_settings_is_refused_not_mixed(reference):
    ctx, _, digests = reference
    changed = make_context(TINY, ctx.store, ctx.run_id, SMALL + ["embed.min_image_side=50"])
    with pytest.raises(RuntimeError, match="other embed settings"):
        run_step(changed, "embed")
    # a downstream change leaves upstream shards valid: embed reruns as a no-op
    downstream = make_context(TINY, ctx.store, ctx.run_id, SMALL + ["filter.min_words=4", "data.workers=1"])
    run_step(downstream, "embed")
    assert data_digests(ctx)["embed"] == digests["embed"]
