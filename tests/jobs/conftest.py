"""Fixtures for job tests: one local Ray per test module, fixed size, capped object store."""

import os

import pytest
import ray


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
    auto`` would score small ones in the driver); tests/jobs/scan/test_scan_local.py runs the
    local path by asking for it."""
    monkeypatch.setattr("jobs.scan.pipeline.LOCAL_MAX_OBJECTS", 0)


