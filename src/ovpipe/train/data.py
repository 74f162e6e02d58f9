"""Training batches from the packed shards, streamed from the object store in a deterministic order.

Every packed sequence is addressed by (shard, byte range) from the energon index beside each tar, so
a rank reads exactly the sequences it trains on (ranged reads, no whole shards). The order is a
seeded permutation per epoch over the whole dataset; global step k takes positions
[k·G, (k+1)·G) of that endless stream and data-parallel rank r the r-th slice of it. The position is
therefore just the step count: saved with each checkpoint, a resumed run sees the same data, and
1 process or N processes see the same global batches.

A micro-batch is its sequences concatenated into one THD stream: input ids, next-token labels,
loss mask (assistant tokens only, from sequence.encode, the function the packer counted with),
positions restarting at every sub-sample, cu_seqlens and the decoded images in order.
"""
from __future__ import annotations

import io
import json
import struct
import tarfile
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import torch

from ovpipe import storage
from ovpipe.models.vision import load_image
from ovpipe.packing import sequence
from ovpipe.packing.packed_shards import IDX_SUFFIX, META
from ovpipe.train.layout import check_batch

IGNORE = -100  # label of positions without a next token (never in the loss; loss_mask is 0 there)


class PackedSequences:
    """Random access to the packed sequences of one `pack` step folder (local or s3://)."""

    def __init__(self, prefix: str):
        self.prefix = prefix.rstrip("/")
        info_uri = storage.join(self.prefix, META, ".info.json")
        if not storage.exists(info_uri):
            raise FileNotFoundError(f"{self.prefix}: no packed dataset here ({info_uri} missing; run `pack` first)")
        counts = json.loads(storage.read_text(info_uri))["shard_counts"]
        self.index: list[tuple[str, int, int]] = []
        for name in sorted(counts):
            raw = storage.read_bytes(storage.join(self.prefix, name[:-len(".tar")] + IDX_SUFFIX))
            offsets = struct.unpack(f"<{len(raw) // 8}Q", raw)
            if len(offsets) != counts[name] + 1:
                raise ValueError(f"{name}: index has {len(offsets) - 1} sequences, .info.json says {counts[name]}")
            uri = storage.join(self.prefix, name)
            self.index += [(uri, a, b) for a, b in zip(offsets[:-1], offsets[1:])]
        if not self.index:
            raise ValueError(f"{self.prefix}: the packed dataset is empty")

    def __len__(self) -> int:
        return len(self.index)

    def read(self, i: int) -> dict:
        uri, start, end = self.index[i]
        members = {}
        with tarfile.open(fileobj=io.BytesIO(storage.read_range(uri, start, end)), mode="r:") as tar:
            for info in tar:
                if info.isfile():
                    members[info.name.partition(".")[2]] = tar.extractfile(info).read()
        meta = json.loads(members.pop("json"))
        return {"json": meta, "images": [[members[n] for n in s["images"]] for s in meta["subsamples"]]}


def step_positions(step: int, global_batch: int, dp_rank: int, dp_size: int) -> range:
    """Positions in the endless sample stream that rank dp_rank trains on at optimizer step `step`."""
    per_rank = global_batch // dp_size
    start = step * global_batch + dp_rank * per_rank
    return range(start, start + per_rank)


class Order:
    """Position in the stream -> sequence index: a seeded permutation per epoch."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._epoch, self._perm = n, seed, -1, None

    def __call__(self, position: int) -> int:
        epoch, i = divmod(position, self.n)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return int(self._perm[i])


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [1, T] int64
    labels: torch.Tensor  # [1, T] int64
    loss_mask: torch.Tensor  # [1, T] float32
    position_ids: torch.Tensor  # [1, T]
    cu_seqlens: torch.Tensor  # [n + 1] int32
    max_seqlen: int
    images: list[torch.Tensor]
    sequences: int

    @property
    def tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def to(self, device: torch.device) -> MicroBatch:
        """The same micro-batch on `device` (copies to a GPU overlap; on its own device nothing is copied)."""
        move = (lambda x: x.to(device, non_blocking=device.type == "cuda"))
        return MicroBatch(move(self.input_ids), move(self.labels), move(self.loss_mask), move(self.position_ids),
                          move(self.cu_seqlens), self.max_seqlen, [move(im) for im in self.images], self.sequences)

    def packed_seq_params(self):
        """megatron's THD description of the packed sub-sequences."""
        from megatron.core.packed_seq_params import PackedSeqParams

        return PackedSeqParams(qkv_format="thd", cu_seqlens_q=self.cu_seqlens, cu_seqlens_kv=self.cu_seqlens,
                               max_seqlen_q=self.max_seqlen, max_seqlen_kv=self.max_seqlen)


