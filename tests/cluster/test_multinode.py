"""A scan on a two-node Ray cluster on this machine, submitted with ``ray job submit``:
its tasks run on both nodes, the worker node is killed mid-scan, and the scan still
publishes exactly one row per image.

    .venv/bin/pytest tests/cluster/test_multinode.py -q

The head (1 CPU) holds the driver; the worker node (2 CPUs) joins it with
``ray start --address``. Each node has its own ports and temp dir, and runs in its own
process group, which the test kills (never ``ray stop``: other Ray clusters run here).
The scan is sized to finish on the head alone, as a cluster without an autoscaler must
after losing a node: one 0.25-CPU scoring actor and 0.5-CPU fetch tasks (``--fetch tasks``,
separate fetch tasks, so that work lands on both nodes). Ray Data's defaults
do the recovery: tasks retry without limit, scoring actors restart, and lost blocks are
rebuilt from lineage.

Measured on the shared 2-core machine: 5 min 12 s at load ~37 (nodes up in 1 min, the
scan from submit to published report in 3.2 min); 8 min 20 s at load ~45, where three node
starts failed and were retried (see START_ATTEMPTS).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.report import store as report_store
from tests.helpers import save_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # node restarts on a loaded machine

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
IMAGES = 300
SCAN_ID = "multinode-1"
# The GCS declares a node dead after `threshold` failed health checks `period` apart
# (default 5 x 3 s); a killed raylet fails each at once, so recovery starts ~5 s after the
# kill. A raylet that is merely slow still has each check's 10 s timeout.
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_health_check_period_ms": "1000",
}
# A raylet aborts when its Python dashboard agent takes over 15 s to start (a fixed wait in
# Ray 2.60: RAY_agent_register_timeout_ms does not change it), and `ray start` gives the node
# 30 s to register: a heavily loaded machine misses both. Such a node is started again.
START_ATTEMPTS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayNode:
    """``ray start --block`` (head, or a node joining ``gcs_address``) in its own process
    group, with its own free ports and temp dir."""

    def __init__(self, temp_dir: Path, *, num_cpus: int, gcs_address: str | None = None):
        self.temp_dir = temp_dir
        self.env = {**os.environ, **RAY_ENV,
                    "PATH": f"{BIN}:{os.environ['PATH']}"}
        flags = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"]
        if gcs_address is None:
            self.gcs_port, self.dashboard_port = free_port(), free_port()
            role = ["--head", "--port", str(self.gcs_port), "--ray-client-server-port", str(free_port()),
                    "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                    "--dashboard-port", str(self.dashboard_port)]
        else:
            role = ["--address", gcs_address]
        self.command = [
            str(BIN / "ray"), "start", "--block", *role, "--num-cpus", str(num_cpus),
            "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir),
            "--object-store-memory", str(128 * 1024**2), "--disable-usage-stats",
            *[str(x) for flag in flags for x in (flag, free_port())],
        ]
        self.process: subprocess.Popen | None = None

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def address(self) -> str:
        """The dashboard (job and state API) address of a head."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> None:
        self.temp_dir.mkdir(parents=True)
        self.log = open(self.temp_dir / "node.log", "wb")
        self.process = subprocess.Popen(self.command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def check_running(self) -> None:
        assert self.process is not None and self.process.poll() is None, self.log_tail()
        # A raylet that aborts at startup is noticed by `ray start` only 30 s later.
        for raylet_log in self.temp_dir.glob("session_2*/logs/raylet.out"):
            assert b"Check failed" not in raylet_log.read_bytes(), f"the raylet aborted, see {raylet_log}"

    def failed_to_start(self) -> bool:
        try:
            self.check_running()
        except AssertionError:
            return True
        return False

    def log_tail(self) -> str:
        return (self.temp_dir / "node.log").read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL the node's process group, then any process of it that left the group
        (found by the node's temp dir in its command line): the node is gone at once."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        marker = str(self.temp_dir).encode()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        self.log.close()
        self.process = None


def wait_for(what: str, check, timeout_s: float, *nodes: RayNode):
    """Poll ``check()`` until it returns a true value (returned); fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        for node in nodes:
            node.check_running()
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(1)


def start_node(make: Callable[[int], RayNode], what: str, ready, *others: RayNode, started: list[RayNode]) -> RayNode:
    """``make(attempt)`` started and ``ready()``; a node whose ``ray start`` exits or whose
    raylet aborts is killed and made again (new ports, new temp dir)."""
    for attempt in range(START_ATTEMPTS):
        node = make(attempt)
        started.append(node)
        node.start()
        try:
            wait_for(what, ready, 180, node, *others)
            return node
        except AssertionError:
            if attempt == START_ATTEMPTS - 1 or not node.failed_to_start():
                raise
            print(f"{what}: the node failed to start, starting it again", flush=True)
            node.kill()
            time.sleep(5)  # a half-started raylet that did register is declared dead meanwhile
    raise AssertionError("unreachable")


def dashboard_up(head: RayNode) -> bool:
    try:
        with urllib.request.urlopen(f"{head.address}/api/version", timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def alive_nodes(head: RayNode) -> dict[str, bool]:
    """{node id: is head} of the nodes the head sees alive."""
    from ray.util.state import list_nodes

    try:
        nodes = list_nodes(address=head.address, filters=[("state", "=", "ALIVE")], timeout=30)
    except Exception:  # noqa: BLE001 (the state API is not up yet)
        return {}
    return {n.node_id: n.is_head_node for n in nodes}


def node_state(head: RayNode, node_id: str) -> str:
    from ray.util.state import get_node

    return get_node(node_id, address=head.address, timeout=30).state


def retried_tasks(head: RayNode, job_id: str) -> dict[str, int]:
    """{task name: attempts after the first}, for the test's log."""
    from ray.util.state import list_tasks

    try:
        tasks = list_tasks(address=head.address, filters=[("job_id", "=", job_id)], limit=10_000, timeout=30,
                           raise_on_missing_output=False)
    except Exception as e:  # noqa: BLE001
        return {f"unknown ({type(e).__name__})": 0}
    retried: dict[str, int] = {}
    for t in tasks:
        if t.attempt_number > 0:
            retried[t.name] = retried.get(t.name, 0) + 1
    return retried


def scan_task_nodes(head: RayNode, job_id: str) -> dict[str, set[str]]:
    """{task name: node ids it ran or runs on} of the job's Ray Data tasks."""
    from ray.util.state import list_tasks

    try:
        tasks = list_tasks(address=head.address, filters=[("job_id", "=", job_id)], limit=10_000,
                           timeout=30, raise_on_missing_output=False)
    except Exception:  # noqa: BLE001 (a slow answer on a loaded machine: ask again)
        return {}
    nodes: dict[str, set[str]] = {}
    for t in tasks:
        if t.node_id:
            nodes.setdefault(t.name, set()).add(t.node_id)
    return nodes


def scorer_nodes(head: RayNode, job_id: str, head_id: str, worker_id: str) -> list[str]:
    """Where the job's Scorer actors live ("head" / "worker"), for the test's log."""
    from ray.util.state import list_actors

    try:
        actors = list_actors(address=head.address, filters=[("job_id", "=", job_id)], timeout=30,
                             raise_on_missing_output=False)
    except Exception as e:  # noqa: BLE001
        return [f"unknown ({type(e).__name__})"]
    names = {head_id: "head", worker_id: "worker"}
    return [f"{names.get(a.node_id, a.node_id)} ({a.state})" for a in actors if "Scorer" in a.class_name]


def make_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"d{i % 3}" / f"img_{i:03d}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def test_scan_survives_losing_a_worker_node(tmp_path):
    images = make_images(tmp_path / "images", IMAGES)
    model = save_model(tmp_path / "model", image_size=32)
    output = tmp_path / "reports"
    run_dir = Path(f"/tmp/rmn-{uuid.uuid4().hex[:8]}")  # short: Ray's socket paths must be < 108 bytes
    started: list[RayNode] = []
    passed = False
    t0 = time.monotonic()

    def log(event: str) -> None:  # shown by pytest when the test fails (or with -s)
        print(f"{time.monotonic() - t0:6.1f} s  {event}", flush=True)

    try:
        head = start_node(lambda i: RayNode(run_dir / f"head{i}", num_cpus=1), "the head node",
                          lambda: dashboard_up(started[-1]) and len(alive_nodes(started[-1])) == 1, started=started)
        worker = start_node(lambda i: RayNode(run_dir / f"worker{i}", num_cpus=2, gcs_address=head.gcs_address),
                            "a second alive node", lambda: len(alive_nodes(head)) == 2, head, started=started)
        nodes = wait_for("the node ids", lambda: len(n := alive_nodes(head)) == 2 and n, 60, head, worker)
        log("two nodes up")
        [head_id] = [n for n, is_head in nodes.items() if is_head]
        [worker_id] = [n for n, is_head in nodes.items() if not is_head]

        from ray.job_submission import JobStatus, JobSubmissionClient

        submit = [
            str(BIN / "ray"), "job", "submit", "--address", head.address, "--submission-id", SCAN_ID,
            "--no-wait", "--working-dir", ".",
            "--", "python", "-m", "jobs.scan", "--input", str(tmp_path / "images"), "--model", str(model),
            "--output", str(output), "--scan-id", SCAN_ID, "--batch-size", "8", "--concurrency", "1",
            "--cpus-per-scorer", "0.25", "--fetch", "tasks", "--rows-per-file", "50", "--executor", "ray",
        ]
        # The job API can answer before the head's job agent takes jobs: retry the same id.
        client = JobSubmissionClient(head.address)

        def submitted() -> bool:
            done = subprocess.run(submit, env=head.env, capture_output=True, text=True, timeout=120, cwd=REPO)
            try:
                return done.returncode == 0 or SCAN_ID in {j.submission_id for j in client.list_jobs()}
            except Exception:  # noqa: BLE001 (the job API is not up yet)
                return False

        wait_for("the job submission", submitted, 120, head, worker)
        log("scan submitted")
        job_id = wait_for("the job's driver", lambda: client.get_job_info(SCAN_ID).job_id, 120, head, worker)

        # Work on both nodes: fetch tasks (SPREAD by Ray Data) seen on each, scan running.
        def fetch_on_both_nodes() -> bool:
            assert client.get_job_status(SCAN_ID) in (JobStatus.PENDING, JobStatus.RUNNING), client.get_job_logs(SCAN_ID)
            ran = scan_task_nodes(head, job_id)
            return any("fetch_and_prepare" in name and {head_id, worker_id} <= ids for name, ids in ran.items())

        wait_for("fetch tasks on both nodes", fetch_on_both_nodes, 150, head, worker)
        log(f"fetch tasks seen on both nodes; scorer actors on {scorer_nodes(head, job_id, head_id, worker_id)}")
        assert client.get_job_status(SCAN_ID) == JobStatus.RUNNING, "the scan ended before the kill: make it longer"
        worker.kill()
        log("worker node killed")
        assert client.get_job_status(SCAN_ID) == JobStatus.RUNNING, "the scan ended before the kill: make it longer"

        status = wait_for("the scan to end", lambda: (s := client.get_job_status(SCAN_ID)).is_terminal() and s,
                          180, head)
        log(f"scan ended: {status}")
        logs = client.get_job_logs(SCAN_ID)
        assert status == JobStatus.SUCCEEDED, logs[-4000:]
        assert f"scan {SCAN_ID}: listed {IMAGES}, skipped 0, scored {IMAGES}, " in logs, logs[-4000:]
        assert node_state(head, worker_id) == "DEAD"  # the worker node is gone, not merely idle
        log(f"tasks run again after the kill: {retried_tasks(head, job_id)}")
        passed = True
    finally:
        for node in reversed(started):
            node.kill()
        if passed:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            print(f"the nodes' logs are kept in {run_dir}")

    rows = report_store.open_reports(str(output)).to_table(columns=["uri", "error", "scan_id"]).to_pylist()
    uris = [r["uri"] for r in rows]
    assert len(uris) == len(set(uris)) == IMAGES  # exactly one row per image: none lost, none twice
    assert set(uris) == {str(p) for p in images}
    assert all(r["error"] is None and r["scan_id"] == SCAN_ID for r in rows)
