"""cluster/alerts.yaml: a valid Prometheus rule file on the metric names jobs.scan exports,
whose alerts fire when they should (``promtool test rules`` on made-up series, when Debian's
``prometheus`` package is installed; the YAML checks run everywhere).

    .venv/bin/pytest tests/cluster/test_alerts.py -q
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from jobs.observe.metrics import LAST_SUCCESS, SCAN_GAUGES

ALERTS = Path(__file__).resolve().parents[2] / "cluster" / "alerts.yaml"
EXPORTED = {f"genscan_scan_{name}" for name in SCAN_GAUGES} | {LAST_SUCCESS, "genscan_scan_exit_code"}


def rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_the_rules_are_well_formed_and_use_exported_metrics():
    found = rules()
    assert {r["alert"] for r in found} == {"GenscanNoSuccessfulScan", "GenscanScanErrors", "GenscanScanFailed"}
    for rule in found:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"} and rule["annotations"]["summary"]
        names = set(re.findall(r"\bgenscan_\w+", rule["expr"]))
        assert names and names <= EXPORTED, names - EXPORTED  # a renamed metric would never fire


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return found


def test_promtool_accepts_the_rules(promtool):
    checked = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


LABELS = {"input": "s3://uploads/", "scan_id": "s", "job": "genscan_scan"}


def series(name: str, values: str) -> dict:
    return {"series": name + "{" + ", ".join(f'{k}="{v}"' for k, v in LABELS.items()) + "}", "values": values}


def expect(alert: str, at: str, *, labels: dict | None = None, summary: str = "") -> dict:
    """An alert_rule_test entry: ``alert`` fires at ``at`` with ``labels`` (None: it does not fire)."""
    if labels is None:
        return {"eval_time": at, "alertname": alert, "exp_alerts": []}
    description = {r["alert"]: r["annotations"]["description"] for r in rules()}[alert]
    description = description.replace("{{ $labels.scan_id }}", LABELS["scan_id"])
    return {"eval_time": at, "alertname": alert,
            "exp_alerts": [{"exp_labels": labels, "exp_annotations": {"summary": summary, "description": description}}]}


def test_the_alerts_fire_when_they_should(promtool, tmp_path):
    ticket = {**LABELS, "severity": "ticket"}
    tests = [
        {  # a scan succeeded at t=0 and none since: silent for 3 h, then pages
            "interval": "1m",
            "input_series": [series(LAST_SUCCESS, "0x300"), series("genscan_scan_errors", "0x300"),
                             series("genscan_scan_scored", "100x300"), series("genscan_scan_exit_code", "0x300")],
            "alert_rule_test": [
                expect("GenscanNoSuccessfulScan", "2h"),
                expect("GenscanNoSuccessfulScan", "3h30m", labels={"input": "s3://uploads/", "severity": "page"},
                       summary="No successful genscan scan of s3://uploads/ for 3h 30m 0s"),
                expect("GenscanScanErrors", "3h30m"),
                expect("GenscanScanFailed", "3h30m"),
            ],
        },
        {  # S3 down while fetching: every row an error, exit 7
            "interval": "1m",
            "input_series": [series("genscan_scan_errors", "12x10"), series("genscan_scan_scored", "0x10"),
                             series("genscan_scan_exit_code", "7x10")],
            "alert_rule_test": [
                expect("GenscanScanErrors", "5m", labels=ticket,
                       summary="genscan scan s of s3://uploads/: 100% of its rows are errors"),
                expect("GenscanScanFailed", "5m"),  # exit 7 is the errors alert's
            ],
        },
        {  # storage unreachable while listing: exit 4, nothing listed
            "interval": "1m",
            "input_series": [series("genscan_scan_exit_code", "4x10")],
            "alert_rule_test": [expect("GenscanScanFailed", "5m", labels=ticket,
                                       summary="genscan scan s of s3://uploads/ exited 4")],
        },
    ]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({"rule_files": [str(ALERTS)], "evaluation_interval": "1m",
                                                         "tests": tests}))
    tested = subprocess.run([promtool, "test", "rules", str(tmp_path / "tests.yaml")], capture_output=True,
                            text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr
