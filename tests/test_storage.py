"""storage.py (and tables' parquet I/O) on local paths and on a real S3 server (SeaweedFS)."""
from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.response import StreamingBody

from ovpipe import storage
from ovpipe.data import tables
from ovpipe.s3server import free_ports
from tests.helpers import raw_names


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    """An empty store root on each backend."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_root")


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """storage's backoff sleeps, recorded instead of slept."""
    recorded: list[float] = []

    class FakeTime:
        def __getattr__(self, name):
            return getattr(time, name)

        def sleep(self, seconds):
            recorded.append(seconds)

    monkeypatch.setattr(storage, "time", FakeTime())
    return recorded


def plant_temporary(root: str, rel: str) -> None:
    """A leftover temporary, as a crashed writer would leave it (any object named `*.tmp-*`)."""
    storage.write_bytes(storage.join(root, *rel.split("/")), b"partial")


# ---------------------------------------------------------------- both backends

def test_bytes_text_json_round_trip(root):
    storage.write_bytes(storage.join(root, "a", "b.bin"), b"\x00\x01payload")
    storage.write_text(storage.join(root, "t.txt"), "héllo\n")
    written = storage.write_json(storage.join(root, "m.json"), {"b": [1, 2], "a": "中文"})
    assert storage.read_bytes(storage.join(root, "a", "b.bin")) == b"\x00\x01payload"
    assert storage.read_text(storage.join(root, "t.txt")) == "héllo\n"
    assert storage.read_json(storage.join(root, "m.json")) == {"a": "中文", "b": [1, 2]}
    assert storage.read_bytes(storage.join(root, "m.json")) == written  # what write_json returned
    storage.write_text(storage.join(root, "t.txt"), "second")  # overwrite
    assert storage.read_text(storage.join(root, "t.txt")) == "second"
    assert raw_names(root) == ["a/b.bin", "m.json", "t.txt"]  # no temporaries left behind


def test_read_json_invalid_names_uri(root):
    uri = storage.join(root, "bad.json")
    storage.write_text(uri, "{not json")
    with pytest.raises(storage.StorageError, match="not valid JSON") as err:
        storage.read_json(uri)
    assert uri in str(err.value)


def test_atomic_output_commits_on_success(root):
    uri = storage.join(root, "out", "data.bin")
    with storage.atomic_output(uri, ".bin") as path:
        assert path.endswith(".bin") and not storage.exists(uri)
        with open(path, "wb") as f:
            f.write(b"x" * 1000)
    assert storage.read_bytes(uri) == b"x" * 1000
    assert not os.path.exists(path)
    assert raw_names(root) == ["out/data.bin"]


def test_atomic_output_failure_leaves_nothing(root):
    uri = storage.join(root, "out", "data.bin")
    with pytest.raises(RuntimeError, match="boom"):
        with storage.atomic_output(uri) as path:
            with open(path, "wb") as f:
                f.write(b"half of it")
            raise RuntimeError("boom")
    assert not os.path.exists(path)
    assert not storage.exists(uri)
    assert storage.list_uris(root) == []
    assert raw_names(root) == []


def test_atomic_output_failure_keeps_previous_version(root):
    uri = storage.join(root, "data.bin")
    storage.write_bytes(uri, b"old")
    with pytest.raises(RuntimeError):
        with storage.atomic_output(uri) as path:
            with open(path, "wb") as f:
                f.write(b"new but unfinished")
            raise RuntimeError("crash")
    assert storage.read_bytes(uri) == b"old"
    assert raw_names(root) == ["data.bin"]


def test_list_uris_recursive_sorted_skips_temporaries(root):
    for rel in ["a/2.json", "a/sub/3.txt", "a/1.txt", "ab/4.txt", "z.txt"]:
        storage.write_text(storage.join(root, *rel.split("/")), rel)
    plant_temporary(root, "a/5.txt.tmp-0123456789ab")
    want = [storage.join(root, "a", "1.txt"), storage.join(root, "a", "2.json"),
            storage.join(root, "a", "sub", "3.txt")]
    assert storage.list_uris(storage.join(root, "a")) == want  # not the sibling prefix "ab/"
    assert storage.list_uris(storage.join(root, "a") + "/") == want
    assert storage.list_uris(storage.join(root, "a"), suffix=".txt") == [want[0], want[2]]
    assert len(storage.list_uris(root)) == 5
    assert storage.list_uris(storage.join(root, "nothing-here")) == []


