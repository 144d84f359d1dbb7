"""The scan's parts without Ray: manifests, the incremental index, the fetch stage and the
Scorer called directly.

    .venv/bin/python -m pytest tests/jobs/scan/test_scan_parts.py -q
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from detector.checkpoint import save_checkpoint
from detector.model import build_model
from detector.presets import get_preset
from jobs.report.schema import FILE_SCHEMA
from jobs.scan import incremental
from jobs.scan.fetch import fetch_and_prepare
from jobs.scan.incremental import ScoredIndex
from jobs.scan.listing import LISTING_SCHEMA, list_input
from jobs.scan.scorer import Scorer
from jobs.storage.manifest import Manifest


def jpeg(color=(200, 30, 30), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def listed(**kwargs) -> pa.Table:
    tables = list(list_input(**kwargs))
    assert all(t.schema == LISTING_SCHEMA for t in tables)
    return pa.concat_tables(tables) if tables else LISTING_SCHEMA.empty_table()


def test_folder_listing_keeps_images_by_extension_in_chunks(tmp_path):
    for name in ("a.jpg", "b.PNG", "c.JpEg", "sub/d.webp", "notes.txt", "README", "e.jpg.bak"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    chunks = list(list_input(input=str(tmp_path), chunk_rows=3))
    assert [c.num_rows for c in chunks] == [3, 1]
    uris = pa.concat_tables(chunks)["uri"].to_pylist()
    assert sorted(u[len(str(tmp_path)) + 1:] for u in uris) == ["a.jpg", "b.PNG", "c.JpEg", "sub/d.webp"]
    assert all(pa.concat_tables(chunks)["etag"].to_pylist())


def test_csv_manifest_resolves_relative_paths_and_stats_local_files(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "x.jpg").write_bytes(jpeg())
    (tmp_path / "list.csv").write_text(
        "file,label\nimgs/x.jpg,real\n/elsewhere/missing.png,fake\ns3://b/k/y.JPG,real\nimgs/doc.pdf,real\n")
    # '*': this test lists entries outside the manifest's folder on purpose
    t = listed(manifest=Manifest(str(tmp_path / "list.csv"), allow_prefixes=["*"]), chunk_rows=2)
    rows = {r["uri"]: r for r in t.to_pylist()}
    assert set(rows) == {str(tmp_path / "imgs" / "x.jpg"), "/elsewhere/missing.png", "s3://b/k/y.JPG"}
    assert rows[str(tmp_path / "imgs" / "x.jpg")]["etag"] and rows[str(tmp_path / "imgs" / "x.jpg")]["size_bytes"] > 0
    assert rows["/elsewhere/missing.png"]["etag"] is None  # fetched later: an error row
    assert rows["s3://b/k/y.JPG"]["etag"] is None  # no etag in the manifest: always scored


def test_s3_inventory_parquet_manifest(tmp_path):
    inventory = pa.table({
        "bucket": ["uploads"] * 4,
        "key": ["2026/a.jpg", "2026/b.png", "2026/old.jpg", "2026/c.txt"],
        "size": pa.array([10, 20, 30, 40], pa.int64()),
        "e_tag": ["e1", "e2", "e3", "e4"],
        "is_latest": [True, True, False, True],
        "is_delete_marker": [False, False, False, False],
    })
    pq.write_table(inventory, tmp_path / "inventory.parquet")
    t = listed(manifest=Manifest(str(tmp_path / "inventory.parquet"), allow_prefixes=["s3://uploads"]))
    assert t.to_pylist() == [
        {"uri": "s3://uploads/2026/a.jpg", "etag": "e1", "size_bytes": 10},
        {"uri": "s3://uploads/2026/b.png", "etag": "e2", "size_bytes": 20},
    ]


def test_manifest_without_uri_columns_is_refused(tmp_path):
    (tmp_path / "m.csv").write_text("name,label\na.jpg,real\n")
    with pytest.raises(ValueError, match="needs a 'uri'"):
        listed(manifest=str(tmp_path / "m.csv"))
    with pytest.raises(FileNotFoundError, match="manifest"):
        listed(manifest=str(tmp_path / "nope.csv"))


def test_scored_index_is_exact_even_when_hashes_collide(monkeypatch):
    uris = pa.array([f"s3://b/{i}.jpg" for i in range(1000)])
    etags = pa.array([f"e{i}" for i in range(1000)])
    index = ScoredIndex(uris, etags)
    probe_uris = pa.array(["s3://b/5.jpg", "s3://b/5.jpg", "s3://b/new.jpg", "s3://b/7.jpg"])
    probe_etags = pa.array(["e5", "changed", "e1", None])
    assert index.contains(probe_uris, probe_etags).tolist() == [True, False, False, False]
    # every key hashing alike: a probe may miss (a re-score) but never wrongly match
    monkeypatch.setattr(incremental, "_hash", lambda keys: np.zeros(len(keys), np.uint64))
    collided = ScoredIndex(uris, etags)
    found = collided.contains(probe_uris, probe_etags)
    assert not found[1:].any()
    assert len(ScoredIndex(pa.array([], pa.string()), pa.array([], pa.string()))) == 0
    assert not ScoredIndex(pa.array([], pa.string()), pa.array([], pa.string())).contains(probe_uris, probe_etags).any()


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    save_checkpoint(folder, build_model("none"), preset=get_preset("baseline", image_size=32))
    return (folder / "model.safetensors").read_bytes()


def test_fetch_and_score_turn_every_failure_into_its_row(tmp_path, checkpoint_bytes):
    (tmp_path / "ok.jpg").write_bytes(jpeg())
    (tmp_path / "big.jpg").write_bytes(jpeg(size=(400, 300)))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    uris = [str(tmp_path / n) for n in ("ok.jpg", "big.jpg", "bad.png", "missing.jpg")]
    batch = {
        "uri": np.array(uris, dtype=object),
        "etag": np.array(["e"] * 4, dtype=object),
        "size_bytes": np.array([None, 10**9, None, None], dtype=object),  # big.jpg listed as 1 GB
    }
    prepared = fetch_and_prepare(batch, preset=get_preset("baseline", image_size=32).to_dict(),
                                 max_pixels=10**6, max_bytes=10**6, keep_view=True)
    assert prepared["tiles_shape"].tolist() == [[1, 3, 32, 32], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert len(prepared["tiles"][0]) == 3 * 32 * 32 and prepared["tiles"][1] == b""
    errors = list(prepared["error"])
    assert errors[0] == ""
    assert "over --max-bytes" in errors[1] and "not downloaded" in errors[1]
    assert errors[2].startswith("decode:") and errors[3].startswith("fetch: FileNotFoundError")
    table = Scorer(checkpoint_bytes, threshold=0.0, thumbnails="all")(prepared)
    assert table.schema == FILE_SCHEMA
    rows = table.to_pylist()
    assert rows[0]["error"] is None and rows[0]["flagged"] is True and rows[0]["label"] == "fake"
    assert (rows[0]["width"], rows[0]["height"], rows[0]["format"]) == (40, 30, "JPEG")
    assert Image.open(io.BytesIO(rows[0]["thumbnail"])).format == "JPEG"
    assert len(rows[0]["cam"]) == 1 and rows[0]["cam_width"] == 1  # 32 px -> 1 x 1
    for row in rows[1:]:
        assert row["error"] and row["score"] is None and row["label"] is None and row["thumbnail"] is None
        assert row["cam"] is None and row["width"] is None and row["threshold"] == 0.0
    assert rows[1]["size_bytes"] == 10**9 and rows[3]["size_bytes"] is None


def test_fetch_scorer_gives_the_two_stages_rows_even_with_calls_at_once(tmp_path, checkpoint_bytes):
    """The CPU pipeline's actor (fetch + score in one, two calls at once in Ray Data) gives
    what fetch_and_prepare then Scorer give, including error rows."""
    from concurrent.futures import ThreadPoolExecutor

    from jobs.scan.scorer import FetchScorer

    for i in range(6):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg(color=(40 * i, 255 - 30 * i, 90), size=(48 + 8 * i, 40)))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    uris = [str(tmp_path / f"{i}.jpg") for i in range(6)] + [str(tmp_path / "bad.png")]
    batches = [{"uri": np.array(u, dtype=object), "etag": np.array(["e"] * len(u), dtype=object),
                "size_bytes": np.array([None] * len(u), dtype=object)} for u in (uris[:4], uris[4:])]
    fetch = {"preset": get_preset("baseline", image_size=32).to_dict(),
             "max_pixels": 10**6, "max_bytes": 10**6}
    scorer = Scorer(checkpoint_bytes, thumbnails="all", runtime="torch")
    expected = [scorer(fetch_and_prepare(b, **fetch, keep_view=True)).to_pylist() for b in batches]
    fused = FetchScorer(checkpoint_bytes, thumbnails="all", runtime="torch", **fetch)
    with ThreadPoolExecutor(2) as pool:
        got = [t.to_pylist() for t in pool.map(fused, batches * 3)]
    assert [len(g) for g in got] == [4, 3] * 3
    for rows, want in zip(got, expected * 3):
        for row, ref in zip(rows, want):
            assert row["uri"] == ref["uri"] and row["error"] == ref["error"] and row["width"] == ref["width"]
            assert (row["score"] is None) == (ref["score"] is None)
            if ref["score"] is not None:
                assert row["score"] == pytest.approx(ref["score"], abs=1e-6)
                np.testing.assert_allclose(row["cam"], ref["cam"], atol=1e-6)
    assert got[1][-1]["error"].startswith("decode:")
