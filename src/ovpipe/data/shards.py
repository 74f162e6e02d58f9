"""Input readers (webdataset tars in img2dataset's layout, parquet with an image-bytes column); the
writer is `tarwriter.TarWriter`.

Readers stream from a path or s3:// and yield Sample objects. A sample that cannot be assembled
(no image member, a member cut off) comes out with `error` set so the step can count it as a reject;
a shard that ends early is recorded in the ShardReport and the samples it did yield are kept.
"""
from __future__ import annotations

import functools
import io
import json
import logging
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow as pa

from ovpipe import storage
from ovpipe.data import tables

log = logging.getLogger("ovpipe")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass
class Sample:
    key: str
    image: bytes | None = None
    image_ext: str | None = None
    caption: bytes | None = None  # raw bytes: decoding errors are a reject reason, not a crash
    meta: dict = field(default_factory=dict)
    error: tuple[str, str] | None = None  # (reason, detail) when the sample is structurally broken
    members: dict[str, bytes] = field(default_factory=dict)  # every member by extension (tar inputs)
    offset: int = -1  # tar: byte range [offset, offset + size) holding the sample's members
    size: int = 0     # parquet: offset = row index, size = 0

    def caption_text(self) -> str | None:
        """The caption as text, or None when it is not valid UTF-8."""
        if self.caption is None:
            return ""
        try:
            return self.caption.decode("utf-8")
        except UnicodeDecodeError:
            return None


@dataclass
class ShardReport:
    uri: str
    errors: list[dict] = field(default_factory=list)

    def add(self, error: str, samples_read: int) -> None:
        self.errors.append({"shard": self.uri, "error": error, "samples_read": samples_read})


