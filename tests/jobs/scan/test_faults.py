"""Real faults during a scan, each followed by a check that every image has exactly one
row and that the counts say so:

- a scoring actor's process SIGKILLed mid-scan (Ray Data restarts the actor and retries
  its batch: map_batches' actors default to max_restarts=-1, max_task_retries=-1);
- the S3 server stopped and restarted mid-scan on the same data, ports and credentials
  (jobs.storage, boto3 and pyarrow retry with backoff; the scan then succeeds with no
  error rows);
- the scan driver (``python -m jobs.scan``) SIGKILLed once staging has begun, then the
  same --scan-id re-run: nothing of the killed attempt is visible, the re-run is whole.

A training worker killed mid-run is tests/jobs/train/test_train.py's (resume from checkpoint).

    .venv/bin/python -m pytest tests/jobs/scan/test_faults.py -q
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import ray
from PIL import Image

from jobs import storage
from jobs.report import store as report_store
from jobs.scan import ScanConfig, main, run
from tests.helpers import s3_server_before_ray, save_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
N_IMAGES = 48


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((40, 32), 10 + seed).convert("RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


@pytest.fixture(scope="module")
def s3(tmp_path_factory, request):
    """This module's own S3 server: the fault test restarts it."""
    with s3_server_before_ray(tmp_path_factory.mktemp("weed"), request) as server:
        yield server


@pytest.fixture(scope="module")
def data(s3, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    for i in range(N_IMAGES):
        path = root / "input" / f"d{i % 4}" / f"img_{i:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg(i))
    return root, save_model(root / "model", image_size=32)


def scoring_actors() -> dict[str, dict]:
    """{actor id: record} of the live Ray Data map actors (the Scorer pool) of this test's
    Ray, from the GCS (ray.util.state needs the dashboard, which ray_local leaves out)."""
    from ray._private import state

    return {i: a for i, a in state.actors().items() if "MapWorker" in a["ActorClassName"] and a["State"] == "ALIVE"}


class Background(threading.Thread):
    """``run(config)`` on a thread, keeping its summary or error."""

    def __init__(self, config: ScanConfig):
        super().__init__(daemon=True)
        self.config, self.summary, self.error = config, None, None

    def run(self) -> None:
        try:
            self.summary = run(self.config)
        except BaseException as e:  # noqa: BLE001 (re-raised by the test)
            self.error = e

    def result(self, timeout_s: float = 240):
        self.join(timeout_s)
        assert not self.is_alive(), "the scan did not finish"
        if self.error is not None:
            raise self.error
        return self.summary


def wait_for(predicate, timeout_s: float = 120, every_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(every_s)
    raise TimeoutError(f"{predicate} stayed false for {timeout_s} s")


def assert_one_row_per_image(output: str, scan_id: str, uris: set[str], summary=None) -> None:
    rows = report_store.open_reports(output).to_table(filter=None).to_pylist()
    mine = [r for r in rows if r["scan_id"] == scan_id]
    assert len(mine) == len(uris) and {r["uri"] for r in mine} == uris  # nothing lost, nothing twice
    failed = [(r["uri"], r["error"]) for r in mine if r["error"] is not None or r["score"] is None]
    assert not failed, f"rows not scored: {failed}"
    [marker] = [m for m in report_store.published_scans(output) if m["scan_id"] == scan_id]
    assert (marker["listed"], marker["rows"], marker["scored"], marker["errors"]) == (len(uris), len(uris), len(uris), 0)
    if summary is not None:
        assert (summary.listed, summary.scored, summary.errors) == (len(uris), len(uris), 0)


def test_scoring_actor_killed_mid_scan(data, tmp_path):
    root, model = data
    uris = {str(p) for p in (root / "input").rglob("*.jpg")}
    # runtime torch: slower per batch than OpenVINO on these tiny images, so the scan is
    # still running when the actor dies (with OpenVINO it could finish within the wait)
    scan = Background(ScanConfig(input=str(root / "input"), model=str(model), output=str(tmp_path / "out"),
                                 scan_id="actor-killed", batch_size=2, thumbnails="none", runtime="torch"))
    scan.start()
    [(actor_id, actor)] = wait_for(scoring_actors).items()
    time.sleep(0.2)
    assert scan.is_alive(), "the scan ended before the actor could be killed"
    os.kill(actor["Pid"], signal.SIGKILL)
    summary = scan.result()
    from ray._private import state

    restarted = state.actors(actor_id)
    assert restarted["NumRestarts"] >= 1 and restarted["Pid"] != actor["Pid"], restarted  # a new process
    assert_one_row_per_image(str(tmp_path / "out"), "actor-killed", uris, summary)


def test_s3_server_restarted_mid_scan(data, s3):
    root, model = data
    suffix = uuid.uuid4().hex[:8]
    uploads, reports = s3.create_bucket(f"uploads-{suffix}"), s3.create_bucket(f"reports-{suffix}")
    uris = set()
    for path in (root / "input").rglob("*.jpg"):
        uri = storage.join(uploads, path.relative_to(root / "input").as_posix())
        storage.write_bytes(uri, path.read_bytes())
        uris.add(uri)
    output = storage.join(reports, "scans")
    scan = Background(ScanConfig(input=uploads, model=str(model), output=output, scan_id="s3-restart",
                                 batch_size=2, thumbnails="none"))
    scan.start()
    wait_for(scoring_actors)  # listing is done, fetch tasks and the scorer pool are running
    assert scan.is_alive(), "the scan ended before the server could be restarted"
    s3.restart(down_s=3)  # connections refused for 3 s and while weed starts again
    summary = scan.result()
    assert_one_row_per_image(output, "s3-restart", uris, summary)  # no "fetch: ConnectionError" rows


def test_driver_killed_then_the_scan_id_rerun(data, tmp_path):
    root, model = data
    uris = {str(p) for p in (root / "input").rglob("*.jpg")}
    out = tmp_path / "out"
    argv = ["--input", str(root / "input"), "--model", str(model), "--output", str(out), "--scan-id", "killed",
            "--batch-size", "2", "--rows-per-file", "4", "--thumbnails", "none", "--executor", "ray"]
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "RAY_AUTH_MODE": "disabled"}
    with open(tmp_path / "driver.log", "wb") as log:
        driver = subprocess.Popen([sys.executable, "-m", "jobs.scan", *argv], cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        staging = out / "_staging" / "killed"  # each attempt stages in its own attempt-<hex>/data/
        # 23 s on a quiet machine, up to 180 s beside a training run (a fresh driver, Ray Data and a scoring
        # actor all start on 2 cores): the bound only catches a hang; this test is about the rerun.
        wait_for(lambda: driver.poll() is not None or any(staging.glob("attempt-*/data/*.parquet")), 420)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    # The killed attempt staged files and published nothing.
    assert any(staging.glob("attempt-*/data/*.parquet"))
    assert not (out / "_scans" / "killed.json").exists()
    assert not list(out.glob("scan_date=*/scan_id=killed"))
    assert report_store.open_reports(str(out)).count_rows() == 0
    # Its job's workers are gone before the re-run (as when an operator re-runs later).
    from ray._private import state

    wait_for(lambda: all(j["IsDead"] for j in state.jobs() if j["DriverPid"] == driver.pid), 60, 0.5)
    assert main(argv) == 0
    assert_one_row_per_image(str(out), "killed", uris)
    assert len(list(out.glob("scan_date=*/scan_id=killed"))) == 1
    assert not (out / "_staging" / "killed").exists()
