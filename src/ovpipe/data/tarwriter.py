"""The deterministic webdataset tar writer every step's shards are written with."""
from __future__ import annotations

import tarfile

from ovpipe import faults
from ovpipe.outstream import AtomicStream


class TarWriter:
    """Deterministic webdataset tar: fixed mtime/owner/mode, members in the order given.

    The bytes are exactly what tarfile writes (USTAR headers from TarInfo.tobuf, data padded to 512,
    two zero blocks and zero padding to a 10240-byte record at the end), but streamed straight into
    an ovpipe.outstream.AtomicStream: hashed while written, committed to `uri` atomically on close,
    never staged in a local temporary that is read back and copied (see outstream for why).
    """

    def __init__(self, uri: str):
        self._out = AtomicStream(uri)
        self.count = 0
        # Byte layout of each sample, for index files (energon's) built without re-reading the tar:
        # (key, offset of its first header, [(ext, data offset, data size), ...]).
        self.layout: list[tuple[str, int, list[tuple[str, int, int]]]] = []
        self.end_offset = 0  # where the end-of-archive blocks start, set by close()

    def write(self, key: str, members: dict[str, bytes]) -> None:
        start, parts = self._out.offset, []
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
            info.uname = info.gname = ""
            # tarfile.open(path, "w")'s own encoding and errors: the same header bytes as addfile
            self._out.write(info.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape"))
            parts.append((ext, self._out.offset, len(data)))
            self._out.write(data)
            if len(data) % tarfile.BLOCKSIZE:
                self._out.write(_ZEROS[:tarfile.BLOCKSIZE - len(data) % tarfile.BLOCKSIZE])
            faults.point("mid_shard")
        self.layout.append((key, start, parts))
        self.count += 1

    @property
    def closed(self) -> bool:
        return self._out.closed

    def close(self) -> str:
        """Commit; returns the sha256 of the shard."""
        self.end_offset = self._out.offset
        self._out.write(_ZEROS[:2 * tarfile.BLOCKSIZE])  # end-of-archive, then pad the last record
        if self._out.offset % tarfile.RECORDSIZE:
            self._out.write(bytes(tarfile.RECORDSIZE - self._out.offset % tarfile.RECORDSIZE))
        return self._out.commit()

    def abort(self) -> None:
        """Drop the half-written shard: nothing is committed, the temporary (or upload) is removed."""
        self._out.abort()

    def __enter__(self) -> "TarWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Commit on success (when close() was not called yet); abort on any error."""
        if exc_type is not None:
            self.abort()
        elif not self.closed:
            self.close()


_ZEROS = bytes(2 * tarfile.BLOCKSIZE)
