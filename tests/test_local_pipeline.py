"""The DAG through kfp.local (what `make run` does), on a folder store and on a real S3 server
(SeaweedFS with real credentials): both give the same data digests as the steps run directly."""
from __future__ import annotations

import pytest

from ovpipe.cli import main, run_step
from pipelines.local import select_steps
from tests.helpers import SMALL, TINY, data_digests, run_all, small_context

PACKED = ("lengths", "pack", "synth-stage1", "lengths-stage1", "pack-stage1", "synth-sft", "lengths-sft", "pack-sft")
ALL = ("synth", "embed", "concepts", "balance", "caption", "filter") + PACKED


def _run(store: str, run_id: str = "kfp") -> None:
    args = ["run", "--recipe", TINY, "--store", store, "--run-id", run_id, "--no-cache"]
    # one task per loop (outputs do not depend on the grouping): kfp.local starts a process per task
    args += sum((["--set", s] for s in SMALL + ["data.group_size=4"]), [])
    assert main(args) == 0


@pytest.fixture(scope="module")
def direct(tmp_path_factory):
    ctx = small_context(str(tmp_path_factory.mktemp("direct")), run_id="kfp")
    run_all(ctx)
    for dataset in ("mid", "stage1", "sft"):
        for step in ("synth", "lengths", "pack") if dataset != "mid" else ("lengths", "pack"):
            run_step(ctx, step, dataset=dataset)
    return data_digests(ctx, ALL)


def test_local_pipeline_on_a_folder_matches_direct_steps(direct, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _run(str(tmp_path / "store"))
    out = capsys.readouterr().out
    assert "filter" in out and "manifest.json" in out and "balance.png" in out
    assert data_digests(small_context(str(tmp_path / "store"), run_id="kfp"), ALL) == direct


def test_local_pipeline_on_seaweedfs_matches_folder_store(direct, s3_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run(s3_root)
    assert data_digests(small_context(s3_root, run_id="kfp"), ALL) == direct


def test_step_ranges():
    assert select_steps("balance", None) == ("balance", "caption", "filter", "lengths", "pack")
    assert select_steps(None, "embed") == ("synth", "embed")
    with pytest.raises(ValueError):
        select_steps("filter", "embed")
