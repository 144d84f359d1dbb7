"""Prometheus metrics of one run, through ``prometheus_client``: a fresh CollectorRegistry
per run, pushed to a Pushgateway (``--metrics-push``) and/or written in the node-exporter
textfile format (``--metrics-file``, atomically).

Scans (job ``genscan_scan``, grouped by ``input``; labels ``input`` and ``scan_id``):
``genscan_scan_{listed,skipped,scored,flagged,errors,seconds,images_per_second}``,
``genscan_scan_exit_code`` (jobs/cli.py) and, on success only,
``genscan_scan_last_success_timestamp_seconds``. A failed run replaces the other series
and keeps the previous success timestamp (Pushgateway: POST, which replaces only the
metric names pushed; textfile: carried over from the file), so ``time() - last success``
keeps counting. Training (job ``genscan_train``, grouped by ``output``), pushed after
each epoch: ``genscan_train_{epoch,loss,val_loss,val_accuracy,val_auc,epoch_seconds}``.
Label values pass through jobs.storage.redact (no URL credentials). Alert rules:
cluster/alerts.yaml.

    python -c "from jobs.observe.metrics import scan_registry; from prometheus_client import generate_latest as g; \\
print(g(scan_registry(input='s3://b/p', scan_id='x', counts={'listed': 3}, exit_code=0)).decode())"
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    push_to_gateway,
    pushadd_to_gateway,
    write_to_textfile,
)
from prometheus_client.parser import text_string_to_metric_families

from jobs.observe import logs
from jobs.storage.redaction import redact

SCAN_JOB, TRAIN_JOB = "genscan_scan", "genscan_train"
SCAN_GAUGES = {
    "listed": "objects listed (images by extension, or manifest rows kept)",
    "skipped": "objects skipped: already scored by this model (--mode incremental)",
    "scored": "report rows with a score",
    "flagged": "report rows flagged as generated",
    "errors": "report rows with an error (fetch or decode failed)",
    "seconds": "wall-clock seconds of the scan, listing and publishing included",
    "images_per_second": "report rows this run wrote per second (resumed rows left out)",
}
LAST_SUCCESS = "genscan_scan_last_success_timestamp_seconds"
TRAIN_GAUGES = {
    "epoch": "the last epoch finished (1-based)",
    "loss": "training loss of the last epoch",
    "val_loss": "validation loss of the last epoch",
    "val_accuracy": "validation accuracy of the last epoch",
    "val_auc": "validation ROC AUC of the last epoch",
    "epoch_seconds": "seconds the last epoch took",
}
PUSH_TIMEOUT_S = 10.0


def scan_registry(*, input: str, scan_id: str, counts: dict[str, float], exit_code: int,
                  finished_at: float | None = None) -> CollectorRegistry:
    """One scan's gauges (``counts``: SCAN_GAUGES keys; missing ones are 0)."""
    registry = CollectorRegistry()
    labels = {"input": redact(input), "scan_id": scan_id}
    for name, text in SCAN_GAUGES.items():
        _gauge(registry, f"genscan_scan_{name}", text, labels, counts.get(name, 0))
    _gauge(registry, "genscan_scan_exit_code", "exit code of the scan (0 ok; docs/OPERATIONS.md)", labels, exit_code)
    if exit_code == 0:
        _gauge(registry, LAST_SUCCESS, "when a scan of this input last succeeded (Unix time)", labels,
               time.time() if finished_at is None else finished_at)
    return registry


def train_registry(*, output: str, values: dict[str, float]) -> CollectorRegistry:
    """One epoch's gauges (``values``: TRAIN_GAUGES keys; missing ones are left out)."""
    registry = CollectorRegistry()
    labels = {"output": redact(output)}
    for name, text in TRAIN_GAUGES.items():
        if values.get(name) is not None:
            _gauge(registry, f"genscan_train_{name}", text, labels, values[name])
    return registry


def push_train_epoch(push: str | None, output: str, entry: dict[str, Any]) -> None:
    """Push one epoch's metrics (a jobs.train.loop history entry) when ``push`` is set."""
    if push:
        values = {"epoch": entry.get("epoch"), "loss": entry.get("train_loss"), "val_loss": entry.get("val_loss"),
                  "val_accuracy": entry.get("val_accuracy"), "val_auc": entry.get("val_auc"),
                  "epoch_seconds": entry.get("seconds")}
        export(train_registry(output=output, values=values), job=TRAIN_JOB, grouping={"output": output}, push=push)


def export(registry: CollectorRegistry, *, job: str, grouping: dict[str, str], push: str | None = None,
           file: str | None = None, succeeded: bool = True) -> None:
    """Push ``registry`` to the Pushgateway at ``push`` and/or write it to ``file``.
    ``succeeded``: replace the whole group (PUT); else only the metric names in it (POST),
    keeping the last success timestamp. Failures warn: metrics never fail a run."""
    grouping = {k: redact(v) for k, v in grouping.items()}
    if file:
        try:
            if not succeeded:
                _carry_last_success(registry, file)
            write_to_textfile(file, registry)  # a temporary file renamed over PATH
        except Exception as e:  # noqa: BLE001 (monitoring must not fail the job)
            logs.warning(f"could not write metrics to {file}: {e}")
    if push:
        send = push_to_gateway if succeeded else pushadd_to_gateway
        try:
            send(push, job=job, registry=registry, grouping_key=grouping, timeout=PUSH_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001
            logs.warning(f"could not push metrics to {redact(push)}: {e}")


def _gauge(registry: CollectorRegistry, name: str, text: str, labels: dict[str, str], value: float) -> None:
    Gauge(name, text, list(labels), registry=registry).labels(**labels).set(value)


def _carry_last_success(registry: CollectorRegistry, file: str) -> None:
    """Copy the success timestamp of the file's previous run into ``registry``."""
    try:
        with open(file, encoding="utf-8") as f:
            families = list(text_string_to_metric_families(f.read()))
    except (OSError, ValueError):
        return
    samples: list[Any] = [s for fam in families if fam.name == LAST_SUCCESS for s in fam.samples]
    if samples:
        gauge = Gauge(LAST_SUCCESS, "when a scan of this input last succeeded (Unix time)",
                      list(samples[0].labels), registry=registry)
        for sample in samples:
            gauge.labels(**sample.labels).set(sample.value)
