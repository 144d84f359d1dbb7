"""What on-call sees of a scan: the exit code for too many error rows, the metrics pushed to
a real Prometheus Pushgateway (scraped back over HTTP) and written as a textfile, and
``--log-format json``. The scans run in this process (``--executor local``), so no Ray.

    .venv/bin/python -m pytest tests/jobs/scan/test_operations.py -q
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobs import cli, storage
from jobs.demo.s3_server import SeaweedS3Server
from jobs.report import store as report_store
from jobs.scan import main
from jobs.storage import s3 as storage_s3
from tests.helpers import save_model, small_images, use_s3_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(save_model(tmp_path_factory.mktemp("model") / "m", image_size=32))


def scan(model: str, output: Path | str, *extra: str) -> int:
    return main(["--model", model, "--output", str(output), "--executor", "local", "--runtime", "torch",
                 "--thumbnails", "none", *extra])


def samples(text: str, **labels: str) -> dict[str, float]:
    """{metric name: value} of the samples in Prometheus text whose labels include ``labels``."""
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if labels.items() <= s.labels.items()}


def scrape(pushgateway: str, **labels: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{pushgateway}/metrics", timeout=10) as reply:
        return samples(reply.read().decode(), job="genscan_scan", **labels)


def marker(output: Path | str, scan_id: str) -> dict:
    [found] = [m for m in report_store.published_scans(str(output)) if m["scan_id"] == scan_id]
    return found


def test_a_scan_pushes_its_metrics_and_writes_them_as_a_textfile(model, tmp_path, pushgateway, capsys):
    small_images(tmp_path / "in", n=20)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # 1 of 21 rows: under 5%
    before = time.time()
    code = scan(model, tmp_path / "out", "--input", str(tmp_path / "in"), "--scan-id", "pushed",
                "--metrics-push", pushgateway, "--metrics-file", str(tmp_path / "genscan.prom"))
    assert code == cli.OK, capsys.readouterr().err
    m = marker(tmp_path / "out", "pushed")
    expected = {"genscan_scan_listed": 21, "genscan_scan_skipped": 0, "genscan_scan_scored": 20,
                "genscan_scan_flagged": m["flagged"], "genscan_scan_errors": 1, "genscan_scan_exit_code": 0}
    for got in (scrape(pushgateway, input=str(tmp_path / "in"), scan_id="pushed"),
                samples((tmp_path / "genscan.prom").read_text(), input=str(tmp_path / "in"), scan_id="pushed")):
        assert {k: got[k] for k in expected} == expected
        assert 0 < got["genscan_scan_seconds"] < time.time() - before
        assert got["genscan_scan_images_per_second"] == pytest.approx(21 / got["genscan_scan_seconds"], rel=1e-6)
        assert before <= got["genscan_scan_last_success_timestamp_seconds"] <= time.time()


def test_an_unreachable_pushgateway_warns_and_keeps_the_exit_code(model, tmp_path, capsys):
    small_images(tmp_path / "in", n=2)
    code = scan(model, tmp_path / "out", "--input", str(tmp_path / "in"),
                "--metrics-push", "http://user:hunter22@127.0.0.1:9", "--metrics-file", str(tmp_path / "no" / "such" / "m.prom"))
    err = capsys.readouterr().err
    assert code == cli.OK
    assert "warning: could not push metrics to http://***@127.0.0.1:9" in err and "hunter22" not in err
    assert "warning: could not write metrics to" in err


@pytest.fixture
def stopped_s3(tmp_path, monkeypatch):
    """A bucket of 12 images on a SeaweedFS server of its own, and a stop() for it; S3
    retries cut to a second so a scan against the stopped server ends quickly."""
    server = SeaweedS3Server(tmp_path / "weed").start()
    try:
        use_s3_server(server, monkeypatch)
        bucket = server.create_bucket(f"uploads-{uuid.uuid4().hex[:8]}")
        uris = []
        for path in small_images(tmp_path / "images", n=12):
            uris.append(storage.join(bucket, path.name))
            storage.write_bytes(uris[-1], path.read_bytes())
        monkeypatch.setattr(storage_s3, "TRANSIENT_RETRY_S", 0.5)
        new_client = storage_s3._new_client
        fast = {"retries": {"mode": "standard", "total_max_attempts": 2}, "connect_timeout": 1, "read_timeout": 1}
        monkeypatch.setattr(storage_s3, "_new_client", lambda settings=None, **c: new_client(settings, **fast, **c))
        yield bucket, uris, server
    finally:
        server.stop()


def test_a_scan_while_s3_is_down_exits_7_and_pushes_metrics_saying_so(model, tmp_path, pushgateway, stopped_s3, capsys):
    bucket, uris, server = stopped_s3
    manifest = tmp_path / "uploads.csv"
    manifest.write_text("uri\n" + "\n".join(uris) + "\n")
    argv = ["--manifest", str(manifest), "--allow-prefix", bucket, "--metrics-push", pushgateway]
    assert scan(model, tmp_path / "out", *argv, "--scan-id", "while-up") == cli.OK, capsys.readouterr().err
    up = scrape(pushgateway, input=str(manifest))
    assert up["genscan_scan_scored"] == 12 and up["genscan_scan_exit_code"] == 0

    server.stop()  # for the whole of the next scan: every fetch fails
    code = scan(model, tmp_path / "out", *argv, "--scan-id", "while-down")
    err = capsys.readouterr().err
    assert code == cli.TOO_MANY_ERRORS, err
    assert "scan failed: 12 of 12 rows are errors (100%), over --max-error-fraction 0.05" in err
    down = scrape(pushgateway, input=str(manifest))
    assert down["genscan_scan_errors"] == down["genscan_scan_listed"] == 12 and down["genscan_scan_scored"] == 0
    assert down["genscan_scan_exit_code"] == cli.TOO_MANY_ERRORS
    assert scrape(pushgateway, input=str(manifest), scan_id="while-down")["genscan_scan_errors"] == 12
    # the failure kept the last success: `time() - last success` keeps growing for the alert
    assert down["genscan_scan_last_success_timestamp_seconds"] == up["genscan_scan_last_success_timestamp_seconds"]
    # published all the same, every row an error, so --mode incremental can re-score them
    rows = report_store.open_reports(str(tmp_path / "out")).to_table().to_pylist()
    down_rows = [r for r in rows if r["scan_id"] == "while-down"]
    assert len(down_rows) == 12 and all(r["error"] and r["score"] is None for r in down_rows)

    # A prefix cannot even be listed: storage unreachable (exit 4), metrics pushed all the same.
    code = scan(model, tmp_path / "out", "--input", bucket, "--scan-id", "no-listing", "--metrics-push", pushgateway)
    assert code == cli.STORAGE, capsys.readouterr().err
    listing = scrape(pushgateway, input=bucket)
    assert listing["genscan_scan_exit_code"] == cli.STORAGE and listing["genscan_scan_listed"] == 0
    assert "genscan_scan_last_success_timestamp_seconds" not in listing


def test_json_logs_give_the_summary_and_the_failure_as_json_lines(model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-secret-that-must-not-show")
    small_images(tmp_path / "in", n=3)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"not a picture")
    code = scan(model, tmp_path / "out", "--input", str(tmp_path / "in"), "--scan-id", "json", "--log-format", "json")
    out, err = capsys.readouterr()
    assert code == cli.TOO_MANY_ERRORS
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    [summary] = [e for e in events if e.get("event") == "summary"]
    [failed] = [e for e in events if e.get("event") == "failed"]
    assert (summary["listed"], summary["scored"], summary["errors"], summary["exit_code"]) == (4, 3, 1, 7)
    assert summary["scan_id"] == "json" and summary["level"] == "info" and "scan json: listed 4" in summary["message"]
    assert failed["level"] == "error" and failed["message"].startswith("scan failed: 1 of 4 rows are errors")
    assert "scan json:" not in out  # the summary went to the log, once
    assert "a-secret-that-must-not-show" not in out + err
    # and a failure before any row: one JSON line with the one-line message
    code = scan(model, tmp_path / "out", "--input", str(tmp_path / "missing"), "--log-format", "json")
    err = capsys.readouterr().err
    assert code == cli.FAILED  # a missing folder: bad input, not an outage
    [failed] = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert failed["event"] == "failed" and failed["message"].startswith("scan failed: the folder")


@pytest.mark.parametrize("flags, message", [
    (["--max-error-fraction", "2"], "--max-error-fraction must be in [0, 1]"),
    (["--max-error-fraction", "nan"], "--max-error-fraction must be a finite number"),
    (["--metrics-push", ""], "--metrics-push is empty; give the Pushgateway's URL"),
    (["--metrics-file", " "], "--metrics-file is empty"),
    (["--log-format", "xml"], "invalid choice: 'xml'"),
])
def test_bad_operations_flags_are_exit_2(flags, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--input", "in", "--model", "m", "--output", "o", *flags])
    assert exited.value.code == cli.BAD_FLAGS and message in capsys.readouterr().err
