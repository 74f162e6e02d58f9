"""Is every input key accounted for? For each dataset of a run: the keys its readers could see must each
reach the packed output or a reject of some step, and every manifest must obey in = out + Σrejected.

    python -m ovpipe.verify.accounting --store S --run-id R --expected OUT/expected.json
"""
from __future__ import annotations

import argparse
import json
import sys

from ovpipe import manifest, steps, storage
from ovpipe.data import tables
from ovpipe.packing.packed_shards import read_packed

# The steps a dataset's samples pass through, in order (their run folders).
CHAINS = {"curated": [*(s for s in steps.CURATION[1:] if steps.BY_NAME[s].samples), "lengths", "pack"],  # not synth:
          # it is not run for a given input
          "stage1": ["lengths-stage1", "pack-stage1"], "sft": ["lengths-sft", "pack-sft"]}


def check_run(store: str, run_id: str, expected: dict) -> dict:
    """{dataset: {"keys", "out", "rejected", "missing": [...], "manifests": n, "shard_errors": n}}; raises
    manifest.AccountingError naming the first manifest whose counts do not add up."""
    run = storage.join(store, run_id)
    report = {}
    for dataset, chain in CHAINS.items():
        exp = expected[dataset]
        seen_rejected: set[str] = set()
        shard_errors = 0
        for step in chain:
            body = manifest.read(storage.join(run, step, "manifest.json"))
            c = body["counts"]
            manifest.counts(c["in"], c["out"], c["rejected"])  # raises when the sums disagree
            shard_errors += len(body.get("shard_errors", []))
            rejects = tables.read_parquet(storage.join(run, step, "rejects.parquet"), ["id"])
            seen_rejected.update(rejects.column("id").to_pylist())
        packed = set()
        for out in manifest.read(storage.join(run, chain[-1], "manifest.json"))["outputs"]:
            for seq in read_packed(out["uri"]):
                packed.update(sub["id"] for sub in seq["json"]["subsamples"])
        keys = set(exp["keys"])
        rejected = (keys - packed) & seen_rejected
        report[dataset] = {"keys": len(keys), "out": len(keys & packed), "rejected": len(rejected),
                           "missing": sorted(keys - packed - seen_rejected), "unexpected": sorted(packed - keys),
                           "manifests": len(chain), "shard_errors": shard_errors}
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ovpipe.verify.accounting", description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--expected", required=True)
    args = ap.parse_args(argv)
    with open(args.expected) as f:
        report = check_run(args.store, args.run_id, json.load(f))
    print(json.dumps(report, indent=1))
    return 0 if all(not r["missing"] and not r["unexpected"] for r in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
