"""The vit step: region labels from the scene, the projector's cell grouping, and a short pretraining
that writes a tower stage 1 then loads (or a clear error when it is missing)."""
import json

import numpy as np
import pytest
import torch

from ovpipe import storage
from ovpipe.config import ConfigError, load_recipe
from ovpipe.data import synth_stages
from ovpipe.data.synth import COLORS, SHAPES
from ovpipe.sharded import Context
from ovpipe.train import vit

TINY = "configs/recipes/tiny.yaml"


def _scene(*shapes):
    return {"width": 64, "height": 64, "shapes": [{"shape": s, "color": c, "x": x, "y": y, "size": 16}
                                                  for s, c, x, y in shapes]}


def test_labels_put_each_shape_in_the_cell_of_its_centre():
    sc = _scene(("circle", "red", 10, 10), ("star", "blue", 50, 12), ("star", "red", 40, 60))
    shapes, colors, count = vit.labels(sc, (2, 2))
    col = list(COLORS).index
    assert count.tolist() == [1, 1, 0, 1, 3]  # top-left, top-right, bottom-left, bottom-right, image
    assert shapes[0, SHAPES.index("circle")] == 1 and shapes[0].sum() == 1
    assert shapes[1, SHAPES.index("star")] == 1 and colors[1, col("blue")] == 1 and colors[1].sum() == 1
    assert shapes[2].sum() == 0 and colors[2].sum() == 0
    assert shapes[4].sum() == 2 and colors[4, [col("red"), col("blue")]].tolist() == [1, 1]


def test_cell_features_group_like_the_projector():
    p = torch.arange(2 * 16 * 3, dtype=torch.float32).view(2, 16, 3)  # a 4x4 patch grid, merge 2
    out = vit.cell_features(p, 4, 4, 2)
    assert out.shape == (2, 5, 3)
    grid = p.view(2, 4, 4, 3)
    assert torch.equal(out[:, 1], grid[:, 0:2, 2:4].mean(dim=(1, 2)))  # top-right window
    assert torch.equal(out[:, 4], p.mean(1))


def test_scene_images_repeat_and_stay_out_of_the_eval_space():
    from io import BytesIO

    from PIL import Image

    a = list(synth_stages.scene_images(3, "train", 20))
    assert [s for s, _ in a] == [s for s, _ in synth_stages.scene_images(3, "train", 20)]
    assert [b for _, b in a] != [b for _, b in synth_stages.scene_images(3, "val", 20)]
    for _, blob in a:
        assert not synth_stages.in_eval_space(Image.open(BytesIO(blob)).convert("RGB"))
    with pytest.raises(ValueError, match="split='eval'"):
        next(synth_stages.scene_images(3, "eval", 1))


def test_pretraining_writes_a_tower_that_stage1_loads(tmp_path):
    from transformers import MLCDVisionModel

    recipe = load_recipe(TINY, ["vit.steps=12", "vit.images=48", "vit.batch_size=16"])
    ctx = Context(recipe, str(tmp_path), "r")
    with pytest.raises(FileNotFoundError, match="ovpipe vit"):
        vit.vision_weights(ctx)
    body = vit.run(ctx)
    m = body["metrics"]
    assert m["steps"] == 12 and np.isfinite(m["loss_last"]) and m["loss_last"] < m["loss_first"]
    assert all(0 <= m[k] <= 1 for k in ("shape_accuracy", "color_accuracy", "count_accuracy"))
    assert body["counts"] == {"in": 48 + vit.VAL_IMAGES, "out": 48 + vit.VAL_IMAGES, "rejected": {}}
    assert json.loads(storage.read_text(ctx.uri("vit", "manifest.json")))["step"] == "vit"
    assert vit.vision_weights(ctx) == vit.tower_uri(ctx)
    tower = MLCDVisionModel.from_pretrained(vit.tower_uri(ctx), local_files_only=True)
    assert tower.config.hidden_size == recipe.model.vision.hidden_size
    assert tower.config.patch_size == recipe.packing.patch_size
    off = Context(load_recipe(TINY, ["vit.steps=0"]), str(tmp_path), "r")
    assert vit.vision_weights(off) is None  # random init: nothing to load


def test_recipe_rejects_two_sources_for_the_tower(tmp_path):
    tower = tmp_path / "tower"
    tower.mkdir()
    with pytest.raises(ConfigError, match="vit.steps"):
        load_recipe(TINY, ["vit.steps=10", f"model.vision.weights={tower}"])
    with pytest.raises(ConfigError, match="vit.steps"):
        load_recipe(TINY, ["vit.steps=-1"])
    with pytest.raises(ConfigError, match="vit.image_size"):
        load_recipe(TINY, ["vit.image_size=16"])
