"""The loop the review queue closes: decisions -> export -> jobs.train --init-from ->
jobs.evaluate against the moderators, on tiny images; and the same app on S3."""

from __future__ import annotations

import csv
import io
import json
from datetime import date

import pytest
from safetensors import safe_open

from detector.checkpoint import load_checkpoint
from jobs import evaluate, storage
from jobs import train as train_job
from jobs.report import ReportConfig
from jobs.report import run as run_report
from jobs.review import ReviewConfig
from jobs.review import main as review_main
from jobs.review.decisions import read_decisions
from tests.helpers import image_bytes, publish_synthetic, save_model
from tests.jobs.review.conftest import make_reports, running


def uploaded(folder, n: int = 16) -> list[str]:
    """``n`` tiny images, every other one with the "generated" stripes."""
    folder.mkdir()
    paths = []
    for i in range(n):
        path = folder / f"{i:02d}.png"
        path.write_bytes(image_bytes(fake=i % 2 == 1, seed=i))
        paths.append(str(path))
    return paths


@pytest.mark.slow
def test_decisions_export_train_init_from_and_evaluate(tmp_path, ray_local, capsys):
    uploads = uploaded(tmp_path / "uploads")
    reports = str(tmp_path / "reports")
    publish_synthetic(reports, "scan-1", date(2026, 6, 1), uploads, seed=1, errors=0, threshold=0.0)
    with running(ReviewConfig(reports=reports)) as app:
        rows = app.json("/api/queue?limit=50")["rows"]
        by_uri = {r["uri"]: r["id"] for r in rows}
        truth = {u: ("generated" if int(u[-6:-4]) % 2 else "real") for u in uploads}
        unsure = uploads[:2]
        app.decide([(by_uri[u], "unsure" if u in unsure else d) for u, d in truth.items()])
    labels = tmp_path / "labels.csv"
    assert review_main(["export", "--reports", reports, "--out", str(labels)]) == 0
    assert "exported 14 decided images" in capsys.readouterr().out
    manifest = list(csv.DictReader(io.StringIO(labels.read_text())))
    want = {u: "fake" if d == "generated" else "real" for u, d in truth.items() if u not in unsure}
    assert {r["uri"]: r["label"] for r in manifest} == want

    model = save_model(tmp_path / "model", image_size=32)  # its head leans towards "fake" on purpose
    out = tmp_path / "model-v2"
    common = ["--data", str(labels), "--init-from", str(model), "--allow-prefix", str(tmp_path / "uploads")]
    assert train_job.main([*common, "--output", str(out), "--epochs", "1", "--batch-size", "4",
                           "--num-workers", "1", "--cpus-per-worker", "1", "--lr", "0.0001"]) == 0
    tuned = load_checkpoint(out)
    assert tuned.preset.name == "baseline" and tuned.preset.image_size == 32  # taken from the model
    assert tuned.meta["training"]["init_from"] == str(model) and "fine-tuned from" in (out / "MODEL_CARD.md").read_text()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        head = f.get_tensor("fc.weight")
    # save_model's head is 0.5-1.5 for "fake" and -1.5 to -0.5 for "real"; one epoch at a small
    # learning rate moves it little, while a network trained from scratch starts near 0
    assert 0.4 < float(head[0].mean()) < 1.6 and -1.6 < float(head[1].mean()) < -0.4

    result = tmp_path / "eval.json"
    assert evaluate.main(["--data", str(labels), "--model", str(out), "--json", str(result),
                          "--allow-prefix", str(tmp_path / "uploads")]) == 0
    measured = json.loads(result.read_text())
    assert measured["n"] == 14 and measured["n_fake"] == sum(v == "fake" for v in want.values())


def test_init_from_refuses_a_missing_or_contradicted_model(tmp_path, capsys):
    model = save_model(tmp_path / "model", image_size=32)
    base = ["--data", str(tmp_path / "labels.csv"), "--output", str(tmp_path / "out")]
    assert train_job.main([*base, "--init-from", str(tmp_path / "nothing")]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train failed: --init-from: no checkpoint" in err
    assert train_job.main([*base, "--init-from", str(model), "--arch", "resnet18-npr"]) == 3
    assert "is a resnet18 model with the baseline preset; --arch resnet18-npr contradicts it" in capsys.readouterr().err
    assert train_job.main([*base, "--init-from", str(model), "--preset", "native"]) == 3
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train_job.main([*base, "--init-from", str(model), "--weights", "imagenet"])
    assert e.value.code == 2 and "give one" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_app_and_export_on_s3(tmp_path, s3_server, s3_env, capsys):
    bucket = s3_server.create_bucket("review-s3")  # s3://review-s3
    reports = f"{bucket}/reports"
    storage.upload_dir(make_reports(tmp_path), reports)
    with running(ReviewConfig(reports=reports)) as app:
        ids = [r["id"] for r in app.json("/api/queue?scan_id=scan-1&limit=3")["rows"]]
        app.decide([(ids[0], "generated"), (ids[1], "real"), (ids[2], "unsure")])
        status, headers, jpeg = app.call(f"/api/thumbnail/{ids[0]}")
        assert status == 200 and jpeg[:2] == b"\xff\xd8"
    files = [i.uri for i in storage.list_objects(f"{reports}/_decisions/", extensions=None)]
    assert len(files) == 1 and files[0].endswith(".parquet")  # one file per request, on S3
    assert read_decisions(f"{reports}/_decisions").num_rows == 3
    with running(ReviewConfig(reports=reports)) as app:  # another session reads them from S3
        assert app.json("/api/queue?undecided=1&limit=200")["total"] == app.json("/api/meta")["counts"]["flagged"] - 3
    assert review_main(["export", "--reports", reports, "--out", f"{bucket}/labels.csv"]) == 0
    assert "1 fake (decided generated), 1 real; left out 1 unsure" in capsys.readouterr().out
    assert storage.read_bytes(f"{bucket}/labels.csv").decode().count("\n") == 3  # header + 2
    review = {r.scan_id: r for r in run_report(ReportConfig(input=reports)).reviews}
    assert review["scan-1"].reviewed == 3 and review["scan-1"].precision == 0.5
