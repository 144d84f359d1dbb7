"""Fixtures shared by every test package.

- ``s3_server``: one real SeaweedFS S3 server on loopback for the whole session
  (started on first use, about 1 s; stopped at the end). It changes no global state.
- ``s3_env``: points the AWS_* variables at that server for one test, so that
  jobs.storage, boto3 and pyarrow talk to it. Make a bucket per test, e.g.
  ``s3_server.create_bucket(f"t-{uuid.uuid4().hex[:12]}")``. For Ray workers pass
  ``runtime_env={"env_vars": s3_server.env()}`` (they do not see monkeypatched vars).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from jobs.demo.s3_server import SeaweedS3Server
from tests.helpers import use_s3_server


@pytest.fixture(scope="session", autouse=True)
def genscan_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Converted networks (detector.backends) go to a temporary folder, not ~/.cache; set
    before any Ray starts, so its workers inherit it."""
    old = os.environ.get("GENSCAN_CACHE")
    os.environ["GENSCAN_CACHE"] = str(tmp_path_factory.mktemp("genscan-cache"))
    yield
    if old is None:
        os.environ.pop("GENSCAN_CACHE", None)
    else:
        os.environ["GENSCAN_CACHE"] = old


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3Server]:
    """A started SeaweedS3Server; data and its weed.log under pytest's temp folder."""
    with SeaweedS3Server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_env(s3_server: SeaweedS3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The AWS_* variables of ``s3_server``, set for this test only (others removed)."""
    return use_s3_server(s3_server, monkeypatch)
