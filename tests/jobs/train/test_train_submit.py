"""``ray job submit --working-dir . -- python -m jobs.train ...`` against a ``ray start
--head`` cluster of its own.

The head gets its own --temp-dir, loopback addresses and free ports, and runs with
``--block`` in a new session, so stopping it (SIGTERM, then SIGKILL to that session's
process group) never touches another Ray on this machine, as ``ray stop`` would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import jobs
from detector.checkpoint import load_checkpoint
from tests.helpers import make_folders

pytestmark = pytest.mark.slow
REPO = Path(jobs.__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
              "node-manager-port", "object-manager-port")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head() -> Iterator[tuple[str, dict[str, str]]]:
    """(dashboard URL, environment) of a 2-CPU head node; stopped afterwards."""
    temp_dir = tempfile.mkdtemp(prefix="genscan-rh-", dir="/tmp")  # Unix sockets: short path
    ports = {flag: _free_port() for flag in PORT_FLAGS}
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    log = open(f"{temp_dir}/head.log", "w")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", f"--temp-dir={temp_dir}",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
         f"--object-store-memory={256 * 1024 * 1024}", "--disable-usage-stats",
         *(f"--{flag}={port}" for flag, port in ports.items())],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2).read()
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ray start --head did not come up: {Path(temp_dir, 'head.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url, env
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(5)  # a graceful stop of --block takes about 30 s here
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever of this head is left, and only that
        except ProcessLookupError:
            pass
        head.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_to_a_head_node(ray_head, tmp_path):
    url, env = ray_head
    data = make_folders(tmp_path / "data", n=4)
    out = tmp_path / "out"
    job = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", str(REPO), "--",
         "python", "-m", "jobs.train", "--data", str(data), "--output", str(out), "--epochs", "1",
         "--image-size", "32", "--num-workers", "2", "--batch-size", "8"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=500,
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "epoch 1/1" in job.stdout and "succeeded" in job.stdout + job.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1]
    assert load_checkpoint(out).model_version == metrics["model_version"]