def sniff_ext(data: bytes) -> str:
    """A file extension for image bytes stored without a name (parquet cells), from their magic."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return "webp" if data[8:12] == b"WEBP" else "img"


def list_shards(prefix: str, fmt: str = "auto") -> list[str]:
    """The input shards under a folder/prefix, sorted. `fmt` webdataset: the .tar files; parquet: the
    .parquet files; auto: both, except a .parquet beside a .tar of the same name (img2dataset writes
    its per-shard metadata so: no images in it). What is passed over is logged, never dropped unsaid."""
    uris = storage.list_uris(prefix)
    tars = {u[:-len(".tar")] for u in uris if u.endswith(".tar")}
    if fmt == "webdataset":
        shards = [u for u in uris if u.endswith(".tar")]
    elif fmt == "parquet":
        shards = [u for u in uris if u.endswith(".parquet")]
    else:
        shards = [u for u in uris
                  if u.endswith(".tar") or (u.endswith(".parquet") and u[:-len(".parquet")] not in tars)]
    chosen = set(shards)
    skipped = [storage.basename(u) for u in uris if u not in chosen]
    if skipped:
        log.warning("%s: %d files are not %s shards and are not read: %s%s", prefix, len(skipped),
                    {"auto": "tar or parquet"}.get(fmt, fmt), ", ".join(skipped[:8]), " …" if len(skipped) > 8 else "")
    if not shards:
        raise storage.NotFound(f"{prefix}: no {'.tar or .parquet' if fmt == 'auto' else fmt} shards found")
    return shards


def iter_samples(uri: str, report: ShardReport, fmt: str = "auto", id_column: str = "id",
                 image_column: str = "image", caption_column: str = "caption") -> Iterator[Sample]:
    if fmt == "parquet" or (fmt == "auto" and uri.endswith(".parquet")):
        yield from _iter_parquet(uri, report, id_column, image_column, caption_column)
    else:
        yield from _iter_tar(uri, report)


def _split_name(name: str) -> tuple[str, str]:
    """webdataset convention: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _assemble(key: str, members: dict[str, bytes], offset: int = -1, end: int = 0) -> Sample:
    sample = Sample(key=key, members=members, offset=offset, size=end - offset if offset >= 0 else 0)
    for ext in IMAGE_EXTS:
        if ext in members:
            sample.image, sample.image_ext = members[ext], ext
            break
    sample.caption = members.get("txt")
    if "json" in members:
        try:
            sample.meta = json.loads(members["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            sample.error = ("bad_metadata", f"json member: {exc}")
    if sample.image is None and sample.error is None:
        sample.error = ("missing_image", f"members {sorted(members)} hold no {'/'.join(IMAGE_EXTS)}")
    return sample


class _TarInfo(tarfile.TarInfo):
    """Notes the end-of-archive marker: tarfile silently stops at a stream cut on a header boundary."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            tar.ovpipe_clean_end = True
            raise


def _iter_tar(uri: str, report: ShardReport) -> Iterator[Sample]:
    """Groups of consecutive members sharing a key. A key seen before in the shard, or a member name
    repeated inside a group, comes out as a `duplicate_key` reject (the first occurrence is the sample).
    A stream that breaks off is resumed by storage; only data that really ends early (a cut tar) is
    reported as a short shard. A storage failure that outlasts its retries raises: the shard is then
    not committed, and a rerun reads it again."""
    key, members, n, start, end, dup_member, reading = None, {}, 0, -1, 0, None, None
    seen: dict[str, int] = {}

    def finish() -> Sample:
        if key in seen:
            return Sample(key=key, error=("duplicate_key", f"key appears again at byte {start}; first at byte "
                                                            f"{seen[key]}"), offset=start, size=end - start)
        seen[key] = start
        if dup_member:
            return Sample(key=key, error=("duplicate_key", f"member {dup_member!r} appears twice in the sample"),
                          offset=start, size=end - start)
        return _assemble(key, members, start, end)

    stream = storage.open_read(uri)
    try:
        with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_TarInfo) as tar:
            for info in tar:
                if not info.isfile():
                    continue
                k, ext = _split_name(info.name)
                reading = k
                data = tar.extractfile(info).read()
                if k != key and key is not None:
                    yield finish()
                    n += 1
                    members, dup_member = {}, None
                if k != key:
                    start = info.offset
                key = k
                if ext in members:
                    dup_member = info.name
                members[ext] = data
                end = info.offset_data + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            if not getattr(tar, "ovpipe_clean_end", False):
                raise tarfile.ReadError("no end-of-archive marker (the stream stopped between members)")
    except storage.StorageError:
        raise
    except (tarfile.TarError, EOFError, UnicodeError, ValueError) as exc:
        report.add(f"shard ends early: {type(exc).__name__}: {exc}", n)
        if reading is not None and reading != key and key is not None:
            yield finish()  # the data stopped in the first member of the next sample: this one is whole
            key, members = reading, {}
        if key is not None:  # the group being read when the data stopped may be cut short
            yield Sample(key=key, error=("incomplete_sample", f"shard ended while reading {sorted(members)}"))
        return
    finally:
        stream.close()
    if key is not None:
        yield finish()


def _image_bytes(value) -> bytes | None:
    if isinstance(value, dict):  # Hugging Face datasets' Image feature: {bytes, path}
        value = value.get("bytes")
    return value


def _cell_bytes(value, column: str) -> tuple[bytes | None, tuple[str, str] | None]:
    """A text/bytes cell as bytes, or a reject when it holds another type."""
    if value is None or isinstance(value, bytes):
        return value, None
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass"), None
    return None, ("bad_column", f"{column!r} holds {type(value).__name__}, expected text or bytes")


def _iter_parquet(uri: str, report: ShardReport, id_column: str, image_column: str,
                  caption_column: str) -> Iterator[Sample]:
    """Rows as samples. A missing id or image column, a null or a cell of the wrong type is a reject
    of that row with its reason (a row without an id column is named `row-N`); `json` (or
    `conversations`) columns carry a conversation for the stage datasets. A file that is not parquet, or
    breaks off, is a short shard; a storage failure raises."""
    n = 0
    seen: dict[str, int] = {}
    try:
        pf = tables.parquet_file(uri)
        names = pf.schema_arrow.names
        missing = [c for c in (id_column, image_column) if c not in names]
        if missing:  # every row becomes a reject naming the column; the shard error says what to set
            report.add(f"parquet lacks columns {missing} (has {names}); set data.id_column / data.image_column", 0)
        optional = [c for c in (caption_column, "json", "conversations") if c in names]
        columns = [c for c in (id_column, image_column) if c in names] + optional
        for batch in pf.iter_batches(batch_size=256, columns=columns):
            rows = batch.to_pydict()
            for i in range(batch.num_rows):
                yield _parquet_sample(rows, i, n, seen, id_column, image_column, caption_column)
                n += 1
    except storage.StorageError as exc:  # the store's own failures (pyarrow passes them on) propagate
        if not isinstance(exc.__cause__, (pa.ArrowInvalid, pa.ArrowNotImplementedError)):
            raise
        report.add(f"not a readable parquet file: {exc}", n)
    except (pa.ArrowException, OSError) as exc:  # corrupt pages: pyarrow says OSError for those too
        report.add(f"parquet read failed: {type(exc).__name__}: {exc}", n)


def _parquet_sample(rows: dict, i: int, n: int, seen: dict, id_column: str, image_column: str,
                    caption_column: str) -> Sample:
    sid = rows[id_column][i] if id_column in rows else None
    key = str(sid) if sid is not None else f"row-{n}"
    sample = Sample(key=key, offset=n)
    if sid is None:
        sample.error = ("missing_id", f"no {id_column!r} column" if id_column not in rows else f"null {id_column!r}")
        return sample
    if key in seen:
        sample.error = ("duplicate_key", f"id appears again at row {n}; first at row {seen[key]}")
        return sample
    seen[key] = n
    image, err = _cell_bytes(_image_bytes(rows[image_column][i]) if image_column in rows else None, image_column)
    caption, cap_err = _cell_bytes(rows[caption_column][i] if caption_column in rows else None, caption_column)
    sample.image, sample.caption = image, caption
    conversation = next((rows[c][i] for c in ("json", "conversations") if c in rows and rows[c][i] is not None), None)
    if isinstance(conversation, str):
        sample.members["json"] = conversation.encode("utf-8")
    elif isinstance(conversation, bytes):
        sample.members["json"] = conversation
    elif conversation is not None:  # a list column of turns (LLaVA's `conversations`)
        sample.members["json"] = json.dumps({"conversations": conversation}).encode()
    if err or cap_err:
        sample.error = err or cap_err
    elif image is None:
        sample.error = ("missing_image", f"no {image_column!r} column" if image_column not in rows
                        else f"null {image_column!r}")
    elif (ext := sniff_ext(image)) not in IMAGE_EXTS:
        sample.error = ("unsupported_image_format", f"{image[:12]!r}… is not {'/'.join(IMAGE_EXTS)}")
    else:
        sample.image_ext = ext
    return sample


def fetch_samples(uri: str, positions: list[tuple[int, int]], fmt: str = "auto", threads: int = 8,
                  **columns) -> dict[int, Sample]:
    """Samples of one shard by the positions its reader reported, keyed by offset (see fetch_ordered)."""
    return {s.offset: s for s in fetch_ordered([(uri, o, n) for o, n in positions], fmt, threads, **columns)}


def fetch_ordered(wanted: list[tuple[str, int, int]], fmt: str = "auto", threads: int = 8, *,
                  views: bool = False, **columns) -> Iterator[Sample]:
    """The samples at (shard uri, position, size) in the order asked, read ahead in the background
    (up to READ_AHEAD_BYTES) so the caller can write while later ones are still arriving. Tar shards:
    byte ranges (on S3 nearby ones in one GET, several GETs in parallel; a shard is never read whole),
    local files mapped, not copied; parquet: rows (one pass per file). Reads are queued in the order
    they are first needed. `views`: image members of local tars are memoryviews into the mapped file
    (for a writer that only hashes and writes them: no copy at all), else bytes."""
    first: dict[tuple[str, int], int] = {}
    by_uri: dict[str, set] = {}
    for i, (uri, off, size) in enumerate(wanted):
        first.setdefault((uri, off), i)
        by_uri.setdefault(uri, set()).add((off, size))
    reads: list[tuple[int, object, int, list]] = []  # (first index needing it, read, bytes, its keys)
    for uri, pos in by_uri.items():
        pos = sorted(pos)
        if fmt == "parquet" or (fmt == "auto" and uri.endswith(".parquet")):
            groups, read = [pos], functools.partial(_read_rows, uri, columns=columns)
        else:
            groups = _spans(pos) if storage.is_remote(uri) else [[p] for p in pos]
            read = functools.partial(_read_span, uri, views=views)
        reads += [(min(first[(uri, o)] for o, _ in g), functools.partial(read, g), g[-1][0] + g[-1][1] - g[0][0],
                   [(uri, o) for o, _ in g]) for g in groups]
    reads.sort(key=lambda t: t[0])  # submitted in the order first needed
    jobs = {key: j for j, r in enumerate(reads) for key in r[3]}  # (uri, offset) -> the read bringing it
    done_at: dict[int, list[int]] = {}  # index -> reads no longer needed after it
    for job, i in {jobs[(u, o)]: i for i, (u, o, _) in enumerate(wanted)}.items():  # last index per read
        done_at.setdefault(i, []).append(job)
    # Local reads are mappings and header parsing: one thread overlaps them with writing, more only
    # contend for the GIL.
    remote = any(storage.is_remote(u) for u in by_uri)
    pool = ThreadPoolExecutor(threads if remote else 1, thread_name_prefix="ovpipe-fetch")
    futures: dict[int, object] = {}
    held = 0  # bytes of reads submitted and still needed
    try:
        for i, (uri, off, _) in enumerate(wanted):
            job = jobs[(uri, off)]
            while len(futures) < len(reads) and (job >= len(futures) or held < READ_AHEAD_BYTES):
                futures[len(futures)] = pool.submit(reads[len(futures)][1])
                held += reads[len(futures) - 1][2]
            yield futures[job].result()[off]
            for j in done_at.get(i, ()):
                futures[j] = None  # its samples are all out: the memory goes with the caller's use
                held -= reads[j][2]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _read_rows(uri: str, positions: list[tuple[int, int]], columns: dict) -> dict[int, Sample]:
    offsets = {o for o, _ in positions}
    return {s.offset: s for s in _iter_parquet(uri, ShardReport(uri), **columns) if s.offset in offsets}


def _read_span(uri: str, positions: list[tuple[int, int]], views: bool = False) -> dict[int, Sample]:
    """Samples in one contiguous read from the first position to the end of the last."""
    start, end = positions[0][0], positions[-1][0] + positions[-1][1]
    data = storage.view_range(uri, start, end)
    return {o: _parse_sample(uri, o, n, data[o - start:o - start + n] if len(positions) > 1 else data, views)
            for o, n in positions}


def _parse_sample(uri: str, offset: int, size: int, data, views: bool = False) -> Sample:
    """The sample whose members fill `data` (bytes or a memoryview): plain USTAR headers read here,
    member data sliced without a copy (image members stay views when `views`); anything else through
    tarfile, with its checks and errors."""
    found = _plain_members(data)
    if found is None:
        data = bytes(data)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members, key = {}, None
            for info in tar:
                key, ext = _split_name(info.name)
                end = info.offset_data + info.size
                if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and end <= len(data):
                    members[ext] = data[info.offset_data:end]  # one slice; tarfile's reader copies more
                else:  # anything unusual (or cut short): tarfile's own reading and errors
                    members[ext] = tar.extractfile(info).read()
        found = (key, members) if key is not None else None
    if found is None:
        raise storage.StorageError(f"{uri}: no sample at bytes {offset}..{offset + size}")
    key, members = found
    if isinstance(data, memoryview):
        members = {ext: m if views and ext.rpartition(".")[2] in IMAGE_EXTS else bytes(m)
                   for ext, m in members.items()}
    return _assemble(key, members, offset, offset + size)


def _plain_members(data) -> tuple[str, dict] | None:
    """(key of the last member, {ext: data slice}) when every header is a checksummed POSIX ustar
    regular file whose data lies within `data`, up to its end or a zero block; None otherwise."""
    members, key, pos, n = {}, None, 0, len(data)
    while pos + 512 <= n:
        head = bytes(data[pos:pos + 512])
        if head == _ZERO_BLOCK:
            break
        if head[156:157] not in (b"0", b"\0") or head[257:265] != b"ustar\x0000" or head[124] & 0x80:
            return None
        try:
            size = int(head[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            checksum = int(head[148:156].split(b"\0", 1)[0].strip(), 8)
        except ValueError:
            return None
        if checksum != sum(head[:148]) + 256 + sum(head[156:]):  # the field itself counts as spaces
            return None
        name = head[:100].split(b"\0", 1)[0]
        prefix = head[345:500].split(b"\0", 1)[0]
        name = (prefix + b"/" + name if prefix else name).decode(tarfile.ENCODING, "surrogateescape")
        if pos + 512 + size > n:
            return None
        key, ext = _split_name(name)
        members[ext] = data[pos + 512:pos + 512 + size]
        pos += 512 + -(-size // 512) * 512
    return (key, members) if key is not None else None


_ZERO_BLOCK = bytes(512)


# An object store charges each GET a fixed cost (a round trip; SeaweedFS also reads whole chunks), so
# nearby samples are fetched together: a hole up to HOLE_BYTES is read through, spans stay under
# SPAN_BYTES. Break-even hole = GET cost x bandwidth: ~5 ms x ~700 MB/s on SeaweedFS here (about 4 MB;
# bench/shard_write_bench.py), of the order of AWS's advice of 8-16 MB ranged GETs.
HOLE_BYTES = 4 << 20
SPAN_BYTES = 32 << 20
READ_AHEAD_BYTES = 256 << 20  # fetch_ordered's reads in flight or waiting: memory, not speed, bounds it


def _spans(positions: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    groups: list[list[tuple[int, int]]] = []
    for off, size in positions:  # sorted by offset
        g = groups[-1] if groups else None
        if g and off - (g[-1][0] + g[-1][1]) <= HOLE_BYTES and off + size - g[0][0] <= SPAN_BYTES:
            g.append((off, size))
        else:
            groups.append([(off, size)])
    return groups
