"""``jobs.train --metrics-push``: rank 0 pushes each epoch's metrics to a real Pushgateway;
scraped back, they are the epochs' numbers in metrics.json.

    .venv/bin/python -m pytest tests/jobs/train/test_train_metrics.py -q
"""

from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobs import storage
from jobs.train import TrainConfig, run
from tests.helpers import make_folders

pytestmark = pytest.mark.slow


def test_each_epoch_is_pushed(ray_local, tmp_path, pushgateway):
    data = make_folders(tmp_path / "data", n=8)
    output = str(tmp_path / "out")
    config = TrainConfig(data=str(data), output=output, preset="baseline", epochs=2, image_size=32, num_workers=1,
                         batch_size=8)
    run(config, metrics_push=pushgateway)
    history = json.loads(storage.read_bytes(storage.join(output, "metrics.json")))["history"]
    with urllib.request.urlopen(f"{pushgateway}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    got = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
           if s.labels.get("job") == "genscan_train" and s.labels.get("output") == output}
    last = history[-1]
    assert got["genscan_train_epoch"] == 2 == last["epoch"]
    for name, key in (("loss", "train_loss"), ("val_loss", "val_loss"), ("val_accuracy", "val_accuracy"),
                      ("val_auc", "val_auc"), ("epoch_seconds", "seconds")):
        assert got[f"genscan_train_{name}"] == pytest.approx(last[key], rel=1e-3, abs=1e-3), name
