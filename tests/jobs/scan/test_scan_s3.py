"""The scan job against a real S3 server (SeaweedFS on loopback): bucket to bucket,
incremental scans, and ``ray job submit`` to a local head node.

    .venv/bin/python -m pytest tests/jobs/test_scan_s3.py -q
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pytest
from PIL import Image

from jobs import storage
from jobs.report import store as report_store
from jobs.report.schema import partitioning
from jobs.scan import ScanConfig, run
from tests.helpers import save_model, use_s3_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]


def jpeg(seed: int, size=(72, 56)) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, 20 + seed).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def s3(s3_server, request):
    """AWS_* pointing at the server *before* the module's Ray starts, so that its worker
    processes inherit them (as on a cluster whose nodes have the credentials)."""
    patch = pytest.MonkeyPatch()
    use_s3_server(s3_server, patch)
    request.getfixturevalue("ray_local")
    yield s3_server
    patch.undo()


@pytest.fixture(scope="module")
def buckets(s3, tmp_path_factory):
    suffix = uuid.uuid4().hex[:8]
    names = {kind: s3.create_bucket(f"{kind}-{suffix}") for kind in ("uploads", "reports", "models")}
    model = save_model(tmp_path_factory.mktemp("model"))
    storage.upload_dir(model, storage.join(names["models"], "detector-v1"))
    names["model"] = storage.join(names["models"], "detector-v1")
    return names


def put(uri: str, data: bytes) -> None:
    storage.write_bytes(uri, data)


def test_bucket_to_bucket_with_a_corrupt_object(buckets):
    prefix = storage.join(buckets["uploads"], "photos")
    for i in range(5):
        put(storage.join(prefix, f"2026/img_{i}.jpg"), jpeg(i))
    put(storage.join(prefix, "2026/corrupt.jpg"), jpeg(9)[:150])
    put(storage.join(prefix, "notes.txt"), b"not an image")
    output = storage.join(buckets["reports"], "scans")
    config = ScanConfig(input=prefix, model=buckets["model"], output=output, batch_size=4)
    summary = run(config)
    assert (summary.listed, summary.scored, summary.errors) == (6, 5, 1)
    assert summary.report == storage.join(output, f"scan_date={summary.scan_date}", f"scan_id={summary.scan_id}")
    df = report_store.open_reports(output).to_table().to_pandas()
    assert sorted(df["uri"]) == sorted([storage.join(prefix, f"2026/img_{i}.jpg") for i in range(5)]
                                       + [storage.join(prefix, "2026/corrupt.jpg")])
    bad = df[df["uri"].str.endswith("corrupt.jpg")].iloc[0]
    assert bad["error"].startswith("decode:") and pd.isna(bad["label"]) and pd.isna(bad["score"])
    assert df["etag"].notna().all() and (df["size_bytes"] > 0).all()
    # Plain pyarrow and DuckDB over the bucket, through the endpoint-aware filesystem.
    fs, path = storage.pyarrow_filesystem(output)
    table = ds.dataset(path, filesystem=fs, format="parquet", partitioning=partitioning()).to_table()
    assert table.num_rows == 6
    published = report_store.open_reports(output)  # noqa: F841 (DuckDB reads the variable by name)
    [(fakes,)] = duckdb.connect().sql("SELECT count(*) FROM published WHERE label = 'fake'").fetchall()
    assert fakes == summary.flagged
    # An incremental scan of the same objects retries only the failed one.
    again = run(ScanConfig(input=prefix, model=buckets["model"], output=output, mode="incremental"))
    assert (again.listed, again.skipped, again.scored, again.errors) == (6, 5, 0, 1)


def test_incremental_scores_exactly_the_new_and_changed_objects(buckets):
    prefix = storage.join(buckets["uploads"], "daily")
    output = storage.join(buckets["reports"], "incremental")
    for i in range(5):
        put(storage.join(prefix, f"p{i}.jpg"), jpeg(i))
    config = ScanConfig(input=prefix, model=buckets["model"], output=output, mode="incremental", batch_size=4,
                        thumbnails="none")
    first = run(config)
    assert (first.listed, first.skipped, first.scored) == (5, 0, 5)
    new = [storage.join(prefix, f"new/n{i}.png") for i in range(3)]
    for i, uri in enumerate(new):
        buf = io.BytesIO()
        Image.effect_noise((40, 40), 30 + i).convert("RGB").save(buf, format="PNG")
        put(uri, buf.getvalue())
    changed = storage.join(prefix, "p2.jpg")
    put(changed, jpeg(2, size=(64, 64)))  # new content: new etag
    second = run(config)
    assert (second.listed, second.skipped, second.scored, second.errors) == (8, 4, 4, 0)
    df = report_store.open_reports(output).to_table().to_pandas()
    assert sorted(df.loc[df["scan_id"] == second.scan_id, "uri"]) == sorted([*new, changed])
    # Nothing changed since: nothing to score, and the (empty) scan is still published.
    third = run(config)
    assert (third.listed, third.skipped, third.scored) == (8, 8, 0)
    markers = {m["scan_id"]: m for m in report_store.published_scans(output)}
    assert markers[third.scan_id]["rows"] == 0 and markers[third.scan_id]["files"] == []
    assert len(report_store.open_reports(output).to_table()) == 9


# -- ray job submit to a local head node -----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalHead:
    """``ray start --head --block`` in its own process group with its own ports and temp
    dir; stop() ends that group (never ``ray stop``: other Ray clusters run here)."""

    def __init__(self, temp_dir: Path, env: dict[str, str]):
        self.temp_dir, self.dashboard_port = temp_dir, free_port()
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, **env, "RAY_AUTH_MODE": "disabled", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        ports = {flag: free_port() for flag in (
            "--port", "--ray-client-server-port", "--node-manager-port", "--object-manager-port",
            "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
            "--metrics-export-port")}
        self.command = [
            str(Path(bin_dir) / "ray"), "start", "--head", "--block", "--num-cpus", "2",
            "--node-ip-address", "127.0.0.1", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(self.dashboard_port), "--temp-dir", str(temp_dir),
            "--object-store-memory", str(256 * 1024 * 1024), "--disable-usage-stats",
            *[str(x) for item in ports.items() for x in item],
        ]
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, timeout_s: float = 120) -> None:
        self.temp_dir.mkdir(parents=True)
        self.log = open(self.temp_dir / "head.log", "wb")
        self.process = subprocess.Popen(self.command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.temp_dir / "head.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"the Ray head's dashboard did not answer at {self.address}")

    def stop(self) -> None:
        if self.process is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        self._kill_leftovers()
        self.log.close()

    def _kill_leftovers(self) -> None:
        """Processes of this head that left its process group, found by its own temp dir."""
        marker = str(self.temp_dir).encode()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(int(pid), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


def test_ray_job_submit_to_a_local_head_node(buckets, s3):
    prefix = storage.join(buckets["uploads"], "submitted")
    for i in range(4):
        put(storage.join(prefix, f"s{i}.jpg"), jpeg(i))
    output = storage.join(buckets["reports"], "submitted")
    temp_dir = Path(f"/tmp/rayscan-{uuid.uuid4().hex[:8]}")  # short: Ray's socket paths must be < 108 bytes
    head = LocalHead(temp_dir, s3.env())
    try:
        head.start()
        submit = [
            str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", head.address,
            "--working-dir", ".",  # as documented; Ray leaves out what .gitignore names (.venv)
            "--", "python", "-m", "jobs.scan", "--input", prefix, "--model", buckets["model"],
            "--output", output, "--scan-id", "submitted-1", "--batch-size", "4", "--executor", "ray",
        ]
        done = subprocess.run(submit, env=head.env, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        assert "scan submitted-1: listed 4, skipped 0, scored 4" in done.stdout
    finally:
        head.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
    [marker] = report_store.published_scans(output)
    assert (marker["scan_id"], marker["rows"], marker["errors"]) == ("submitted-1", 4, 0)