def build_micro_batch(records: list[dict], tok, geometry) -> MicroBatch:
    ids, labels, mask, pos, cu, images = [], [], [], [], [0], []
    for rec in records:
        for sub, blobs in zip(rec["json"]["subsamples"], rec["images"]):
            enc = sequence.encode(sub["turns"], sub["image_tokens"], tok)
            n = int(sub["length"])
            if len(enc.input_ids) < n or (len(enc.input_ids) > n and not sub.get("truncated")):
                raise ValueError(f"sample {sub['id']}: encodes to {len(enc.input_ids)} tokens, packed as {n} "
                                 "(was it packed with another tokenizer or chat template?)")
            seq_ids, seq_mask = enc.input_ids[:n], enc.loss_mask[:n]  # longer only when packed truncated
            ids.append(seq_ids)
            labels.append(np.append(seq_ids[1:], IGNORE))
            mask.append(np.append(seq_mask[1:], 0).astype(np.float32))  # loss on predicting assistant tokens
            pos.append(np.arange(n))
            cu.append(cu[-1] + n)
            for blob, n_tokens in zip(blobs, sub["image_tokens"]):
                im = load_image(blob, geometry)
                f = geometry.patch_size * geometry.merge_size
                if (im.shape[1] // f) * (im.shape[2] // f) != n_tokens:
                    raise ValueError(f"sample {sub['id']}: image decodes to {im.shape[1]}x{im.shape[2]}, "
                                     f"not the {n_tokens} tokens its header gave")
                images.append(im)
    cat = lambda parts, dtype: torch.from_numpy(np.concatenate(parts).astype(dtype))[None]  # noqa: E731
    lengths = np.diff(cu)
    return MicroBatch(cat(ids, np.int64), cat(labels, np.int64), cat(mask, np.float32), cat(pos, np.int64),
                      torch.tensor(cu, dtype=torch.int32), int(lengths.max()), images, len(records))


class StageData:
    """The micro-batches of one rank for each optimizer step; step k+1's are read and decoded in a
    background thread while step k trains (reads, decoding and tokenizing mostly release the GIL)."""

    def __init__(self, prefix: str, tok, geometry, *, seed: int, global_batch: int, micro_batch: int,
                 dp_rank: int = 0, dp_size: int = 1):
        check_batch(global_batch, micro_batch, dp_size)
        self.sequences = PackedSequences(prefix)
        self.order = Order(len(self.sequences), seed)
        self.tok, self.geometry = tok, geometry
        self.global_batch, self.micro_batch = global_batch, micro_batch
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ovpipe-data")
        self._next: tuple[int, Future] | None = None

    def micro_batches(self, step: int) -> list[MicroBatch]:
        ahead, self._next = self._next, None
        if ahead and ahead[0] == step:
            batches = ahead[1].result()
        else:
            if ahead:  # never two builds at once: they share the Order's cached permutation
                wait([ahead[1]])
            batches = self._build(step)
        self._next = (step + 1, self._pool.submit(self._build, step + 1))
        return batches

    def _build(self, step: int) -> list[MicroBatch]:
        positions = list(step_positions(step, self.global_batch, self.dp_rank, self.dp_size))
        records = [self.sequences.read(self.order(p)) for p in positions]
        return [build_micro_batch(records[i:i + self.micro_batch], self.tok, self.geometry)
                for i in range(0, len(records), self.micro_batch)]
