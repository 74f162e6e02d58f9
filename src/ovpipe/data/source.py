"""Where a run's input shards come from: `data.input` (a folder or s3:// prefix) or the synth step."""
from __future__ import annotations

import functools

from ovpipe import manifest, storage
from ovpipe.data.shards import list_shards


@functools.lru_cache(maxsize=8)
def _listing(store: str, run_id: str, input_uri: str | None, fmt: str) -> tuple[str, ...]:
    if input_uri:
        return tuple(list_shards(input_uri, fmt))
    body = manifest.read(storage.join(store, run_id, "synth", "manifest.json"))
    return tuple(o["uri"] for o in body["outputs"] if o["uri"].endswith(".tar"))  # not the truth tables


def input_shards(ctx) -> list[str]:
    """The run's input shard URIs, sorted; index i is shard i of every per-shard step."""
    return list(_listing(ctx.store, ctx.run_id, ctx.recipe.data.input, ctx.recipe.data.format))


def input_refs(ctx) -> list[dict]:
    """Manifest `inputs` entries for the input corpus."""
    if ctx.recipe.data.input:
        listing = "\n".join(input_shards(ctx)).encode()
        return [{"uri": ctx.recipe.data.input, "sha256": storage.sha256_bytes(listing)}]
    return [manifest.ref(ctx.uri("synth", "manifest.json"))]
