"""What is deleted and published under a report root, when its files were tampered with
or two runs share a scan id.

    .venv/bin/python -m pytest tests/jobs/report/test_hostile_store.py -q
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from datetime import date

import pyarrow.parquet as pq
import pytest

from jobs.report import store as report_store
from jobs.report.lease import ScanLease
from jobs.scan import main
from tests.helpers import save_model, small_images

DAY = date(2026, 1, 1)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("model") / "m", image_size=32)


def victim(tmp_path, name="victim"):
    """A folder next to the report root with the shape a crafted marker aims at."""
    target = tmp_path / name / "scan_id=X"
    target.mkdir(parents=True)
    (target / "precious.txt").write_text("keep me")
    return target


@pytest.mark.parametrize("where", ["marker", "intent"])
@pytest.mark.parametrize("report", [
    "scan_date=2026-01-01/../../victim/scan_id=X",
    "scan_date=2026-01-01/../scan_date=2026-01-02/../../victim/scan_id=X",
    "../victim/scan_id=X",
    "scan_date=..%2f..%2fvictim/scan_id=X",
    "scan_date=2026-13-45/scan_id=X",
    "/abs/scan_id=X",
    ["not", "a", "string"],
])
def test_a_crafted_marker_or_intent_never_chooses_what_is_deleted(tmp_path, where, report):
    out = tmp_path / "out"
    (out / "scan_date=2026-01-01").mkdir(parents=True)  # a real earlier day, so `..` resolves
    target = victim(tmp_path)
    loc = report_store.ScanLocation(str(out), "X", DAY)
    crafted = {"format": 1, "scan_id": "X", "report": report}
    path = out / "_scans" / "X.json" if where == "marker" else out / "_staging" / "X" / "publishing.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(crafted))
    report_store.publish(loc, [], {"rows": 0})
    assert (target / "precious.txt").read_text() == "keep me"
    assert json.loads((out / "_scans" / "X.json").read_text())["report"] == "scan_date=2026-01-01/scan_id=X"


def test_markers_naming_files_outside_the_root_are_not_read(tmp_path):
    out = tmp_path / "out"
    (out / "_scans").mkdir(parents=True)
    for i, files in enumerate([["../../etc/passwd"], ["scan_date=2026-01-01/scan_id=a/../../../x.parquet"],
                               "scan_date=2026-01-01/scan_id=a/part-0.parquet"]):
        marker = {"format": 1, "scan_id": "a", "scan_date": "2026-01-01", "report": "scan_date=2026-01-01/scan_id=a",
                  "files": files}
        (out / "_scans" / f"m{i}.json").write_text(json.dumps(marker))
    (out / "_scans" / "nan.json").write_text('{"format": 1, "threshold": NaN')
    with pytest.warns(UserWarning, match="4 scan markers are malformed"):
        assert report_store.published_scans(str(out)) == []


def scan_argv(model, inp, out, *extra):
    return ["--input", str(inp), "--model", str(model), "--output", str(out), "--executor", "local",
            "--scan-id", "same", "--thumbnails", "none", *extra]


def test_a_second_live_run_of_a_scan_id_is_refused_and_the_first_publishes_whole(model, tmp_path, capsys):
    first, second = small_images(tmp_path / "a", 3, "a"), small_images(tmp_path / "b", 2, "b")
    out = tmp_path / "out"
    loc = report_store.ScanLocation(str(out), "same", DAY)
    lease = ScanLease(loc.staging_uri, "same", loc.attempt)
    lease.acquire()  # the first run, alive, mid-scan
    staged = small_images(tmp_path / loc.staged_data_uri, 1, "mine")[0]  # what it staged so far
    try:
        assert main(scan_argv(model, tmp_path / "b", out)) == 6
        assert "scan id same is in use" in capsys.readouterr().err
        assert staged.exists()  # the refused run deleted nothing of the first one's
        assert not (out / "_scans" / "same.json").exists()
    finally:
        lease.release()
    assert main(scan_argv(model, tmp_path / "a", out)) == 0  # released: the id is free again
    marker = json.loads((out / "_scans" / "same.json").read_text())
    assert sorted(r["uri"] for r in pq.read_table(out / marker["report"]).to_pylist()) == sorted(map(str, first))
    assert not any(str(p) in str(marker) for p in second)


def test_a_dead_runs_lease_is_taken_over_at_once(model, tmp_path):
    small_images(tmp_path / "a", 2)
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    loc = report_store.ScanLocation(str(out), "same", DAY)
    os.makedirs(loc.staging_uri)
    with open(os.path.join(loc.staging_uri, "lease.json"), "w") as f:  # a killed run's, renewed just now
        json.dump({"attempt": "attempt-dead", "host": socket.gethostname(), "pid": int(dead.stdout),
                   "renewed_at": time.time()}, f)
    assert main(scan_argv(model, tmp_path / "a", out)) == 0
    assert not (out / "_staging").exists()


def test_attempts_stage_apart(tmp_path):
    a = report_store.ScanLocation(str(tmp_path), "same", DAY)
    b = report_store.ScanLocation(str(tmp_path), "same", DAY)
    assert a.staged_data_uri != b.staged_data_uri and a.staging_uri == b.staging_uri
    small_images(tmp_path / a.staged_data_uri, 1)
    report_store.clear_staging_data(b)  # the second run's clean-up
    assert os.listdir(a.staged_data_uri)


def test_a_full_disk_is_one_line_exit_5_and_leaves_no_partial_file(model, tmp_path, monkeypatch, capsys):
    small_images(tmp_path / "in", 2)

    def full(tables, loc, **kw):
        os.makedirs(loc.staged_data_uri, exist_ok=True)
        with open(os.path.join(loc.staged_data_uri, "part-00000.parquet"), "wb") as f:
            f.write(b"PAR1 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report_store, "write_staged_tables", full)
    assert main(scan_argv(model, tmp_path / "in", tmp_path / "out")) == 5
    err = capsys.readouterr().err
    [line] = [x for x in err.splitlines() if not x.startswith("listing ")]  # one line besides progress
    assert line.startswith("scan failed: cannot write under") and "No space left" in line and "Traceback" not in err
    assert not (tmp_path / "out" / "_staging").exists()


def test_a_local_scan_leaves_no_staging_folder(model, tmp_path):
    small_images(tmp_path / "in", 2)
    assert main(scan_argv(model, tmp_path / "in", tmp_path / "out")) == 0
    assert not (tmp_path / "out" / "_staging").exists()
