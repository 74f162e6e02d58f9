"""A checkpoint is downloaded once per node: train/node_scratch.shared_copy under 3 gloo ranks on one host."""
import os
import socket

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from ovpipe.train import node_scratch

WORLD = 3


def _worker(rank: int, port: int, log_dir: str, fail: bool, local_ranks: bool) -> None:
    if local_ranks:
        os.environ["LOCAL_RANK"] = str(rank)
    else:
        os.environ.pop("LOCAL_RANK", None)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)

    def fill(folder: str) -> None:
        open(os.path.join(log_dir, f"filled-by-{rank}"), "w").close()
        if fail:
            raise OSError("the store went away")
        with open(os.path.join(folder, "weights.bin"), "w") as f:
            f.write("payload")
    try:
        with node_scratch.shared_copy(fill) as folder:
            with open(os.path.join(folder, "weights.bin")) as f:
                assert f.read() == "payload"
            with open(os.path.join(log_dir, f"read-{rank}"), "w") as f:
                f.write(folder)
    except (OSError, RuntimeError) as exc:
        with open(os.path.join(log_dir, f"error-{rank}"), "w") as f:
            f.write(str(exc))
    finally:
        dist.destroy_process_group()


def _run(tmp_path, fail: bool, local_ranks: bool = True) -> dict[str, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(port, str(tmp_path), fail, local_ranks), nprocs=WORLD, join=True,
                       start_method="spawn")
    return {name: (tmp_path / name).read_text() for name in sorted(os.listdir(tmp_path))}


@pytest.mark.parametrize("local_ranks", [True, False], ids=["LOCAL_RANK", "no-LOCAL_RANK"])
def test_one_rank_per_node_fills_and_all_read_the_same_folder(tmp_path, local_ranks):
    out = _run(tmp_path, fail=False, local_ranks=local_ranks)
    assert [k for k in out if k.startswith("filled-by-")] == ["filled-by-0"]
    folders = {out[f"read-{r}"] for r in range(WORLD)}
    assert len(folders) == 1 and not os.path.exists(folders.pop())  # shared, then removed


def test_a_failed_fill_is_raised_on_every_rank(tmp_path):
    out = _run(tmp_path, fail=True)
    assert out["error-0"] == "the store went away"
    for r in (1, 2):
        assert "failed: OSError: the store went away" in out[f"error-{r}"]
