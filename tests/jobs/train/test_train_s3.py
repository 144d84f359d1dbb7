"""jobs.train reading labelled images from, and writing its output to, a real S3 server
(SeaweedFS on loopback).

Ray starts here with the server's AWS_* variables in its runtime environment, as a
cluster's nodes would have them: Ray Train's controller and workers open the bucket
with their own credentials (jobs.storage ships none inside pickles).
"""

from __future__ import annotations

import json
import os
import uuid

import pytest
import ray

from detector.checkpoint import load_checkpoint
from jobs import storage
from jobs.train import RUN_DIR, TrainConfig, run
from tests.helpers import PNG_MAGIC, make_folders

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_with_s3(s3_server):
    if ray.is_initialized():
        ray.shutdown()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, object_store_memory=256 * 1024 * 1024, include_dashboard=False,
             log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": s3_server.env()})
    yield
    ray.shutdown()


def test_s3_data_and_output(ray_with_s3, s3_server, s3_env, tmp_path):
    bucket = s3_server.create_bucket(f"t-{uuid.uuid4().hex[:12]}")
    storage.upload_dir(str(make_folders(tmp_path / "data", n=6)), f"{bucket}/labelled")
    out = f"{bucket}/models/v1"
    config = TrainConfig(data=f"{bucket}/labelled", output=out, epochs=1, image_size=32,
                         num_workers=2, batch_size=8)

    record = run(config)

    assert record["data"]["counts"] == {"train": {"fake": 5, "real": 5}, "validation": {"fake": 1, "real": 1}}
    assert record["data"]["skipped_count"] == 0
    assert json.loads(storage.read_bytes(storage.join(out, "metrics.json"))) == record
    assert storage.read_bytes(storage.join(out, "training_curves.png")).startswith(PNG_MAGIC)
    run_files = [o.uri for o in storage.list_objects(storage.join(out, RUN_DIR), extensions=None)]
    assert any("/checkpoint_epoch_0001/model.safetensors" in u for u in run_files)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(storage.read_bytes(storage.join(out, "model.safetensors")))
    assert load_checkpoint(tmp_path / "model").model_version == record["model_version"]
