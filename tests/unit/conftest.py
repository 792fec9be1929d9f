"""Fixtures: a real S3 API (moto's server) for the lake's object-store paths."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def s3_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's S3 server on a free port, with the AWS environment pointing at it; yields a
    boto3 client (no buckets yet)."""
    import boto3
    from airflow.sdk.io import store
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
        monkeypatch.setenv(key, value)
    # ObjectStoragePath keeps one filesystem per protocol, and fsspec caches s3fs instances by
    # their arguments (the endpoint comes from the environment, so not among them): start and
    # end without a stale one pointing at an earlier test's server.
    from s3fs import S3FileSystem

    def forget_filesystems() -> None:
        store._STORE_CACHE.pop("s3", None)
        S3FileSystem.clear_instance_cache()

    forget_filesystems()
    try:
        yield boto3.client("s3")
    finally:
        forget_filesystems()
        server.stop()
