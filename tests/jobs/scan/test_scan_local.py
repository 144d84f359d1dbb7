"""``--executor local``: small scans in the driver give the same report as Ray Data, with
its fetching in the scoring actors (the CPU default) or in separate tasks (``--fetch tasks``).

    .venv/bin/python -m pytest tests/jobs/scan/test_scan_local.py -q
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.report import store as report_store
from jobs.scan import ScanConfig, run
from jobs.scan.pipeline import LOCAL_MAX_OBJECTS, choose_executor
from tests.corpus import ERROR
from tests.helpers import make_input, save_model

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def scans(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("local")
    model = save_model(root / "model")
    expected = make_input(root / "input")
    out = {}
    for name, executor, fetch in (("local", "local", "auto"), ("ray", "ray", "auto"), ("ray-tasks", "ray", "tasks")):
        config = ScanConfig(input=str(root / "input"), model=str(model), output=str(root / name),
                            batch_size=4, rows_per_file=5, executor=executor, scan_id=f"s-{name}", fetch=fetch,
                            runtime="torch")  # compared to 1e-5 below; OpenVINO agreement: tests/detector
        out[name] = run(config)
    return expected, out


def _rows(summary) -> dict[str, dict]:
    table = pq.read_table(summary.report)
    return {r["uri"]: r for r in table.to_pylist()}


@pytest.mark.parametrize("other", ["ray", "ray-tasks"])
def test_local_and_ray_data_reports_agree_row_for_row(scans, other):
    expected, out = scans
    local, ray_data = out["local"], out[other]
    assert (local.executor, ray_data.executor) == ("local", "ray")
    assert (local.listed, local.scored, local.errors) == (ray_data.listed, ray_data.scored, ray_data.errors)
    assert local.listed == len(expected) and local.errors == sum(v == ERROR for v in expected.values())
    a, b = _rows(local), _rows(ray_data)
    assert a.keys() == b.keys() and len(a) == len(expected)
    for uri, row in a.items():
        other = b[uri]
        for column in ("etag", "size_bytes", "width", "height", "format", "label", "flagged", "error", "model_version"):
            assert row[column] == other[column], (uri, column)
        if row["error"] is None:
            assert row["score"] == pytest.approx(other["score"], abs=1e-5)
            np.testing.assert_allclose(row["cam"], other["cam"], atol=1e-5)
            assert row["thumbnail"] and row["thumbnail"].startswith(b"\xff\xd8")
        else:
            assert row["score"] is None and row["thumbnail"] is None


def test_local_scan_writes_part_files_of_rows_per_file_and_publishes(scans):
    expected, out = scans
    local = out["local"]
    n = len(expected)
    names = [f.rsplit("/", 1)[-1] for f in local.files]
    assert names == [f"part-{i:05d}.parquet" for i in range((n + 4) // 5)]
    sizes = [pq.ParquetFile(f"{local.report}/{f}").metadata.num_rows for f in names]
    assert sizes == [5] * (n // 5) + ([n % 5] if n % 5 else [])
    assert report_store.open_reports(str(Path(local.report).parents[1])).to_table().num_rows == n


def test_auto_scores_small_cpu_scans_locally_and_the_rest_on_ray_data(monkeypatch):
    monkeypatch.setattr("jobs.scan.pipeline.LOCAL_MAX_OBJECTS", LOCAL_MAX_OBJECTS)  # undo the conftest default
    assert choose_executor("auto", LOCAL_MAX_OBJECTS, use_gpu=False) == "local"
    assert choose_executor("auto", LOCAL_MAX_OBJECTS + 1, use_gpu=False) == "ray"
    assert choose_executor("auto", 1, use_gpu=True) == "ray"
    assert choose_executor("ray", 1, use_gpu=False) == "ray"
    with pytest.raises(ValueError, match="--executor must be one of auto, ray, local"):
        ScanConfig(input="in", model="m", output="o", executor="spark")


def test_a_small_scan_from_the_command_line_starts_no_ray(tmp_path):
    model = save_model(tmp_path / "model")
    make_input(tmp_path / "input")
    job = subprocess.run(
        [sys.executable, "-m", "jobs.scan", "--input", str(tmp_path / "input"), "--model", str(model),
         "--output", str(tmp_path / "reports"), "--max-error-fraction", "1"],  # the corpus has error rows
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
    assert ", local); report" in job.stdout
    assert "Started a local Ray instance" not in job.stdout + job.stderr
