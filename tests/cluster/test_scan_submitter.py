"""Runs the scheduled-scan submitter of cluster/kuberay/cronjob.scan.yaml against a real
local Ray (token auth on), to prove its idempotency (one scan per hourly slot, none while
an earlier scan runs), that the pod ends with the scan's outcome (a failed scan fails the
pod, and so the Job), and that a failed check fails the pod instead of skipping silently.

    .venv/bin/pytest tests/cluster/test_scan_submitter.py -q

The container's script runs unchanged except for two stand-ins: `date` prints a chosen
slot, and the scan entrypoint waits until the test writes an exit code for its slot into
a file, then exits with it (the real one would reach for S3).
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

from tests.helpers import terminate

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
        terminate(head, 60)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def submitter(tmp_path_factory):
    """The container's script with `date` and the scan entrypoint stood in."""
    (cronjob,) = [d for d in yaml.safe_load_all(CRONJOB.read_text()) if d["kind"] == "CronJob"]
    script = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    lines = script.splitlines()
    (scan,) = [i for i, line in enumerate(lines) if line.lstrip().startswith("python -m jobs.scan")]
    folder = tmp_path_factory.mktemp("submitter")
    (folder / "exit").mkdir()
    lines[scan] = ("  python -c 'import pathlib, sys, time; f = pathlib.Path(sys.argv[1], sys.argv[2]); "
                   "any(f.exists() or time.sleep(0.2) for _ in iter(int, 1)); sys.exit(int(f.read_text()))' "
                   f"{folder / 'exit'} \"$SUBMISSION_ID\"")
    (folder / "date").write_text('#!/bin/sh\necho "$FAKE_SLOT"\n')
    (folder / "date").chmod(0o755)
    (folder / "submit.sh").write_text("\n".join(lines) + "\n")
    return folder


def submit(submitter, ray_head, slot, token=None, wait=True):
    """Run the pod's script for ``slot``: its CompletedProcess, or (``wait=False``) its Popen."""
    address, real_token = ray_head
    path = os.pathsep.join([str(submitter), str(Path(sys.executable).parent), os.environ["PATH"]])
    env = {
        **os.environ, "PATH": path, "HOME": str(submitter), "FAKE_SLOT": slot,
        "RAY_DASHBOARD_ADDRESS": address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token or real_token,
    }
    script = str(submitter / "submit.sh")
    if not wait:
        return subprocess.Popen(["bash", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=300)


def finish(submitter, slot, code):
    """Let the stand-in scan of ``slot`` exit with ``code``."""
    (submitter / "exit" / f"scan-{slot}").write_text(str(code))


def wait_until(predicate, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{predicate} stayed false"
        time.sleep(0.5)


def scan_jobs(ray_head):
    address, token = ray_head
    jobs = requests.get(f"{address}/api/jobs/", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    jobs.raise_for_status()
    return {
        job["submission_id"]: job["status"]
        for job in jobs.json()
        if (job["submission_id"] or "").startswith("scan-")
    }


def test_one_scan_per_slot_none_while_one_runs_and_the_pod_ends_as_the_scan(ray_head, submitter):
    first = submit(submitter, ray_head, "2026112506", wait=False)  # waits for its scan
    wait_until(lambda: scan_jobs(ray_head).get("scan-2026112506") == "RUNNING" or first.poll() is not None)
    assert first.poll() is None, first.communicate()
    retried = submit(submitter, ray_head, "2026112506", wait=False)  # a retried pod of the same slot

    next_slot = submit(submitter, ray_head, "2026112507")  # the previous scan still runs
    assert next_slot.returncode == 0, next_slot.stderr
    assert "not submitting scan-2026112507: scan-2026112506 is" in next_slot.stdout
    assert set(scan_jobs(ray_head)) == {"scan-2026112506"}

    finish(submitter, "2026112506", 0)  # the scan succeeds: both pods succeed
    outputs = [pod.communicate(timeout=300) for pod in (first, retried)]
    assert (first.returncode, retried.returncode) == (0, 0), outputs
    assert "following scan-2026112506" in outputs[1][0]
    assert set(scan_jobs(ray_head)) == {"scan-2026112506"}  # the retried pod submitted nothing

    finish(submitter, "2026112507", 7)  # jobs.scan's "too many error rows"
    failed = submit(submitter, ray_head, "2026112507")
    assert failed.returncode != 0, "a failed scan must fail the pod, and so the Job"
    assert scan_jobs(ray_head)["scan-2026112507"] == "FAILED"
    again = submit(submitter, ray_head, "2026112507")  # the Job's retry: follows, still failed, no new scan
    assert again.returncode != 0 and "following scan-2026112507" in again.stdout, again.stdout + again.stderr
    assert set(scan_jobs(ray_head)) == {"scan-2026112506", "scan-2026112507"}


def test_a_failed_check_fails_the_pod(ray_head, submitter):
    denied = submit(submitter, ray_head, "2026112508", token="not-the-token")
    assert denied.returncode != 0, "an auth error must fail the pod, not skip the slot"
    assert "scan-2026112508" not in scan_jobs(ray_head)
