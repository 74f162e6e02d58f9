"""One module for URIs: local paths (or file://) and s3://bucket/key through boto3.

S3 settings come from the environment (DESIGN.md): OVPIPE_S3_ENDPOINT, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY (AWS_REGION optional). Path-style addressing so the same code talks to
SeaweedFS, MinIO or a cloud bucket. Writes are atomic: locally data goes to a temporary name and is
committed by rename; on S3 a PUT (or a completed multipart upload) is atomic by itself, so objects are
written under their own key, never copied (a copy doubles every byte moved and leaves garbage behind
on servers that reclaim space late). A reader never sees a half-written object.
Transient S3 errors are retried with exponential backoff; permanent ones raise StorageError naming
the URI.
"""
from __future__ import annotations

import functools
import hashlib
import http.client
import io
import json
import mmap
import os
import posixpath
import random
import shutil
import tempfile
import time
import uuid
from typing import IO, Any, Callable, Iterator

from ovpipe import faults

_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
                    "RequestTimeTooSkewed", "Throttling", "ThrottlingException", "BadGateway",
                    "GatewayTimeout", "500", "502", "503", "504"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}
RETRIES = int(os.environ.get("OVPIPE_S3_RETRIES", "6"))


class StorageError(IOError):
    """A permanent storage failure; the message names the operation and the URI."""


class NotFound(StorageError, FileNotFoundError):
    pass


def is_remote(uri: str) -> bool:
    return uri.startswith("s3://")


