"""Parquet through the storage layer: atomic writes, reads from paths or s3:// (ranged reads through storage)."""
from __future__ import annotations

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


def parquet_file(uri: str) -> pq.ParquetFile:
    """A ParquetFile for streaming row batches (random access on S3 without loading the object)."""
    try:
        if storage.is_remote(uri):
            # through storage's ranged reads: the same retries, resumption and errors as every other read
            return pq.ParquetFile(storage.open_seekable(uri))
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
