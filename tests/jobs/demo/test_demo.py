"""`make demo` end to end, small: python -m jobs.demo in a subprocess with a temp workdir.

Each test runs its own S3 server and Ray inside the demo process, so nothing here uses
the shared fixtures; they check that the server is gone afterwards, also after a failure
and after SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.dataset as ds
import pytest

ROOT = Path(__file__).resolve().parents[3]
SMALL = ["--count", "10", "--uploads", "4", "--added", "2", "--epochs", "1", "--size", "64", "--image-size", "32"]
# pytest-timeout (600 s in pyproject) would kill the test without stopping the demo;
# _demo's own limit comes first and SIGTERMs it, so its server still stops.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(720)]
SERVER_LINE = re.compile(r"S3 at http://127\.0\.0\.1:(\d+) \(weed pid (\d+),")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    return env | {"PYTHONUNBUFFERED": "1"}


def _demo(tmp_path: Path, *extra: str, timeout: float = 540) -> subprocess.CompletedProcess[str]:
    """Run the demo; past ``timeout`` (a loaded machine) SIGTERM it so it stops its server."""
    args = [sys.executable, "-m", "jobs.demo", "--workdir", str(tmp_path / "demo"), *SMALL, *extra]
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"the demo took more than {timeout} s; stopped it. Output:\n{(out + err)[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _server(output: str) -> tuple[int, int]:
    match = SERVER_LINE.search(output)
    assert match, f"no server line in the output:\n{output[-3000:]}"
    return int(match.group(1)), int(match.group(2))


def _assert_server_gone(port: int, pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, f"something still listens on the demo's S3 port {port}"


def test_demo_runs_end_to_end_and_stops_the_server(tmp_path: Path) -> None:
    done = _demo(tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-5000:]
    work = tmp_path / "demo"
    parquet = list((work / "report").rglob("*.parquet"))
    assert parquet, out[-3000:]
    assert (work / "review.html").stat().st_size > 0
    table = ds.dataset(work / "report", format="parquet", partitioning="hive",
                       exclude_invalid_files=True, ignore_prefixes=["_", "."]).to_table()
    assert table.num_rows == 2 * 4 + 2 * 2  # the first scan, then only the added images
    scans = table.group_by("scan_id").aggregate([("uri", "count")]).to_pylist()
    assert sorted(s["uri_count"] for s in scans) == [2 * 2, 2 * 4]
    first_id = next(s["scan_id"] for s in scans if s["uri_count"] == 2 * 4)
    added = {u for u, sid in zip(table["uri"].to_pylist(), table["scan_id"].to_pylist()) if sid != first_id}
    assert added == {f"s3://uploads/{c}/{c}_{i:05d}.jpg" for c in ("real", "fake") for i in (4, 5)}
    assert "scored only the 4 new images, skipped the 8 already scored" in out
    _assert_server_gone(*_server(out))
    # the DuckDB query the demo prints works against what it left
    query = re.search(r'-c "(import duckdb.*)"\n', done.stdout)
    assert query, done.stdout[-2000:]
    code = query.group(1).replace('\\"', '"')
    printed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert "truth" in printed.stdout and "real" in printed.stdout and "fake" in printed.stdout
    _check_review_loop(work, done.stdout)


def _check_review_loop(work: Path, stdout: str) -> None:
    """Decisions were recorded through the app, exported, trained on, counted by the
    report, copied with the reports; the printed review command serves them."""
    assert "recorded 12 decisions through the app's HTTP API" in stdout, stdout[-3000:]
    labels = (work / "labels.csv").read_text().splitlines()
    assert labels[0] == '"uri","label"' and len(labels) == 1 + 11  # one unsure left out
    assert "fine-tuning s3://models/detector (resnet18, preset baseline)" in stdout
    assert "moderators' decisions" in stdout and list((work / "report" / "_decisions").glob("*.parquet"))
    command = re.search(r"^  (\S+) -m jobs\.review --reports (\S+)", stdout, flags=re.M)
    assert command, stdout[-2000:]
    app = subprocess.Popen([sys.executable, "-m", "jobs.review", "--reports", command.group(2)], cwd=ROOT, env=_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = next(line.split()[1] for line in app.stdout if line.startswith("open http://127.0.0.1:"))
        with urllib.request.urlopen(url.replace("/?token=", "/api/queue?limit=1&token="), timeout=30) as r:
            raise AssertionError(f"a query token opened the API: {r.status}")
    except urllib.error.HTTPError as e:
        assert e.code == 401  # only the page takes the token in its URL
        token = url.split("token=")[1]
        request = urllib.request.Request(url.split("?")[0] + "api/meta", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as r:
            assert json.loads(r.read())["counts"]["flagged"] > 0
    finally:
        app.terminate()
        app.wait(timeout=30)


def test_a_failing_step_still_stops_the_server(tmp_path: Path) -> None:
    done = _demo(tmp_path, "--fail-after", "samples")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert "failing after step 'samples'" in out
    _assert_server_gone(*_server(out))
    assert not (tmp_path / "demo" / "review.html").exists()


def test_sigterm_stops_the_server(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.demo", "--workdir", str(tmp_path / "demo"), *SMALL],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:  # wait until the server runs and the samples are being made
            lines.append(line)
            if "== 2/9" in line or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + rest
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    _assert_server_gone(*_server(out))