def _local(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        bucket, key = split_s3(base)
        key = posixpath.normpath(posixpath.join(key, *(p.strip("/") for p in parts)))
        if key.startswith(".."):
            raise StorageError(f"{base} + {parts}: path leaves the bucket")
        return f"s3://{bucket}/{key}" if key != "." else f"s3://{bucket}"
    return os.path.join(_local(base), *parts)


def parent(uri: str) -> str:
    if is_remote(uri):
        return uri.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(_local(uri).rstrip("/"))


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket in S3 URI (expected s3://bucket/key)")
    return bucket, key


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- S3 client and retries

# What a pod needs to reach the object store: keys of the S3 Secret, each set as the variable of its name.
S3_ENV = ("OVPIPE_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@functools.lru_cache(maxsize=None)
def _client_for(endpoint: str | None, region: str, key_id: str | None, secret: str | None,
                token: str | None, pid: int):
    import boto3.session
    from botocore.config import Config

    cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"},
                 connect_timeout=10, read_timeout=120, signature_version="s3v4")
    # A new Session with explicit keys: boto3's default session caches the first credentials it
    # resolved, so later env changes would otherwise be ignored. No keys: boto3's own chain.
    creds = ({"aws_access_key_id": key_id, "aws_secret_access_key": secret, "aws_session_token": token}
             if key_id else {})
    return boto3.session.Session().client("s3", endpoint_url=endpoint or None, config=cfg,
                                          region_name=region, **creds)


def s3_client():
    """A boto3 S3 client for the configured endpoint (one per process: clients are not fork-safe).

    Keyed on the settings too, so a process that changes endpoint or credentials gets a new client
    instead of one still signing with the old keys."""
    env = os.environ
    return _client_for(env.get("OVPIPE_S3_ENDPOINT") or None, env.get("AWS_REGION", "us-east-1"),
                       env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY"),
                       env.get("AWS_SESSION_TOKEN"), os.getpid())


def _error_code(exc: Exception) -> str:
    resp = getattr(exc, "response", None) or {}
    err = resp.get("Error", {})
    return str(err.get("Code") or resp.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _is_connection_failure(exc: Exception) -> bool:
    """The connection or the body broke off: refused, reset, timed out, a short read (in botocore's,
    urllib3's or the standard library's words)."""
    from botocore.exceptions import (
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        IncompleteReadError,
        ProxyConnectionError,
        ReadTimeoutError,
        ResponseStreamingError,
    )
    from urllib3.exceptions import HTTPError as Urllib3Error

    return isinstance(exc, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ConnectTimeoutError,
                            ProxyConnectionError, IncompleteReadError, ResponseStreamingError, ConnectionError,
                            TimeoutError, Urllib3Error, http.client.HTTPException))


def _is_transient(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    if _is_connection_failure(exc):
        return True
    return isinstance(exc, ClientError) and _error_code(exc) in _TRANSIENT_CODES


def _retry(op: str, uri: str, fn: Callable[[], Any]) -> Any:
    """Run an S3 call; back off on transient errors, raise StorageError naming the URI otherwise."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    delay = 0.2
    for attempt in range(RETRIES + 1):
        try:
            return fn()
        except StorageError:
            raise
        except (ClientError, BotoCoreError, ConnectionError, S3UploadFailedError, TimeoutError,
                http.client.HTTPException) as err:
            # upload_file wraps the ClientError (as __context__): judge and report the real one.
            exc = (err.__cause__ or err.__context__ or err) if isinstance(err, S3UploadFailedError) else err
            if _is_transient(exc) and attempt < RETRIES:
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 10.0)
                continue
            code = _error_code(exc)
            cls = NotFound if code in _MISSING_CODES else StorageError
            hint = "" if cls is NotFound else " (check OVPIPE_S3_ENDPOINT and the AWS_* credentials)"
            raise cls(f"{op} {uri}: {code or type(exc).__name__}: {exc}{hint}") from exc
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- reads

def read_bytes(uri: str) -> bytes:
    if is_remote(uri):
        with open_read(uri) as f:  # a stream that breaks off resumes where it stopped
            return f.read()
    try:
        with open(_local(uri), "rb") as f:
            return f.read()
    except FileNotFoundError as exc:
        raise NotFound(f"read {uri}: no such file") from exc
    except OSError as exc:
        raise StorageError(f"read {uri}: {exc}") from exc


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def read_json(uri: str) -> Any:
    data = read_bytes(uri)
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise StorageError(f"read {uri}: not valid JSON: {exc}") from exc


class _S3Raw(io.RawIOBase):
    """An S3 object as a raw file that survives a broken stream: when the body fails or ends before its
    Content-Length, the rest is asked for again from the current offset (a ranged GET pinned to the
    object's ETag, so a replaced object is never spliced in), with backoff, up to RETRIES times in a
    row. Only bytes the server really has are returned; a short object ends where it ends.
    (StreamingBody's own `with` yields the bare urllib3 stream, which would skip the length check.)"""

    def __init__(self, bucket: str, key: str, uri: str):
        self.bucket, self.key, self.uri = bucket, key, uri
        self.pos, self.resumed = 0, 0
        resp = _retry("open", uri, lambda: s3_client().get_object(Bucket=bucket, Key=key))
        self._body, self.length, self.etag = resp["Body"], resp["ContentLength"], resp.get("ETag")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.pos >= self.length:
            return 0
        failures = 0
        while True:
            try:
                data = self._body.read(min(len(b), self.length - self.pos)) if self._body else b""
                if data:
                    break
                raise ConnectionError(f"stream ended at byte {self.pos} of {self.length}")
            except Exception as exc:  # noqa: BLE001 - only a broken connection is resumed
                if not _is_connection_failure(exc):
                    raise
                if failures >= RETRIES:
                    raise StorageError(f"read {self.uri}: stream failed at byte {self.pos} of {self.length} "
                                       f"after {failures} resumptions: {type(exc).__name__}: {exc}") from exc
                failures += 1
                self._reopen(failures)
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def _reopen(self, attempt: int) -> None:
        self._close_body()
        time.sleep(min(0.2 * 2 ** (attempt - 1), 10.0) * (1 + random.random()))
        extra = {"IfMatch": self.etag} if self.etag else {}
        resp = _retry("resume", self.uri, lambda: s3_client().get_object(
            Bucket=self.bucket, Key=self.key, Range=f"bytes={self.pos}-", **extra))
        self._body = resp["Body"]
        self.resumed += 1

    def _close_body(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close too
                pass
            self._body = None

    def close(self) -> None:
        if not self.closed:
            self._close_body()
        super().close()


def read_range(uri: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of an object (an S3 ranged GET; a seek locally)."""
    if end <= start:
        return b""
    if is_remote(uri):
        bucket, key = split_s3(uri)
        return _retry("read", uri, lambda: s3_client().get_object(
            Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")["Body"].read())
    try:
        with open(_local(uri), "rb") as f:
            f.seek(start)
            return f.read(end - start)
    except FileNotFoundError as exc:
        raise NotFound(f"read {uri}: no such file") from exc


def view_range(uri: str, start: int, end: int) -> memoryview | bytes:
    """Bytes [start, end) of an object without copying them where they can be mapped (a local file:
    a read-only memoryview of an mmap, unmapped when the last view goes; committed files are never
    rewritten in place, only replaced by rename, so the mapping stays valid); read_range on S3."""
    if is_remote(uri) or end <= start:
        return read_range(uri, start, end)
    try:
        with open(_local(uri), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if start >= size:
                return b""
            end = min(end, size)
            base = start - start % mmap.ALLOCATIONGRANULARITY
            # populated up front: one call fills the page table instead of a fault per 4 KiB later
            mapped = mmap.mmap(f.fileno(), end - base, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                               prot=mmap.PROT_READ, offset=base)
    except FileNotFoundError as exc:
        raise NotFound(f"read {uri}: no such file") from exc
    return memoryview(mapped)[start - base:]


def open_read(uri: str) -> IO[bytes]:
    """A streaming binary reader (large objects are not loaded into memory); use it in `with`."""
    if is_remote(uri):
        bucket, key = split_s3(uri)
        return io.BufferedReader(_S3Raw(bucket, key, uri), buffer_size=1 << 20)
    try:
        return open(_local(uri), "rb")
    except FileNotFoundError as exc:
        raise NotFound(f"open {uri}: no such file") from exc


class _S3Ranges(io.RawIOBase):
    """A seekable S3 object read by ranged GETs, each retried (a body cut short is asked for again): what
    pyarrow opens parquet through, so its reads get the same retries as every other read here."""

    def __init__(self, uri: str):
        bucket, key = split_s3(uri)
        head = _retry("stat", uri, lambda: s3_client().head_object(Bucket=bucket, Key=key))
        self.uri, self.size, self.pos = uri, head["ContentLength"], 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def readinto(self, b) -> int:
        data = read_range(self.uri, self.pos, min(self.pos + len(b), self.size))
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)


def open_seekable(uri: str) -> IO[bytes]:
    """A seekable binary reader (S3: ranged reads, retried); use it in `with`."""
    if is_remote(uri):
        return io.BufferedReader(_S3Ranges(uri), buffer_size=1 << 20)
    return open_read(uri)


def exists(uri: str) -> bool:
    if is_remote(uri):
        bucket, key = split_s3(uri)
        try:
            _retry("stat", uri, lambda: s3_client().head_object(Bucket=bucket, Key=key))
            return True
        except NotFound:
            return False
    return os.path.exists(_local(uri))


def list_uris(prefix: str, suffix: str = "") -> list[str]:
    """Every object under a folder/prefix (recursive), sorted, skipping temporaries."""
    return [uri for uri, _ in list_versions(prefix, suffix)]


def list_versions(prefix: str, suffix: str = "") -> list[tuple[str, str]]:
    """(uri, version) of every object under a folder/prefix, sorted: the version (S3: ETag and size;
    local: size and mtime) changes whenever the object is written again."""
    if is_remote(prefix):
        bucket, key = split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""
        out = []

        def pages():
            return list(s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key))

        for page in _retry("list", prefix, pages):
            for obj in page.get("Contents", []):
                out.append((f"s3://{bucket}/{obj['Key']}", f"{obj.get('ETag', '')}:{obj.get('Size', '')}"))
    else:
        root = _local(prefix)
        if os.path.isfile(root):
            files = [prefix] if prefix.endswith(suffix) else []
        else:
            files = [os.path.join(d, f) for d, _, names in os.walk(root) for f in names]
        out = []
        for path in files:
            try:
                st = os.stat(path)
            except FileNotFoundError:  # removed while listing (a temporary committed or dropped)
                continue
            out.append((path, f"{st.st_size}:{st.st_mtime_ns}"))
    return sorted(o for o in out if o[0].endswith(suffix) and ".tmp-" not in basename(o[0]))


def relative_key(prefix: str, uri: str) -> str:
    """`uri`'s path below `prefix`, refused when it would leave a folder it is written into (`..`, an
    absolute path, an empty segment): a key from a store must never choose where a local file lands."""
    if not is_remote(prefix):
        prefix, uri = _local(prefix), _local(uri)
    base = prefix.rstrip("/") + "/"
    if not uri.startswith(base):
        raise StorageError(f"{uri} is not below {prefix}")
    rel = uri[len(base):]
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
        raise StorageError(f"{uri}: key {rel!r} escapes {prefix} (refused)")
    return rel


# ---------------------------------------------------------------- atomic writes

MULTIPART_BYTES = 64 << 20  # S3 uploads at least this large go in parts of this size


def _tmp_name(uri: str) -> str:
    return f"{uri}.tmp-{uuid.uuid4().hex[:12]}"


def put_tree(local_dir: str, uri: str, last: str | None = None, fault: str | None = None) -> None:
    """Commit every file under a local folder below `uri`, keeping relative paths (each file atomically).
    `last` (a relative path) is uploaded after all the others: readers that look for it see a whole tree.
    `fault`: the fault point (ovpipe.faults) reached after the first file of several."""
    rels = sorted(os.path.relpath(os.path.join(base, name), local_dir).replace(os.sep, "/")
                  for base, _, files in os.walk(local_dir) for name in files)
    if last is not None:
        if last not in rels:
            raise StorageError(f"put {local_dir} -> {uri}: the commit file {last!r} is missing")
        rels = [r for r in rels if r != last] + [last]
    for i, rel in enumerate(rels):
        put_file(os.path.join(local_dir, rel), join(uri, rel))
        if fault and i == 0 and len(rels) > 1:
            faults.point(fault)


def put_file(local_path: str, uri: str) -> None:
    """Commit a finished local file to `uri` atomically (moved if local, uploaded if S3)."""
    if is_remote(uri):
        from boto3.s3.transfer import TransferConfig

        bucket, key = split_s3(uri)
        big = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES)
        # a failed multipart upload is aborted by the transfer manager: nothing becomes visible
        _retry("write", uri, lambda: s3_client().upload_file(local_path, bucket, key, Config=big))
        return
    dest = _local(uri)
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    tmp = _tmp_name(dest)
    shutil.copyfile(local_path, tmp)
    os.replace(tmp, dest)


def write_bytes(uri: str, data: bytes) -> None:
    if is_remote(uri):
        bucket, key = split_s3(uri)
        _retry("write", uri, lambda: s3_client().put_object(Bucket=bucket, Key=key, Body=data))
        return
    dest = _local(uri)
    try:
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        tmp = _tmp_name(dest)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except OSError as exc:
        raise StorageError(f"write {uri}: {exc}") from exc


def create_exclusive(uri: str, data: bytes) -> bool:
    """Write `uri` only if nothing is there yet, atomically (S3: a conditional PUT with `If-None-Match: *`;
    locally: a hard link, which fails when the name exists). True when this call created it. A retried
    PUT may find its own first attempt: callers put a token in `data` and read it back on False."""
    if is_remote(uri):
        bucket, key = split_s3(uri)
        try:
            _retry("create", uri, lambda: s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*"))
            return True
        except StorageError as exc:
            if _error_code(exc.__cause__ or exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            raise
    dest = _local(uri)
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    tmp = _tmp_name(dest)
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, dest)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str, obj: Any) -> bytes:
    data = (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    write_bytes(uri, data)
    return data


class atomic_output:
    """`with atomic_output(uri) as path:` write a local file at `path`; committed to `uri` on success."""

    def __init__(self, uri: str, suffix: str = ""):
        self.uri = uri
        self.suffix = suffix

    def __enter__(self) -> str:
        fd, self.path = tempfile.mkstemp(suffix=self.suffix, prefix="ovpipe-")
        os.close(fd)
        return self.path

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                faults.point("mid_write")
                put_file(self.path, self.uri)
        finally:
            if os.path.exists(self.path):
                os.unlink(self.path)


def delete(uri: str) -> None:
    if is_remote(uri):
        bucket, key = split_s3(uri)
        _retry("delete", uri, lambda: s3_client().delete_object(Bucket=bucket, Key=key))
    elif os.path.exists(_local(uri)):
        os.unlink(_local(uri))


def delete_tree(uri: str) -> None:
    """Delete every object under a folder URI (and locally the folder itself)."""
    if not is_remote(uri):
        shutil.rmtree(_local(uri), ignore_errors=True)
        return
    bucket, _ = split_s3(uri)
    keys = [split_s3(u)[1] for u in list_uris(uri)]
    for i in range(0, len(keys), 1000):  # S3's limit per DeleteObjects call
        batch = {"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True}
        resp = _retry("delete", uri, lambda b=batch: s3_client().delete_objects(Bucket=bucket, Delete=b))
        if resp.get("Errors"):
            raise StorageError(f"delete {uri}: {resp['Errors'][0]}")


def download(uri: str, local_path: str) -> str:
    if is_remote(uri):
        bucket, key = split_s3(uri)
        os.makedirs(os.path.dirname(local_path) or ".", exist_ok=True)
        _retry("download", uri, lambda: s3_client().download_file(bucket, key, local_path))
        return local_path
    if not os.path.isfile(_local(uri)):
        raise NotFound(f"download {uri}: no such file")
    os.makedirs(os.path.dirname(local_path) or ".", exist_ok=True)  # as the S3 branch does
    shutil.copyfile(_local(uri), local_path)
    return local_path


def download_tree(uri: str, local_dir: str, objects: list[str] | None = None) -> None:
    """Every object under a folder URI (or the `objects` listed) into `local_dir`, at its relative path;
    a key that would land outside `local_dir` is refused."""
    objects = list_uris(uri) if objects is None else objects
    rels = [relative_key(uri, obj) for obj in objects]  # every key checked before any byte moves
    for obj, rel in zip(objects, rels):
        download(obj, os.path.join(local_dir, *rel.split("/")))


def localize(uri: str, cache_dir: str | None = None) -> str:
    """A local path for a file or folder URI: itself when local, else a cached download.

    The cache is keyed on the URI *and* on the versions (ETag, size) of the objects under it, so an
    export or a tower written again at the same URI is downloaded again, never served stale."""
    if not is_remote(uri):
        path = _local(uri)
        if not os.path.exists(path):
            raise NotFound(f"localize {uri}: no such file or folder")
        return path
    cache = cache_dir or os.environ.get("OVPIPE_CACHE", os.path.join(tempfile.gettempdir(), "ovpipe-cache"))
    bucket, key = split_s3(uri)
    try:  # one object, or (NotFound) a folder of them
        head = _retry("stat", uri, lambda: s3_client().head_object(Bucket=bucket, Key=key))
        single, versions = True, [(uri, f"{head.get('ETag', '')}:{head.get('ContentLength', '')}")]
    except NotFound:
        single, versions = False, list_versions(uri)
        if not versions:
            raise NotFound(f"localize {uri}: no such object or prefix") from None
    fingerprint = hashlib.sha256(json.dumps([uri, versions]).encode()).hexdigest()[:16]
    dest = os.path.join(cache, fingerprint, basename(uri))
    if os.path.exists(dest):
        return dest
    if single:  # download_file itself writes to a temporary and renames
        download(uri, dest)
        return dest
    # Into a temporary folder renamed at the end: an interrupted download must not leave a partial
    # folder that the `os.path.exists(dest)` check above would then trust.
    tmp = _tmp_name(dest)
    try:
        download_tree(uri, tmp, [obj for obj, _ in versions])
        try:
            os.rename(tmp, dest)
        except OSError:  # another process finished first: keep its copy
            if not os.path.isdir(dest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def iter_chunks(uri: str, size: int = 1 << 20) -> Iterator[bytes]:
    with open_read(uri) as f:
        while chunk := f.read(size):
            yield chunk


def sha256_uri(uri: str) -> str:
    h = hashlib.sha256()
    for chunk in iter_chunks(uri):
        h.update(chunk)
    return h.hexdigest()


def ensure_bucket(uri: str) -> None:
    """Create the bucket of an s3:// URI if it does not exist (local: make the folder)."""
    if not is_remote(uri):
        os.makedirs(_local(uri), exist_ok=True)
        return
    bucket, _ = split_s3(uri)
    client = s3_client()
    try:
        _retry("stat bucket", f"s3://{bucket}", lambda: client.head_bucket(Bucket=bucket))
    except StorageError:
        _retry("create bucket", f"s3://{bucket}", lambda: client.create_bucket(Bucket=bucket))
