"""The scan job on a local folder: one row per image, error rows, thumbnails, heat maps
equal to pytorch-grad-cam's, readable by pandas, pyarrow and DuckDB, atomic publishing.

    .venv/bin/python -m pytest tests/jobs/scan/test_scan.py -q
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import shutil
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import psutil
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import ray
import torch
from PIL import Image

from detector.backends import available
from detector.checkpoint import load_checkpoint
from detector.explain import explain
from jobs.report import store as report_store
from jobs.report.schema import FILE_SCHEMA, REPORT_SCHEMA
from jobs.scan import ScanConfig, main, run
from tests.corpus import ERROR
from tests.helpers import make_input, save_model, upsample_cam

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def setup(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("scan")
    model = save_model(root / "model")
    expected = make_input(root / "input")
    config = ScanConfig(input=str(root / "input"), model=str(model), output=str(root / "reports"),
                        batch_size=8, concurrency=1, rows_per_file=20,
                        runtime="torch")  # the reference: heat maps and scores are compared exactly below
    summary = run(config)
    return root, config, expected, summary


def is_null(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def report(output) -> pd.DataFrame:
    return report_store.open_reports(str(output)).to_table().to_pandas()


def test_every_image_gets_exactly_one_row(setup):
    root, config, expected, summary = setup
    df = report(config.output)
    names = [str(Path(u).relative_to(root / "input")) for u in df["uri"]]
    assert sorted(names) == sorted(expected)  # no duplicates, nothing missing, no .txt/README
    assert summary.listed == len(expected) == summary.scored + summary.errors
    by_name = dict(zip(names, df.to_dict("records")))
    for name, kind in expected.items():
        row = by_name[name]
        if kind == ERROR:
            assert row["error"], name
            for column in ("label", "score", "flagged", "thumbnail", "cam", "width", "height", "format"):
                assert is_null(row[column]), (name, column, row[column])
        else:
            assert row["error"] is None or pd.isna(row["error"]), (name, row["error"])
            assert 0.0 <= row["score"] <= 1.0
            assert row["flagged"] == (row["score"] >= row["threshold"])
            assert row["label"] == ("fake" if row["flagged"] else "real")
            assert row["width"] > 0 and row["height"] > 0 and row["format"]
    assert by_name["broken.jpg"]["error"].startswith("decode:")
    assert by_name["bad/decompression-bomb.png"]["error"].startswith("decode:")
    assert (df["scan_id"] == summary.scan_id).all()
    assert set(df["model_version"]) == {summary.model_version}
    assert summary.errors == sum(k == ERROR for k in expected.values())
    assert summary.flagged == int(df["flagged"].fillna(False).sum())


def test_thumbnails_are_jpeg_with_the_heat_map(setup):
    _, config, _, _ = setup
    df = report(config.output)
    scored = df[df["error"].isna()]
    assert scored["thumbnail"].notna().all()  # --thumbnails all (the default)
    for data in scored["thumbnail"]:
        image = Image.open(io.BytesIO(data))
        assert image.format == "JPEG" and max(image.size) <= 224
    # cam: 2 x 2 for 64 px inputs, each map in [0, 1]
    assert all(len(c) == 4 and 0 <= min(c) and max(c) <= 1 for c in scored["cam"])


def test_report_reads_back_with_pandas_pyarrow_and_duckdb(setup):
    _, config, expected, summary = setup
    out = Path(config.output)
    # plain readers of the Hive folders (the _scans/ and _staging/ names are hidden)
    df = pd.read_parquet(out)
    assert len(df) == len(expected) and set(df["scan_id"].astype(str)) == {summary.scan_id}
    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == len(expected)
    # the published-scans dataset has the declared schema
    dataset = report_store.open_reports(str(out))
    assert dataset.schema == REPORT_SCHEMA
    con = duckdb.connect()
    rel = con.from_arrow(dataset)
    [(n, errors, flagged)] = rel.aggregate("count(*), count(error), count(*) FILTER (WHERE flagged)").fetchall()
    assert (n, errors, flagged) == (len(expected), summary.errors, summary.flagged)
    glob = f"{out}/scan_date=*/scan_id=*/*.parquet"
    [(scanned,)] = con.sql("SELECT count(*) FROM dataset WHERE error IS NULL").fetchall()  # by variable name
    assert scanned == summary.scored
    date = con.sql(f"SELECT DISTINCT scan_date FROM read_parquet('{glob}', hive_partitioning = true)").fetchall()
    assert [str(d[0]) for d in date] == [summary.scan_date]
    # Parquet layout: uncompressed thumbnails, bounded rows per file
    for f in summary.files:
        meta = pq.ParquetFile(out / f).metadata
        assert meta.num_rows <= config.rows_per_file
        assert meta.schema.to_arrow_schema().names == FILE_SCHEMA.names
        columns = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i) for i in range(meta.num_columns)}
        assert columns["thumbnail"].compression == "UNCOMPRESSED"
        assert columns["uri"].compression == "ZSTD"


def test_heat_maps_in_the_report_match_pytorch_grad_cam(setup):
    root, config, _, _ = setup
    df = report(config.output)
    rows = df[df["uri"].str.contains("/(?:real|fake)/", regex=True)].sort_values("uri")
    assert len(rows) == 4
    ckpt = load_checkpoint(Path(config.model))
    preset = ckpt.preset
    pixels = torch.cat([preset.prepare(Image.open(u).convert("RGB"))[0] for u in rows["uri"]])
    x = preset.normalize(pixels)
    reference = explain(ckpt.model, x, method="gradcam")  # (4, 64, 64), target: fake log-odds
    ours = torch.tensor(np.stack([np.asarray(c, np.float32).reshape(2, 2) for c in rows["cam"]]))
    assert reference.max() > 0.99
    np.testing.assert_allclose(upsample_cam(ours, (64, 64)).numpy(), reference, atol=1e-4)
    with torch.inference_mode():
        prob = torch.softmax(ckpt.model(x), dim=1)[:, 0].numpy()
    np.testing.assert_allclose(rows["score"].to_numpy(), prob, atol=1e-5)


@pytest.mark.skipif("openvino" not in available(), reason="openvino is not installed")
def test_openvino_scoring_actor_exits_without_crashing(setup, tmp_path):
    """The scoring actor (FetchScorer, a Ray threaded actor) exits once the report is
    written. It used to die of SIGSEGV on the way out (tstate_delete_common: OpenVINO infer
    requests freed with a Ray worker thread's thread-local storage), printing "Fatal Python
    error" into every OpenVINO scan's log. Ray writes a worker's stderr to its logs folder."""
    _, config, expected, _ = setup
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())  # no public API without the dashboard
    seen = {p: p.stat().st_size for p in logs.glob("worker-*.err")}
    summary = run(dataclasses.replace(config, runtime="openvino", output=str(tmp_path / "reports"), scan_id=None))
    assert summary.scored + summary.errors == len(expected)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _processes("FetchScorer"):
        time.sleep(0.5)
    assert not _processes("FetchScorer"), "the scoring actor did not exit within 60 s of the scan"
    crashed = [p.name for p in logs.glob("worker-*.err")
               if re.search(r"Fatal Python error|SIGSEGV", p.read_text(errors="replace")[seen.get(p, 0):])]
    assert not crashed, f"a worker crashed on the way out: {crashed}"


