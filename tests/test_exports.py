"""The `latest` export resolver the nightly evaluation relies on (the schedule itself: test_kfp_client.py)."""
import pytest

from ovpipe import storage
from ovpipe.evaluate import exports


def test_latest_export_resolution(tmp_path):
    store = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="no export published"):
        exports.resolve("latest", store)
    for stage in ("stage1", "mid"):
        storage.write_text(f"{store}/r1/{stage}/hf/ovpipe.json", "{}")
    exports.publish(store, "r1", "mid", f"{store}/r1/mid/hf")
    assert exports.resolve("latest", store)["uri"] == f"{store}/r1/mid/hf"
    assert exports.resolve("latest:r1", store)["stage"] == "mid"  # the most advanced stage with an export
    assert exports.resolve("stage:stage1", store, "r1")["uri"] == f"{store}/r1/stage1/hf"
    assert exports.resolve(f"{store}/r1/stage1/hf", store) == {"uri": f"{store}/r1/stage1/hf", "run_id": "r1",
                                                              "stage": "stage1"}
    with pytest.raises(FileNotFoundError, match="not an ovpipe export"):
        exports.resolve(f"{store}/nowhere", store)
    with pytest.raises(FileNotFoundError, match="no exported stage"):
        exports.resolve("latest:r2", store)
