"""The quick part of `make verify`, in `make test`: the generated bad-input corpus through every data step
(every key reaches the packed output or a reject with its reason), and a fault matrix over one step."""
from __future__ import annotations

import os

import pyarrow.parquet as pq

from ovpipe import steps
from ovpipe.sharded import make_context
from ovpipe.steps import run as run_step
from ovpipe.verify import accounting, badinput, faultmatrix
from tests.helpers import ROOT, TINY


def test_bad_corpus_through_every_data_step_is_accounted_for(tmp_path):
    corpus, store = str(tmp_path / "corpus"), str(tmp_path / "store")
    expected = badinput.write(corpus)
    inputs = [f"data.input={corpus}/curated", f"packing.stage1.input={corpus}/stage1",
              f"packing.sft.input={corpus}/sft"]
    ctx = make_context(TINY, store, "bad", ["data.workers=1", *inputs])
    for name in ("embed", "concepts", "balance", "caption", "filter"):
        run_step(ctx, name)
    for dataset in steps.DATASETS:
        run_step(ctx, "lengths", dataset=dataset)
        run_step(ctx, "pack", dataset=dataset)
    report = accounting.check_run(store, "bad", expected)
    for dataset, r in report.items():
        assert r["missing"] == [] and r["unexpected"] == [], (dataset, r)
        assert r["out"] > 20 and r["rejected"] > 20, (dataset, r)
    reasons = {step: set(pq.read_table(os.path.join(store, "bad", step, "rejects.parquet"))["reason"].to_pylist())
               for step in ("embed", "balance", "filter", "lengths", "lengths-sft", "pack-sft")}
    assert {"decompression_bomb", "truncated_image", "corrupt_image", "duplicate_key", "missing_id",
            "bad_column", "unsupported_image_format", "incomplete_sample"} <= reasons["embed"]
    assert "duplicate_key" in reasons["balance"] and "duplicate_key" in reasons["pack-sft"]
    assert {"control_chars", "caption_empty", "too_long"} <= reasons["filter"]
    assert {"no_assistant_turn", "placeholder_mismatch", "bad_conversation", "missing_json",
            "bad_metadata"} <= reasons["lengths-sft"]
    assert report["curated"]["shard_errors"] > 0  # the cut, the zero-byte and the not-parquet shards


def test_fault_matrix_on_embed(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the matrix runs `ovpipe` on configs/recipes/tiny.yaml
    report = faultmatrix.matrix(str(tmp_path / "fm"), ["before_marker", "mid_write"], ["embed"], log=lambda *a: None)
    assert report["injected"] == 2 and report["survived"] == 2, report
    assert all(p["killed"] == ["embed"] and p["differ"] == [] for p in report["passes"])