def test_exists_and_delete(root):
    uri = storage.join(root, "x", "y.bin")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"1")
    assert storage.exists(uri)
    storage.delete(uri)
    assert not storage.exists(uri)
    storage.delete(uri)  # deleting what is gone is not an error (idempotent reruns)


def test_open_read_streams_a_large_object(root):
    data = os.urandom(20 << 20)
    uri = storage.join(root, "big.bin")
    storage.write_bytes(uri, data)
    h, chunks = hashlib.sha256(), 0
    with storage.open_read(uri) as f:
        while chunk := f.read(1 << 20):
            assert len(chunk) <= 1 << 20
            h.update(chunk)
            chunks += 1
    assert chunks == 20 and h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert storage.sha256_uri(uri) == storage.sha256_bytes(data)
    with storage.open_read(uri) as f:  # a real file object: partial reads, then the rest
        assert f.read(10) == data[:10]
        assert f.read() == data[10:]


def test_put_file_and_download(root, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc" * 1000)
    uri = storage.join(root, "up", "src.bin")
    storage.put_file(str(src), uri)
    assert src.exists()  # the caller's file stays
    assert storage.read_bytes(uri) == b"abc" * 1000
    out = storage.download(uri, str(tmp_path / "dl" / "copy.bin"))
    assert open(out, "rb").read() == b"abc" * 1000
    assert raw_names(root) == ["up/src.bin"]


def test_localize_folder_and_object(root, tmp_path):
    for rel in ["d/a.txt", "d/sub/b.txt"]:
        storage.write_text(storage.join(root, *rel.split("/")), rel)
    plant_temporary(root, "d/c.txt.tmp-0123456789ab")
    cache = str(tmp_path / "cache")
    folder = storage.localize(storage.join(root, "d"), cache_dir=cache)
    assert open(os.path.join(folder, "a.txt")).read() == "d/a.txt"
    assert open(os.path.join(folder, "sub", "b.txt")).read() == "d/sub/b.txt"
    assert storage.localize(storage.join(root, "d"), cache_dir=cache) == folder  # cached
    one = storage.localize(storage.join(root, "d", "a.txt"), cache_dir=cache)
    assert open(one).read() == "d/a.txt"
    if storage.is_remote(root):
        files = sorted(os.path.relpath(os.path.join(d, f), folder)
                       for d, _, fs in os.walk(folder) for f in fs)
        assert files == ["a.txt", "sub/b.txt"]  # temporaries are not data
        assert not [n for n in os.listdir(cache) for m in os.listdir(os.path.join(cache, n)) if ".tmp-" in m]
    else:
        assert folder == storage.join(root, "d")  # local: the folder itself, no copy


READERS = {
    "read_bytes": storage.read_bytes, "read_json": storage.read_json, "open_read": storage.open_read,
    "sha256_uri": storage.sha256_uri, "read_parquet": tables.read_parquet,
    "localize": lambda uri, tmp: storage.localize(uri, cache_dir=str(tmp / "cache")),
    "download": lambda uri, tmp: storage.download(uri, str(tmp / "dl" / "x")),
}


@pytest.mark.parametrize("reader", READERS)
def test_missing_is_not_found_naming_the_uri(root, reader, tmp_path):
    storage.write_text(storage.join(root, "present.txt"), "here")  # the bucket/folder exists
    uri = storage.join(root, "missing", "key.bin")
    fn = READERS[reader]
    with pytest.raises(storage.NotFound) as err:
        fn(uri, tmp_path) if fn.__name__ == "<lambda>" else fn(uri)
    assert uri in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


def test_parquet_round_trip(root):
    table = pa.table({"id": [f"s{i:05d}" for i in range(1000)], "n": list(range(1000)),
                      "w": [i / 7 for i in range(1000)]})
    uri = storage.join(root, "t", "part-0.parquet")
    digest = tables.write_parquet(uri, table)
    assert digest == storage.sha256_uri(uri)
    assert tables.read_parquet(uri).equals(table)
    assert tables.read_parquet(uri, columns=["n"]).column("n").to_pylist() == list(range(1000))
    assert tables.parquet_file(uri).metadata.num_rows == 1000
    assert tables.write_parquet(storage.join(root, "t", "again.parquet"), table) == digest  # deterministic
    assert raw_names(root) == ["t/again.parquet", "t/part-0.parquet"]


# ---------------------------------------------------------------- S3 only

def test_missing_bucket_is_not_found(s3_env):
    with pytest.raises(storage.NotFound, match="s3://ovpipe-no-such-bucket-7f3a/key.bin"):
        storage.read_bytes("s3://ovpipe-no-such-bucket-7f3a/key.bin")


def test_put_file_multipart(s3_root, tmp_path, monkeypatch):
    """Above the threshold the upload goes in parts (5 MB is S3's minimum part), each byte sent once."""
    monkeypatch.setattr(storage, "MULTIPART_BYTES", 5 << 20)
    seen: list[str] = []

    def spy(model, **kwargs):
        seen.append(model.name)

    client = storage.s3_client()
    client.meta.events.register("before-call.s3.*", spy)
    try:
        data = os.urandom((12 << 20) + 123)
        src = tmp_path / "big.bin"
        src.write_bytes(data)
        uri = storage.join(s3_root, "big.bin")
        storage.put_file(str(src), uri)
    finally:
        client.meta.events.unregister("before-call.s3.*", spy)
    assert seen.count("UploadPart") == 3 and "UploadPartCopy" not in seen and "CopyObject" not in seen
    assert "CompleteMultipartUpload" in seen and "PutObject" not in seen
    assert storage.sha256_uri(uri) == hashlib.sha256(data).hexdigest()
    assert raw_names(s3_root) == ["big.bin"]


@pytest.mark.parametrize("var", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"])
def test_bad_credentials_fail_clearly_without_retries(s3_root, tmp_path, sleeps, var):
    uri = storage.join(s3_root, "k.txt")
    storage.write_text(uri, "v")
    src = tmp_path / "f.bin"
    src.write_bytes(b"f")
    os.environ[var] = "WRONG" + os.environ[var][5:]  # s3_env restores it; no cache clear needed
    for call in (lambda: storage.read_bytes(uri), lambda: storage.write_text(uri, "x"),
                 lambda: storage.put_file(str(src), uri), lambda: storage.list_uris(s3_root),
                 lambda: storage.exists(uri), lambda: tables.read_parquet(uri)):
        with pytest.raises(storage.StorageError) as err:
            call()
        assert not isinstance(err.value, storage.NotFound)
        assert uri in str(err.value) or s3_root in str(err.value)
    assert sleeps == []  # permanent: never retried


# ---------------------------------------------------------------- retries (fault injection)

def client_error(code: str, status: int = 503) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"injected {code}"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "Injected")


class Flaky:
    """The real client, except that each named method first raises its queued errors."""

    def __init__(self, client, errors: dict[str, list[Exception]]):
        self._client, self._errors = client, {k: list(v) for k, v in errors.items()}
        self.calls: dict[str, int] = {}

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if name not in self._errors:
            return attr

        def call(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            if self._errors[name]:
                raise self._errors[name].pop(0)
            return attr(*args, **kwargs)
        return call


def inject(monkeypatch, **errors: list[Exception]) -> Flaky:
    flaky = Flaky(storage.s3_client(), errors)
    monkeypatch.setattr(storage, "s3_client", lambda: flaky)
    return flaky


def test_transient_errors_are_retried_with_backoff(s3_root, monkeypatch, sleeps):
    uri = storage.join(s3_root, "r.bin")
    storage.write_bytes(uri, b"payload")
    flaky = inject(monkeypatch, get_object=[client_error("SlowDown"), client_error("InternalError", 500),
                                            EndpointConnectionError(endpoint_url="http://x")])
    assert storage.read_bytes(uri) == b"payload" and flaky.calls["get_object"] == 4
    assert len(sleeps) == 3 and sleeps[0] < sleeps[1] < sleeps[2]  # exponential


def test_transient_errors_on_write_and_upload(s3_root, monkeypatch, sleeps, tmp_path):
    uri = storage.join(s3_root, "w.bin")
    wrapped = S3UploadFailedError("Failed to upload")
    wrapped.__context__ = client_error("SlowDown")  # as upload_file raises it: inside `except ClientError`
    flaky = inject(monkeypatch, put_object=[EndpointConnectionError(endpoint_url="http://x"),
                                            client_error("SlowDown")], upload_file=[wrapped])
    storage.write_bytes(uri, b"one")
    src = tmp_path / "f.bin"
    src.write_bytes(b"two")
    storage.put_file(str(src), storage.join(s3_root, "f.bin"))
    assert flaky.calls == {"put_object": 3, "upload_file": 2} and len(sleeps) == 3
    assert storage.read_bytes(uri) == b"one"
    assert raw_names(s3_root) == ["f.bin", "w.bin"]


def test_permanent_error_is_not_retried(s3_root, monkeypatch, sleeps):
    uri = storage.join(s3_root, "p.bin")
    flaky = inject(monkeypatch, get_object=[client_error("AccessDenied", 403)])
    with pytest.raises(storage.StorageError, match="AccessDenied") as err:
        storage.read_bytes(uri)
    assert uri in str(err.value) and flaky.calls["get_object"] == 1 and sleeps == []


def test_retries_give_up_with_storage_error(s3_root, monkeypatch, sleeps):
    monkeypatch.setattr(storage, "RETRIES", 2)
    uri = storage.join(s3_root, "g.bin")
    flaky = inject(monkeypatch, get_object=[client_error("SlowDown")] * 10)
    with pytest.raises(storage.StorageError, match="SlowDown") as err:
        storage.read_bytes(uri)
    assert uri in str(err.value) and flaky.calls["get_object"] == 3 and len(sleeps) == 2


def test_a_failed_write_leaves_the_object_as_it_was(s3_root, monkeypatch, sleeps):
    """An S3 write is one PUT under the object's own key (never a temporary and a copy)."""
    uri = storage.join(s3_root, "c.bin")
    storage.write_bytes(uri, b"old")
    flaky = inject(monkeypatch, put_object=[client_error("AccessDenied", 403)], copy_object=[], copy=[])
    with pytest.raises(storage.StorageError, match="AccessDenied"):
        storage.write_bytes(uri, b"never committed")
    assert storage.read_bytes(uri) == b"old" and raw_names(s3_root) == ["c.bin"]
    storage.write_bytes(uri, b"new")
    assert storage.read_bytes(uri) == b"new" and "copy_object" not in flaky.calls


def test_a_failed_multipart_upload_shows_nothing(s3_root, monkeypatch, sleeps, tmp_path):
    monkeypatch.setattr(storage, "MULTIPART_BYTES", 5 << 20)  # S3's smallest part
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(11 << 20))
    parts = []

    def fail_third_part(**_):
        parts.append(1)
        if len(parts) == 3:
            raise client_error("AccessDenied", 403)
    events = storage.s3_client().meta.events
    events.register("before-call.s3.UploadPart", fail_third_part)
    try:
        with pytest.raises(storage.StorageError, match="AccessDenied"):
            storage.put_file(str(src), storage.join(s3_root, "big.bin"))
    finally:
        events.unregister("before-call.s3.UploadPart", fail_third_part)
    assert raw_names(s3_root) == []
    bucket, key = storage.split_s3(s3_root)
    assert not storage.s3_client().list_multipart_uploads(Bucket=bucket, Prefix=key + "/").get("Uploads")  # aborted
    storage.put_file(str(src), storage.join(s3_root, "big.bin"))
    assert storage.read_bytes(storage.join(s3_root, "big.bin")) == src.read_bytes()


def test_unreachable_endpoint_is_retried_then_reported(s3_root, monkeypatch, sleeps):
    import botocore.endpoint

    monkeypatch.setattr(botocore.endpoint, "time", storage.time)  # botocore's own retries: no real sleep
    monkeypatch.setattr(storage, "RETRIES", 2)
    os.environ["OVPIPE_S3_ENDPOINT"] = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens
    uri = storage.join(s3_root, "u.bin")
    with pytest.raises(storage.StorageError, match="OVPIPE_S3_ENDPOINT") as err:
        storage.read_bytes(uri)
    assert uri in str(err.value)
    assert len(sleeps) >= 2  # ours (RETRIES=2), plus botocore's own


class _Flaky:
    """An S3 client whose bodies break off after `chunk` bytes (their Content-Length promises more);
    ranged GETs are honoured, as a server does. chunk=0: every body is empty."""

    def __init__(self, data: bytes, chunk: int):
        self.data, self.chunk, self.ranges = data, chunk, []

    def get_object(self, Bucket, Key, Range=None, IfMatch=None):
        start = int(Range[len("bytes="):].split("-")[0]) if Range else 0
        self.ranges.append(start)
        rest = self.data[start:]
        return {"Body": StreamingBody(io.BytesIO(rest[:self.chunk]), len(rest)), "ContentLength": len(rest),
                "ETag": '"e1"'}


def test_broken_stream_resumes_from_its_offset(s3_root, monkeypatch):
    """A body that breaks off is asked for again from where it stopped: the bytes are whole and right."""
    data = bytes(range(256)) * 40
    flaky = _Flaky(data, chunk=1000)
    monkeypatch.setattr(storage, "s3_client", lambda: flaky)
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    uri = storage.join(s3_root, "t.bin")
    assert storage.read_bytes(uri) == data
    assert flaky.ranges == list(range(0, len(data), 1000))  # each resume starts at the next byte


def test_stream_that_keeps_failing_is_an_error(s3_root, monkeypatch):
    """A body shorter than its Content-Length, again and again, must fail, not hash a partial object."""
    monkeypatch.setattr(storage, "s3_client", lambda: _Flaky(b"x" * 100, chunk=0))
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    with pytest.raises(storage.StorageError, match="t.bin.*stream failed at byte 0 of 100"):
        storage.sha256_uri(storage.join(s3_root, "t.bin"))


# ---------------------------------------------------------------- the local S3 server itself

def test_busy_port_fails_fast_with_weeds_log(tmp_path):
    from ovpipe.s3server import S3ServerError, SeaweedS3

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))  # bound is enough for weed to refuse it (no listen: no 2 s read timeout)
        with pytest.raises(S3ServerError, match="not available") as err:
            SeaweedS3(tmp_path, port=busy.getsockname()[1], startup_timeout=20).start()
    assert "weed.log" in str(err.value)


def test_cli_run_starts_a_second_server_and_passes_the_exit_code(seaweed):
    """`python -m ovpipe.s3server run -- CMD` beside the session's server: own ports, own bucket."""
    code = ("import os, sys; from ovpipe import storage;"
            "assert os.environ['OVPIPE_S3_ENDPOINT'] != sys.argv[1];"
            "storage.write_text('s3://ovpipe/x.txt', 'hi'); assert storage.read_text('s3://ovpipe/x.txt') == 'hi';"
            "assert storage.list_uris('s3://extra/') == []; sys.exit(3)")
    proc = subprocess.run([sys.executable, "-m", "ovpipe.s3server", "run", "--bucket", "ovpipe", "--bucket",
                           "extra", "--", sys.executable, "-c", code, seaweed.endpoint],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr


def test_delete_tree_removes_one_folder_and_nothing_beside_it(root):
    for name in ("a/1.bin", "a/sub/2.bin", "ab/3.bin", "b.bin"):
        storage.write_bytes(storage.join(root, name), b"x")
    storage.delete_tree(storage.join(root, "a"))
    assert [n for n in raw_names(root)] == ["ab/3.bin", "b.bin"]
    storage.delete_tree(storage.join(root, "missing"))  # nothing there: nothing to do
