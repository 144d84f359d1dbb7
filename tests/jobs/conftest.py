"""Fixtures for job tests: one local Ray per test module, fixed size, capped object store."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import ray

from jobs.s3_server import SeaweedS3Server
from tests.conftest import use_s3_server


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 2 CPUs and a 256 MiB object store, shared by a test module."""
    if ray.is_initialized():
        ray.shutdown()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        num_cpus=2,
        object_store_memory=256 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def scans_use_ray_data(monkeypatch):
    """Scans in these tests take the Ray Data path whatever their size (``--executor
    auto`` would score small ones in the driver); tests/jobs/test_scan_local.py runs the
    local path by asking for it."""
    monkeypatch.setattr("jobs.scan.LOCAL_MAX_OBJECTS", 0)


@contextmanager
def s3_server_before_ray(data_dir: Path, request: pytest.FixtureRequest, **server: Any) -> Iterator[SeaweedS3Server]:
    """A module's own S3 server (``server``: SeaweedS3Server options), its AWS_* set before
    the module's Ray starts so that Ray's workers inherit them, as a cluster's nodes would;
    unset and stopped afterwards. For modules that restart the server or need their own
    credentials; others share the session's ``s3_server``."""
    s3 = SeaweedS3Server(data_dir, **server).start()
    patch = pytest.MonkeyPatch()
    try:
        use_s3_server(s3, patch)
        request.getfixturevalue("ray_local")
        yield s3
    finally:
        patch.undo()
        s3.stop()
