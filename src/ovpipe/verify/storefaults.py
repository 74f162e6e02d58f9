"""Object-store faults: the data steps on SeaweedFS three times — straight, behind the fault proxy, and with
SeaweedFS restarted while they run — and the same digests each time.

    python -m ovpipe.verify.storefaults --dir DIR [--every 4] [--restarts 2] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

from ovpipe import storage
from ovpipe.s3server import SeaweedS3
from ovpipe.verify import faultmatrix, secretscan
from ovpipe.verify.faultproxy import FaultProxy

DATA = ("synth", "embed", "concepts", "balance", "caption", "filter", "lengths", "pack")
STORE = "s3://ovpipe/runs"


def _restarter(s3: SeaweedS3, times: list[float], done: threading.Event, log) -> list[float]:
    """Restart SeaweedFS (same data folder, same S3 port) at each of `times` seconds from now."""
    downtimes: list[float] = []

    def run():
        t0 = time.monotonic()
        for at in times:
            if done.wait(max(0.0, at - (time.monotonic() - t0))):
                return
            t = time.monotonic()
            s3.port = s3.ports["s3.port"]
            s3.stop()
            s3.start()
            downtimes.append(round(time.monotonic() - t, 1))
            log(f"  SeaweedFS restarted ({downtimes[-1]} s without it)")

    threading.Thread(target=run, daemon=True).start()
    return downtimes


def run(workdir: str, every: int = 4, restarts: int = 2, log=print) -> dict:
    chosen, _ = faultmatrix.folders(DATA)
    t0 = time.perf_counter()
    with SeaweedS3(os.path.join(workdir, "s3")) as s3:
        s3.create_bucket("ovpipe")
        env = s3.env()
        os.environ.update(env)  # fingerprints are read here, straight from the server
        log("clean run on SeaweedFS")
        start = time.perf_counter()
        logs = os.path.join(workdir, "logs")
        faultmatrix.run_steps(STORE, "clean", chosen, env=env, log=log, log_dir=logs)
        clean_s = time.perf_counter() - start
        want = faultmatrix.fingerprint(STORE, "clean", chosen)

        log(f"behind the fault proxy: every {every}th request faulted")
        with FaultProxy(s3.endpoint, every=every) as proxy:
            faultmatrix.run_steps(STORE, "proxied", chosen, env={**env, "OVPIPE_S3_ENDPOINT": proxy.endpoint}, log=log,
                                  log_dir=logs)
            requests, counts = proxy.requests, dict(proxy.counts)
        proxied = faultmatrix.fingerprint(STORE, "proxied", chosen)

        log(f"with SeaweedFS restarted {restarts}x during the run")
        done = threading.Event()
        downtimes = _restarter(s3, [clean_s * (i + 1) / (restarts + 1) for i in range(restarts)], done, log)
        try:
            faultmatrix.run_steps(STORE, "restarted", chosen, env=env, log=log, log_dir=logs)
        finally:
            done.set()
        restarted = faultmatrix.fingerprint(STORE, "restarted", chosen)
        partial = [u for u in storage.list_uris(STORE) if ".tmp-" in u]
        # the store's every object and the steps' logs must not hold the server's credentials
        copy = os.path.join(workdir, "store-copy")
        storage.download_tree(STORE, copy)
        scanned, found = secretscan.scan([copy, logs], known=[s3.access_key, s3.secret_key])
    digest = lambda fp: storage.sha256_bytes(json.dumps(fp, sort_keys=True).encode())[:16]  # noqa: E731
    report = {
        "steps": [f for f, _, _ in chosen],
        "digests": {"clean": digest(want), "proxied": digest(proxied), "restarted": digest(restarted)},
        "proxy": {"requests": requests, "faulted": sum(counts.values()), **counts, "identical": proxied == want,
                  "differ": sorted(f for f in want if proxied.get(f) != want[f])},
        "restart": {"restarts": len(downtimes), "downtime_s": downtimes, "identical": restarted == want,
                    "differ": sorted(f for f in want if restarted.get(f) != want[f])},
        "partial_objects": partial, "secrets": {"files": scanned, "found": found},
        "checks": 2 * len(want),
        "checks_passed": sum(got.get(f) == want[f] for got in (proxied, restarted) for f in want),
        "seconds": round(time.perf_counter() - t0, 1)}
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ovpipe.verify.storefaults", description=__doc__.split("\n")[0])
    ap.add_argument("--dir", required=True, help="working folder (SeaweedFS data)")
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    report = run(args.dir, args.every, args.restarts)
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    ok = report["proxy"]["identical"] and report["restart"]["identical"] and report["restart"]["restarts"] \
        and not report["partial_objects"] and not report["secrets"]["found"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
