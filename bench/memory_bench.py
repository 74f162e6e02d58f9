"""GPU memory per rank of the paper-scale recipes' layouts (ovpipe.train.memory): does each fit 80 GB?

Counts come from the architectures themselves (meta device); Qwen3's published 151,936 embedding rows.
Prints a table and writes bench/results/memory.json.
"""
import json
import os

from ovpipe.config import load_recipe
from ovpipe.train.memory import estimate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QWEN3_ROWS = 151_936


def main() -> None:
    rows = []
    for name in ("ov15-4b", "ov15-8b"):
        recipe = load_recipe(os.path.join(ROOT, "configs", "recipes", f"{name}.yaml"))
        c = recipe.train.cluster
        for recompute in ("none", "full"):
            for image_tokens in (1024, recipe.packing.capacity):  # a typical caption sample; a sequence of images
                e = estimate(recipe, QWEN3_ROWS, gpus=c.nodes * c.gpus_per_node, image_tokens=image_tokens,
                             recompute=recompute)
                rows.append({"recipe": name, **e})
                print(f"{name} TP{e['tensor_parallel']} DP{e['data_parallel']} recompute={recompute:4s} "
                      f"image tokens {image_tokens:5d}: {e['total_gib']:6.1f} GiB of {e['gpu_gib']:.0f} "
                      f"({'fits' if e['fits'] else 'DOES NOT FIT'}) {e['gib']}")
    out = os.path.join(ROOT, "bench", "results", "memory.json")
    with open(out, "w") as f:
        json.dump(rows, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
