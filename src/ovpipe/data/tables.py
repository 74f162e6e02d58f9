"""Parquet through the storage layer: atomic writes, reads from paths or s3:// (seekable via pyarrow's S3)."""
from __future__ import annotations

import os
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from ovpipe import storage


def write_parquet(uri: str, table: pa.Table) -> str:
    """Write atomically; returns the sha256 of the bytes written (deterministic for the same table)."""
    with storage.atomic_output(uri, ".parquet") as path:
        pq.write_table(table, path, compression="zstd", row_group_size=65536)
        with open(path, "rb") as f:
            digest = storage.sha256_bytes(f.read())
    return digest


def _s3_filesystem():
    from pyarrow import fs

    endpoint = os.environ.get("OVPIPE_S3_ENDPOINT") or None
    kwargs = {"region": os.environ.get("AWS_REGION", "us-east-1")}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs.update(endpoint_override=parsed.netloc or parsed.path, scheme=parsed.scheme or "https",
                      force_virtual_addressing=False)
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs.update(access_key=os.environ["AWS_ACCESS_KEY_ID"],
                      secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""))
    # The AWS SDK's standard retries with backoff, as many as storage.py makes: a store that restarts or
    # sheds load is waited for, not turned into a failed task.
    kwargs["retry_strategy"] = fs.AwsStandardS3RetryStrategy(max_attempts=storage.RETRIES + 4)
    return fs.S3FileSystem(**kwargs)


def parquet_file(uri: str) -> pq.ParquetFile:
    """A ParquetFile for streaming row batches (random access on S3 without loading the object)."""
    try:
        if storage.is_remote(uri):
            return pq.ParquetFile(_s3_filesystem().open_input_file(uri[len("s3://"):]))
        return pq.ParquetFile(storage._local(uri))
    except FileNotFoundError as exc:  # same NotFound as storage's own readers raise
        raise storage.NotFound(f"open parquet {uri}: no such file or object") from exc
    except (OSError, pa.ArrowException) as exc:
        raise storage.StorageError(f"open parquet {uri}: {exc}") from exc


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    try:
        return parquet_file(uri).read(columns=columns)
    except pa.ArrowException as exc:
        raise storage.StorageError(f"read parquet {uri}: {exc}") from exc
