"""A large output written as a stream, hashed on the way, committed atomically: what TarWriter writes
shards through, so a shard's bytes are moved once (storage.atomic_output would write a local
temporary, read it back for its sha256, then copy or upload it: three passes over every byte).

Local: written under a temporary name beside the destination (as storage.put_file does), made
durable (fsync, then the rename and the folder's entry), so a shard whose marker exists survives a
power cut with it; a background fdatasync every SYNC_BYTES keeps the disk writing while the CPU
works, leaving the final fsync little to do. S3: parts of PART_BYTES uploaded by background threads
while writing goes on, made visible only by CompleteMultipartUpload (one PUT when the whole object is
smaller than a part); abort() drops the upload. Either way nothing partial is ever visible under the final name.
The sha256 runs in its own thread over the same buffers (hashlib releases the GIL on large updates):
it costs about as much as the copy itself, so overlapping it is most of the speed.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor

from ovpipe import faults, storage

FLUSH_BYTES = 1 << 20   # small writes (tar headers, padding) gather up to this, then one writev
# S3 part size: every request costs a fixed round trip and server work, so parts larger than boto3's
# 8 MiB default are cheaper (SeaweedFS, bench/shard_write_bench.py: 16-32 MiB ~10% faster than 8).
PART_BYTES = 16 << 20   # parts are at least this large
UPLOADS = 4             # S3 parts in flight at once (memory: about UPLOADS + 1 parts)
SYNC_BYTES = 32 << 20   # local: written bytes between background fdatasyncs


class AtomicStream:
    """`write()` bytes-like objects (never mutated afterwards: they are hashed/sent later), then
    `commit()` (returns the sha256 hex digest) or `abort()`."""

    def __init__(self, uri: str):
        self.uri, self.offset = uri, 0
        self._chunks: list = []
        self._pending = 0
        self._sha = hashlib.sha256()
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="ovpipe-sha")  # one thread: updates in order
        self._remote = storage.is_remote(uri)
        if self._remote:
            self._bucket, self._key = storage.split_s3(uri)
            self._upload_id: str | None = None
            self._parts: list[Future] = []
            self._pool = ThreadPoolExecutor(UPLOADS, thread_name_prefix="ovpipe-part")
        else:
            dest = storage._local(uri)
            os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
            self._dest, self._tmp = dest, storage._tmp_name(dest)
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            self._syncer = ThreadPoolExecutor(1, thread_name_prefix="ovpipe-sync")
            self._sync: Future | None = None
            self._unsynced = 0
        self.closed = False

    def write(self, data) -> None:
        n = len(data)
        if not n:
            return
        self._chunks.append(data)
        self._pending += n
        self.offset += n
        if self._pending >= (PART_BYTES if self._remote else FLUSH_BYTES):
            self._flush()

    def _flush(self) -> None:
        chunks, self._chunks, self._pending = self._chunks, [], 0
        if not chunks:
            return
        if self._remote:
            part = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._hasher.submit(self._sha.update, part)
            self._send(part)
        else:
            self._hasher.submit(_update_all, self._sha, chunks)
            self._unsynced += _writev_all(self._fd, chunks)
            if self._unsynced >= SYNC_BYTES and (self._sync is None or self._sync.done()):
                if self._sync is not None:
                    self._sync.result()  # an error writing back is the shard's error
                self._sync, self._unsynced = self._syncer.submit(os.fdatasync, self._fd), 0

    # ------------------------------------------------------------ S3 parts

    def _send(self, part) -> None:
        if self._upload_id is None:
            resp = storage._retry("write", self.uri, lambda: storage.s3_client().create_multipart_upload(
                Bucket=self._bucket, Key=self._key, ChecksumAlgorithm="CRC32"))
            self._upload_id = resp["UploadId"]
        if len(self._parts) >= UPLOADS:  # bounded memory: wait for the part UPLOADS back
            self._parts[-UPLOADS].result()
        self._parts.append(self._pool.submit(self._upload_part, len(self._parts) + 1, part))

    def _upload_part(self, number: int, part) -> dict:
        resp = storage._retry("write", self.uri, lambda: storage.s3_client().upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=part,
            ChecksumAlgorithm="CRC32"))
        done = {"PartNumber": number, "ETag": resp["ETag"]}
        if "ChecksumCRC32" in resp:
            done["ChecksumCRC32"] = resp["ChecksumCRC32"]
        return done

    # ------------------------------------------------------------ commit / abort

    def commit(self) -> str:
        """Make the object visible under its name; returns the sha256 of every byte written."""
        try:
            if self._remote and self._upload_id is None:  # smaller than a part: one PUT
                body = b"".join(self._chunks)
                self._chunks, self._pending = [], 0
                self._hasher.submit(self._sha.update, body)
                faults.point("mid_write")
                storage._retry("write", self.uri, lambda: storage.s3_client().put_object(
                    Bucket=self._bucket, Key=self._key, Body=body))
            elif self._remote:
                self._flush()
                parts = [f.result() for f in self._parts]
                faults.point("mid_write")
                storage._retry("write", self.uri, lambda: storage.s3_client().complete_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                    MultipartUpload={"Parts": parts}))
            else:
                self._flush()
                if self._sync is not None:
                    self._sync.result()
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
                self._syncer.shutdown(wait=True)
                faults.point("mid_write")
                os.replace(self._tmp, self._dest)
                _fsync_folder(os.path.dirname(self._dest) or ".")
        except BaseException:
            self.abort()
            raise
        self._hasher.shutdown(wait=True)
        self.closed = True
        if self._remote:
            self._pool.shutdown(wait=True)
        return self._sha.hexdigest()

    def abort(self) -> None:
        """Drop everything written: no object appears, the temporary (or the upload) is removed."""
        if self.closed:
            return
        self.closed = True
        self._chunks = []
        self._hasher.shutdown(wait=True, cancel_futures=True)
        if self._remote:
            self._pool.shutdown(wait=True, cancel_futures=True)
            if self._upload_id is not None:
                try:
                    storage.s3_client().abort_multipart_upload(Bucket=self._bucket, Key=self._key,
                                                               UploadId=self._upload_id)
                except Exception:  # noqa: BLE001 - the store may be what failed; the upload stays invisible
                    pass
            return
        self._syncer.shutdown(wait=True, cancel_futures=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


def _update_all(sha, chunks) -> None:
    for c in chunks:
        sha.update(c)


def _fsync_folder(path: str) -> None:
    """The rename made durable: the folder's entry written back too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _writev_all(fd: int, chunks: list) -> int:
    """os.writev until every byte is written (a regular file may take fewer at a time); the count."""
    views = [memoryview(c).cast("B") for c in chunks]
    total = sum(len(v) for v in views)
    while views:
        n = os.writev(fd, views[:1024])  # IOV_MAX
        while n:
            if n >= len(views[0]):
                n -= len(views.pop(0))
            else:
                views[0], n = views[0][n:], 0
    return total
