"""Runs the scheduled-scan submitter of cluster/kuberay/cronjob.scan.yaml against a real
local Ray (token auth on), to prove its idempotency: one scan per hourly slot, none while
an earlier scan runs, and a failed check fails the pod (so the Job retries) instead of
skipping silently.

    .venv/bin/pytest tests/cluster/test_scan_submitter.py -q

The container's script runs unchanged except for two stand-ins: `date` prints a chosen
slot, and the scan entrypoint becomes a sleep (the real one would reach for S3).
"""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

CRONJOB = Path(__file__).resolve().parents[2] / "cluster" / "kuberay" / "cronjob.scan.yaml"

pytestmark = pytest.mark.slow


def job_agent_ready(address, headers):
    """Submit a warm-up job (not scan-*); True once the cluster has accepted one."""
    try:
        jobs = requests.get(f"{address}/api/jobs/", headers=headers, timeout=60)
        if jobs.ok and any((j["submission_id"] or "").startswith("warmup") for j in jobs.json()):
            return True  # an earlier attempt got through even if its reply timed out
        job = {"entrypoint": "true", "submission_id": f"warmup-{secrets.token_hex(4)}"}
        return requests.post(f"{address}/api/jobs/", json=job, headers=headers, timeout=60).ok
    except requests.RequestException:
        return False


def free_ports(count):
    socks = [socket.socket() for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """(dashboard address, token) of a local Ray head with token auth on.

    `ray start --block` with its own ports and temp dir, so it never collides with other
    Ray clusters on the machine (the job agent's default port 52365 would), and its
    processes die with it (--block fate-shares them).
    """
    home = tmp_path_factory.mktemp("home")  # keeps ~/.ray/auth_token out of the real home
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a limit
    token = secrets.token_hex(16)
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    gcs, dashboard, agent, client = free_ports(4)
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
            f"--port={gcs}", f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
            f"--ray-client-server-port={client}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
            "--num-cpus=1", f"--object-store-memory={80 * 1024**2}", f"--temp-dir={temp_dir}",
        ],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 240  # a loaded 2-core machine is slow here
        auth = {"Authorization": f"Bearer {token}"}
        # The job API answers before the job agent can take jobs ("No available agent").
        while not job_agent_ready(address, auth):
            assert head.poll() is None, "ray start exited"
            assert time.monotonic() < deadline, "the job API did not come up"
            time.sleep(1)
        yield address, token
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def submitter(tmp_path_factory):
    """The container's script with `date` and the scan entrypoint stood in."""
    (cronjob,) = [d for d in yaml.safe_load_all(CRONJOB.read_text()) if d["kind"] == "CronJob"]
    script = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    lines = script.splitlines()
    (scan,) = [i for i, line in enumerate(lines) if line.lstrip().startswith("python -m jobs.scan")]
    lines[scan] = "  python -c 'import time; time.sleep(600)'"
    folder = tmp_path_factory.mktemp("submitter")
    (folder / "date").write_text('#!/bin/sh\necho "$FAKE_SLOT"\n')
    (folder / "date").chmod(0o755)
    (folder / "submit.sh").write_text("\n".join(lines) + "\n")
    return folder


def submit(submitter, ray_head, slot, token=None):
    address, real_token = ray_head
    path = os.pathsep.join([str(submitter), str(Path(sys.executable).parent), os.environ["PATH"]])
    env = {
        **os.environ, "PATH": path, "HOME": str(submitter), "FAKE_SLOT": slot,
        "RAY_DASHBOARD_ADDRESS": address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token or real_token,
    }
    script = str(submitter / "submit.sh")
    return subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=300)


def scan_jobs(ray_head):
    address, token = ray_head
    jobs = requests.get(f"{address}/api/jobs/", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    jobs.raise_for_status()
    return {
        job["submission_id"]: job["status"]
        for job in jobs.json()
        if (job["submission_id"] or "").startswith("scan-")
    }


def stop(ray_head, submission_id):
    address, token = ray_head
    auth = {"Authorization": f"Bearer {token}"}
    requests.post(f"{address}/api/jobs/{submission_id}/stop", headers=auth, timeout=10).raise_for_status()
    deadline = time.monotonic() + 180
    while scan_jobs(ray_head)[submission_id] not in {"STOPPED", "SUCCEEDED", "FAILED"}:
        assert time.monotonic() < deadline, f"{submission_id} did not stop"
        time.sleep(0.5)


def test_one_scan_per_slot_and_none_while_one_runs(ray_head, submitter):
    first = submit(submitter, ray_head, "2026112506")
    assert first.returncode == 0, first.stderr
    assert set(scan_jobs(ray_head)) == {"scan-2026112506"}

    retried = submit(submitter, ray_head, "2026112506")  # a retried pod of the same slot
    assert retried.returncode == 0, retried.stderr
    assert "not submitting scan-2026112506" in retried.stdout

    next_slot = submit(submitter, ray_head, "2026112507")  # the previous scan still runs
    assert next_slot.returncode == 0, next_slot.stderr
    assert "not submitting scan-2026112507: scan-2026112506 is" in next_slot.stdout
    assert set(scan_jobs(ray_head)) == {"scan-2026112506"}

    stop(ray_head, "scan-2026112506")
    after = submit(submitter, ray_head, "2026112507")
    assert after.returncode == 0, after.stderr
    assert set(scan_jobs(ray_head)) == {"scan-2026112506", "scan-2026112507"}
    stop(ray_head, "scan-2026112507")


def test_a_failed_check_fails_the_pod(ray_head, submitter):
    denied = submit(submitter, ray_head, "2026112508", token="not-the-token")
    assert denied.returncode != 0, "an auth error must fail the pod, not skip the slot"
    assert "scan-2026112508" not in scan_jobs(ray_head)
