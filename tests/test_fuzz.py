"""Fuzzing (hypothesis): the readers, the image decoder, the conversation parser and the recipe loader take
any input and answer with samples, counted rejects, a shard error or a ConfigError — never another
exception. OVPIPE_FUZZ_EXAMPLES sets the examples per test (default 150; `make verify` runs more) and
OVPIPE_VERIFY_DIR, when set, receives how many inputs each test tried."""
from __future__ import annotations

import io
import json
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ovpipe.config import ConfigError, load_recipe
from ovpipe.data.images import decode_image
from ovpipe.data.shards import Sample, ShardReport, iter_samples
from ovpipe.packing.datasets import SampleError, sample_turns
from ovpipe.verify.badinput import good_image
from tests.helpers import TINY

EXAMPLES = int(os.environ.get("OVPIPE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TRIED: dict[str, int] = {}


def _tried(name: str) -> None:
    TRIED[name] = TRIED.get(name, 0) + 1
    out = os.environ.get("OVPIPE_VERIFY_DIR")
    if out:
        with open(os.path.join(out, "fuzz.json"), "w") as f:
            json.dump(TRIED, f)


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


import numpy as np  # noqa: E402  (after the helpers: only the seeds below need it)

_RNG = np.random.default_rng(0)
_IMAGES = [good_image(_RNG, fmt, 24, 16) for fmt in ("jpg", "png", "webp")]
_BASE_TAR = _tar([(f"k{i}.{ext}", data) for i in range(4) for ext, data in
                  (("jpg", _IMAGES[0]), ("txt", b"a red circle"), ("json", b'{"a": 1}'))])

names = st.from_regex(r"[a-z0-9/._-]{1,20}", fullmatch=True)
members = st.lists(st.tuples(names, st.binary(max_size=300)), max_size=12)


def _check_samples(path: str) -> None:
    report = ShardReport(path)
    good = []
    for s in iter_samples(path, report):
        assert isinstance(s, Sample) and isinstance(s.key, str)
        assert s.error is None or (isinstance(s.error[0], str) and isinstance(s.error[1], str))
        if s.error is None:
            assert s.image is not None
            good.append(s.key)
    assert len(good) == len(set(good)), "a key reached the output twice"


@FUZZ
@given(data=st.one_of(members.map(_tar), st.binary(max_size=3000),
                      st.tuples(st.integers(0, len(_BASE_TAR)), st.binary(max_size=64), st.integers(0, 64)).map(
                          lambda t: _BASE_TAR[:t[0]] + t[1] + _BASE_TAR[t[0] + t[2]:])))
def test_tar_reader_takes_any_bytes(tmp_path_factory, data):
    _tried("tar shards")
    path = tmp_path_factory.mktemp("tar") / "x.tar"
    path.write_bytes(data)
    _check_samples(str(path))


cells = st.one_of(st.none(), st.binary(max_size=40), st.text(max_size=20), st.integers(-2**63, 2**63 - 1),
                st.sampled_from(_IMAGES))


@FUZZ
@given(columns=st.dictionaries(st.sampled_from(["id", "image", "caption", "json", "conversations", "other"]),
                               st.lists(cells, min_size=3, max_size=3), max_size=5),
       raw=st.booleans())
def test_parquet_reader_takes_any_table(tmp_path_factory, columns, raw):
    _tried("parquet shards")
    path = tmp_path_factory.mktemp("pq") / "x.parquet"
    if raw:
        path.write_bytes(b"PAR1" + json.dumps(list(columns)).encode() + b"PAR1")
    else:
        arrays = {}
        for name, values in columns.items():
            kinds = {type(v) for v in values if v is not None}
            if len(kinds) > 1:  # parquet columns have one type: keep the first kind's values
                first = next(type(v) for v in values if v is not None)
                values = [v if isinstance(v, first) else None for v in values]
            arrays[name] = pa.array(values)
        pq.write_table(pa.table(arrays) if arrays else pa.table({"x": [1, 2, 3]}), path)
    _check_samples(str(path))


@FUZZ
@given(base=st.sampled_from(_IMAGES), at=st.integers(0, 2000), junk=st.binary(max_size=50), cut=st.integers(0, 2000))
def test_decoder_never_raises(base, at, junk, cut):
    _tried("images")
    data = (base[:at] + junk + base[at + len(junk):])[:max(cut, 1)]
    image, err = decode_image(data)
    assert (image is None) != (err is None)


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                                     st.sampled_from(["<image>", "user", "assistant", "human", "gpt", "system"])),
                           lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(st.sampled_from(
                                                       ["conversation", "conversations", "messages", "role",
                                                        "content", "from", "value"]), inner, max_size=4)),
                           max_leaves=20)


@FUZZ
@given(meta=json_values, n_images=st.integers(0, 2), dataset=st.sampled_from(["stage1", "sft"]))
def test_conversation_parser_rejects_with_a_reason(meta, n_images, dataset):
    _tried("conversations")
    members = {"json": json.dumps(meta).encode()}
    members.update({f"{i}.jpg": _IMAGES[0] for i in range(n_images)})
    try:
        turns, images = sample_turns(Sample(key="k", members=members, image=_IMAGES[0] if n_images else None), dataset)
    except SampleError as exc:
        assert exc.reason and exc.detail
        return
    assert any(t["role"] == "assistant" for t in turns) and len(images) == n_images


with open(TINY) as _f:
    _TINY = yaml.safe_load(_f)


def _paths(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out += _paths(v, prefix + k + ".")
    return out


_KEYS = _paths(_TINY) + ["nonsense", "data.nonsense", "train.stage1.nonsense"]
values = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                   st.text(max_size=30), st.lists(st.integers(), max_size=3),
                   st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


@FUZZ
@given(changes=st.lists(st.tuples(st.sampled_from(_KEYS), values), min_size=1, max_size=4))
def test_recipe_loader_answers_with_a_recipe_or_a_config_error(tmp_path_factory, changes):
    _tried("recipes")
    overrides = {key: value for key, value in changes}
    try:
        load_recipe(TINY, overrides)
    except ConfigError as exc:
        assert "recipe " in str(exc)


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_recipe_loader_takes_any_text(tmp_path_factory, text):
    _tried("recipes")
    path = tmp_path_factory.mktemp("recipe") / "r.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        load_recipe(str(path))
    except ConfigError:
        pass
