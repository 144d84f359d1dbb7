"""jobs.observe without a job: what a failed run keeps in the textfile, and credentials kept
out of label values (the Pushgateway's part is tests/jobs/scan/test_operations.py).

    .venv/bin/python -m pytest tests/jobs/observe -q
"""

from __future__ import annotations

import json
import warnings

from prometheus_client.parser import text_string_to_metric_families

from jobs.observe import logs
from jobs.observe.metrics import LAST_SUCCESS, SCAN_JOB, export, scan_registry


def read(path) -> dict[str, tuple[dict, float]]:
    return {s.name: (s.labels, s.value) for f in text_string_to_metric_families(path.read_text()) for s in f.samples}


def test_a_failed_run_keeps_the_last_success_in_the_textfile(tmp_path):
    file = tmp_path / "genscan.prom"
    export(scan_registry(input="in", scan_id="good", counts={"listed": 5, "scored": 5}, exit_code=0, finished_at=1e9),
           job=SCAN_JOB, grouping={"input": "in"}, file=str(file))
    export(scan_registry(input="in", scan_id="bad", counts={"listed": 5, "errors": 5}, exit_code=7),
           job=SCAN_JOB, grouping={"input": "in"}, file=str(file), succeeded=False)
    got = read(file)
    assert got["genscan_scan_errors"] == ({"input": "in", "scan_id": "bad"}, 5)
    assert got["genscan_scan_exit_code"][1] == 7
    assert got[LAST_SUCCESS] == ({"input": "in", "scan_id": "good"}, 1e9)  # still the good run's
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temporary file left


def test_credentials_never_reach_label_values(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://alice:s3cr3t-pass@127.0.0.1:9000")
    file = tmp_path / "m.prom"
    export(scan_registry(input="s3://bob:hunter2-pw@bucket/x s3cr3t-pass", scan_id="i", counts={}, exit_code=0),
           job=SCAN_JOB, grouping={"input": "x"}, file=str(file))
    text = file.read_text()
    assert "hunter2-pw" not in text and "s3cr3t-pass" not in text and 's3://***@bucket/x ***"' in text


def test_json_logs_are_one_object_per_line_and_catch_warnings(capsys):
    logs.configure("json")
    try:
        logs.warning("two\nlines", uri="s3://b/k")
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # whatever filters earlier tests or imports left
            warnings.warn("from a library", UserWarning, stacklevel=1)
        logs.summary("scan x: done", {"listed": 3})
    finally:
        logs.configure("text")
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in err.splitlines()]
    assert [e["level"] for e in lines] == ["warning", "warning", "info"] and out == ""
    assert lines[0]["message"] == "two\nlines" and lines[0]["uri"] == "s3://b/k"
    assert "from a library" in lines[1]["message"] and lines[2] == {**lines[2], "event": "summary", "listed": 3}
    logs.warning("back to text")
    assert capsys.readouterr().err == "warning: back to text\n"
