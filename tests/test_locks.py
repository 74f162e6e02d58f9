"""The store lock: processes racing for a once-built piece build it once, on a folder and on S3; a holder
that is killed is taken over after its lease; conditional creates are exclusive."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ovpipe import locks, storage

RACER = r"""
import os, sys, time
from ovpipe import locks, storage
lock, marker, log, go = sys.argv[1:5]
while not os.path.exists(go):
    time.sleep(0.01)
with locks.held(lock, ttl=30, poll=0.05):
    if not storage.exists(marker):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} start\n")
        time.sleep(0.6)
        with open(log, "a") as f:
            f.write(f"{os.getpid()} end\n")
        storage.write_text(marker, "built")
"""


def _race(root: str, tmp_path, n: int = 3) -> list[str]:
    lock, marker = storage.join(root, "piece.lock"), storage.join(root, "piece.json")
    log, go = tmp_path / "log", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, lock, marker, str(log), str(go)]) for _ in range(n)]
    time.sleep(1.0)  # every racer imported and polling
    go.touch()
    assert [p.wait(120) for p in procs] == [0] * n
    assert storage.read_text(marker) == "built"
    assert storage.list_uris(lock) == []  # released
    return log.read_text().splitlines()


def test_racing_processes_build_once_on_a_folder(tmp_path):
    lines = _race(str(tmp_path / "store"), tmp_path)
    assert len(lines) == 2 and lines[0].endswith("start") and lines[1].endswith("end"), lines


def test_racing_processes_build_once_on_s3(s3_root, tmp_path):
    lines = _race(s3_root, tmp_path)
    assert len(lines) == 2 and lines[0].split()[0] == lines[1].split()[0], lines


@pytest.mark.parametrize("where", ["local", "s3"])
def test_create_exclusive_is_exclusive(where, tmp_path, request):
    root = request.getfixturevalue("s3_root") if where == "s3" else str(tmp_path)
    uri = storage.join(root, "x.json")
    assert storage.create_exclusive(uri, b"first")
    assert not storage.create_exclusive(uri, b"second")
    assert storage.read_bytes(uri) == b"first"


HOLDER = r"""
import sys, time
from ovpipe import locks
with locks.held(sys.argv[1], ttl=1.0):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_killed_holder_is_taken_over_after_its_lease(tmp_path):
    lock = str(tmp_path / "l.lock")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, lock], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    time.sleep(1.5)  # heartbeats keep it: a waiter must not take a live lock
    with pytest.raises(locks.LockTimeout):
        with locks.held(lock, ttl=1.0, poll=0.05, timeout=1.5):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    t0 = time.monotonic()
    with locks.held(lock, ttl=1.0, poll=0.05, timeout=30) as gen:
        assert gen >= 1  # the next generation: the dead holder's file was never deleted by a waiter
    assert time.monotonic() - t0 < 10


def test_a_silent_holder_on_another_host_is_taken_over_after_ttl(tmp_path):
    lock = str(tmp_path / "l.lock")
    storage.write_bytes(storage.join(lock, "gen-000000.json"), b'{"holder": "elsewhere:1:abc", "beat": 0}')
    t0 = time.monotonic()
    with locks.held(lock, ttl=1.0, poll=0.05, timeout=30) as gen:
        assert gen == 1
    assert 1.0 <= time.monotonic() - t0 < 10