def _processes(title: str) -> list[int]:
    """PIDs of this test's descendants (its local Ray's workers) whose command line, Ray's
    proctitle, mentions ``title``."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if title in " ".join(child.cmdline()):
                found.append(child.pid)
        except psutil.Error:  # exited meanwhile
            continue
    return found


def test_killed_scan_is_invisible_and_rerunning_an_id_never_duplicates(setup, monkeypatch, capsys):
    root, config, expected, first = setup
    out = Path(config.output)
    # Another day's published scan, which nothing here may touch.
    other = out / "scan_date=2020-01-01" / "scan_id=old"
    other.mkdir(parents=True)
    shutil.copyfile(out / first.files[0], other / "part-00000-0.parquet")
    old_marker = json.loads((out / "_scans" / f"{first.scan_id}.json").read_text())
    old_marker |= {"scan_id": "old", "scan_date": "2020-01-01", "report": "scan_date=2020-01-01/scan_id=old",
                   "files": ["scan_date=2020-01-01/scan_id=old/part-00000-0.parquet"]}
    (out / "_scans" / "old.json").write_text(json.dumps(old_marker))
    before = {p: p.read_bytes() for p in [other / "part-00000-0.parquet", out / "_scans" / "old.json"]}
    rows_before = len(report(out))

    # A scan killed after writing its files but before publishing them.
    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(report_store, "publish", killed)
    with pytest.raises(KeyboardInterrupt):
        run(ScanConfig(**{**config.__dict__, "scan_id": "rerun", "thumbnails": "none"}))
    monkeypatch.undo()
    assert not (out / "_staging" / "rerun").exists()  # the interrupted attempt removed what it staged
    assert len(report(out)) == rows_before
    assert len(pd.read_parquet(out)) == rows_before
    assert not (out / "_scans" / "rerun.json").exists()

    threshold = float(np.median(report(out)["score"].dropna()))  # some rows flagged, some not
    argv = ["--input", config.input, "--model", config.model, "--output", str(out), "--scan-id", "rerun",
            "--thumbnails", "flagged", "--batch-size", "8", "--threshold", str(threshold),
            "--max-error-fraction", "1"]  # the corpus's broken files are error rows, not a failed scan
    for _ in range(2):  # after the killed attempt, and again
        assert main(argv) == 0
        df = report(out)
        mine = df[df["scan_id"] == "rerun"]
        assert sorted(mine["uri"]) == sorted(str(out.parent / "input" / n) for n in expected)
        assert len(df) == rows_before + len(expected)
    assert "scan rerun: listed" in capsys.readouterr().out
    assert np.allclose(mine["threshold"], threshold) and 0 < mine["flagged"].sum() < len(mine)
    assert mine.loc[mine["flagged"] != True, "thumbnail"].isna().all()  # noqa: E712 (--thumbnails flagged)
    assert mine.loc[mine["flagged"] == True, "thumbnail"].notna().all()  # noqa: E712
    assert not (out / "_staging" / "rerun").exists()
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(m["scan_id"] for m in report_store.published_scans(str(out))) == sorted(["old", first.scan_id, "rerun"])


@pytest.mark.parametrize("argv, message", [
    (["--model", "m", "--output", "o"], "either --input"),
    (["--input", "a", "--manifest", "b.csv", "--model", "m", "--output", "o"], "not both"),
    (["--input", "a", "--model", "m", "--output", "o", "--threshold", "1.5"], "--threshold must be in"),
    (["--input", "a", "--model", "m", "--output", "o", "--scan-id", "../x"], "--scan-id"),
    (["--input", "a", "--model", "m", "--output", "o", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--input", "a", "--model", "m", "--output", "o", "--thumbnail", "all"], "unrecognized"),
])
def test_bad_flags_fail_early_saying_what_to_do(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
