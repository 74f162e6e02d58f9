"""A lock in the object store, for work that several cluster tasks may start at once (the tokenizer, a
concepts index, a pack plan): the first to arrive builds it, the others wait and then find it done.

    with locks.held(storage.join(step_uri, "_parts", "train.lock")):
        if not done(): build()

The lock is a folder of generations, `gen-NNNNNN.json`, each created with a conditional write
(`If-None-Match: *` on S3, a hard link locally), so exactly one process wins a generation. The holder
rewrites its file every `ttl / 3` seconds (a heartbeat). A waiter takes over by creating the next
generation (never by deleting one, so no two waiters can both take over) when the newest stays unchanged
for `ttl` seconds of its own clock (no clock is compared across machines), or at once when its holder
was a process on this host that is gone (a killed local task). On release the holder deletes its own
generation and those before it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Iterator

from ovpipe import storage

log = logging.getLogger("ovpipe")
TTL = float(os.environ.get("OVPIPE_LOCK_TTL", "120"))


class LockTimeout(TimeoutError):
    pass


def _gen_uri(lock: str, gen: int) -> str:
    return storage.join(lock, f"gen-{gen:06d}.json")


def _newest(lock: str) -> tuple[int, str] | None:
    """(generation, version) of the newest generation file, or None."""
    found = [(int(storage.basename(u)[4:10]), v) for u, v in storage.list_versions(lock, ".json")
             if storage.basename(u).startswith("gen-")]
    return max(found) if found else None


@contextlib.contextmanager
def held(lock: str, ttl: float | None = None, poll: float = 0.5, timeout: float = 24 * 3600) -> Iterator[int]:
    """Hold `lock` (a folder URI) for the body of the `with`; yields the generation won. Waits while a
    live holder has it; takes over after `ttl` seconds without a heartbeat; LockTimeout after `timeout`."""
    ttl = TTL if ttl is None else ttl
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + timeout
    seen: tuple[int, str] | None = None
    seen_since = time.monotonic()
    while True:
        newest = _newest(lock)
        gen = None
        if newest is None:
            gen = 0
        else:
            if newest != seen:  # a new generation or a heartbeat: its holder was alive just now
                seen, seen_since = newest, time.monotonic()
            if time.monotonic() - seen_since >= ttl:
                log.warning("lock %s: generation %d silent for %.0f s; taking over", lock, newest[0], ttl)
                gen = newest[0] + 1
            elif _holder_gone(lock, newest[0]):
                log.warning("lock %s: generation %d's holder no longer runs on this host; taking over", lock, newest[0])
                gen = newest[0] + 1
        if gen is not None and _claim(lock, gen, token):
            break
        if time.monotonic() >= deadline:
            raise LockTimeout(f"lock {lock}: still held after {timeout:.0f} s (newest generation {newest})")
        time.sleep(poll)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(lock, gen, token, ttl / 3, stop), daemon=True)
    beat.start()
    try:
        yield gen
    finally:
        stop.set()
        beat.join()
        for g in range(gen, -1, -1):
            storage.delete(_gen_uri(lock, g))


def _holder_gone(lock: str, gen: int) -> bool:
    """True when the generation's holder ran on this host and its process is gone (a killed local task);
    holders elsewhere are judged by their heartbeat only."""
    try:
        host, pid, _ = json.loads(storage.read_bytes(_gen_uri(lock, gen)))["holder"].split(":")
    except (storage.StorageError, ValueError, KeyError):
        return False
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def _body(token: str, beat: int) -> bytes:
    return json.dumps({"holder": token, "beat": beat, "time": time.time()}).encode()


def _claim(lock: str, gen: int, token: str) -> bool:
    if storage.create_exclusive(_gen_uri(lock, gen), _body(token, 0)):
        return True
    try:  # a retried PUT may have found its own first attempt
        return json.loads(storage.read_bytes(_gen_uri(lock, gen))).get("holder") == token
    except (storage.NotFound, ValueError):
        return False


def _heartbeat(lock: str, gen: int, token: str, every: float, stop: threading.Event) -> None:
    beat = 0
    while not stop.wait(every):
        beat += 1
        try:
            storage.write_bytes(_gen_uri(lock, gen), _body(token, beat))
        except storage.StorageError as exc:  # the next beat tries again; a long outage lets a waiter take over
            log.warning("lock %s: heartbeat failed: %s", lock, exc)
