"""Hostile manifests: entries that reach outside the manifest's folder or bucket, and rows
that used to vanish silently (a stray quote, padding, other schemes, duplicates).

    .venv/bin/python -m pytest tests/jobs/scan/test_hostile_manifest.py -q
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from jobs.scan import main
from jobs.storage.allowed import AllowedRoots
from jobs.storage.manifest import DUPLICATE, OUTSIDE, STRAY_QUOTE, Manifest
from tests.helpers import save_model, small_images


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("model") / "m", image_size=32)


def scan(model, tmp_path, manifest, *extra):
    out = tmp_path / "out"
    code = main(["--manifest", str(manifest), "--model", str(model), "--output", str(out), "--executor", "local",
                 "--scan-id", "s", "--thumbnails", "none",
                 "--max-error-fraction", "1", *extra])  # entries that fail to fetch are rows here, not a failure
    marker = json.loads((out / "_scans" / "s.json").read_text()) if code == 0 else None
    uris = sorted(r["uri"] for r in pq.read_table(out / marker["report"]).to_pylist()) if marker else None
    return code, marker, uris


def test_entries_outside_the_manifests_folder_are_dropped_and_counted(model, tmp_path):
    inside = small_images(tmp_path / "lists" / "photos", 2)
    secret = small_images(tmp_path / "private", 1, prefix="secret")[0]
    (tmp_path / "lists" / "photos" / "link.jpg").symlink_to(secret)  # inside by name, outside in fact
    entries = ["photos/img0.jpg", str(inside[1]), "../private/secret0.jpg", str(secret), f"file://{secret}",
               "photos/../../private/secret0.jpg", "photos/link.jpg", "s3://other-bucket/x.jpg"]
    manifest = tmp_path / "lists" / "m.csv"
    manifest.write_text("uri\n" + "\n".join(entries) + "\n")
    code, marker, uris = scan(model, tmp_path, manifest)
    assert code == 0
    assert uris == sorted(str(p) for p in inside)
    assert marker["dropped"] == {OUTSIDE: 6} and marker["listed"] == 2

    code, marker, uris = scan(model, tmp_path / "again", manifest, "--allow-prefix", str(tmp_path / "private"),
                              "--allow-prefix", str(tmp_path / "lists"))
    assert code == 0 and marker["dropped"] == {OUTSIDE: 1, DUPLICATE: 3}  # s3 stays out; one secret row
    assert str(secret) in uris and len(uris) == 4  # img0, img1, secret (once), link.jpg (resolves into private/)

    code, marker, uris = scan(model, tmp_path / "all", manifest, "--allow-prefix", "*")
    assert code == 0 and "s3://other-bucket/x.jpg" in uris


@pytest.mark.parametrize("prefix, uri, allowed", [
    ("s3://bucket", "s3://bucket/a.jpg", True),
    ("s3://bucket", "s3://bucket-evil/a.jpg", False),
    ("s3://bucket/", "s3://bucketx/a.jpg", False),
    ("s3://bucket/photos", "s3://bucket/photos-evil/a.jpg", False),
    ("s3://bucket/photos/", "s3://bucket/photos/x/a.jpg", True),
    ("s3://bucket/photos", "s3://bucket/photos/../secrets/a.jpg", False),
    ("s3://bucket/photos", "s3://bucket/photos/..\\secrets/a.jpg", False),
    ("s3://bucket", "s3://bucket/../other/a.jpg", False),
    ("s3://bucket", "/etc/a.jpg", False),
    ("/srv/uploads", "/srv/uploads-evil/a.jpg", False),
    ("/srv/uploads/", "/srv/uploads/a/../b.jpg", True),
    ("/srv/uploads", "/srv/uploads/../etc/b.jpg", False),
    ("/srv/uploads", "s3://srv/uploads/a.jpg", False),
])
def test_prefixes_match_whole_segments_of_normalised_uris(prefix, uri, allowed):
    assert AllowedRoots([prefix]).allows(uri) is allowed


@pytest.mark.parametrize("bad", ["", "  ", "s3://", "s3://bucket/../x"])
def test_a_bad_allow_prefix_is_refused(bad):
    with pytest.raises(ValueError, match="allow-prefix"):
        AllowedRoots([bad])


def test_no_manifest_row_vanishes_silently(tmp_path):
    small_images(tmp_path, 4)
    (tmp_path / "quote.csv").write_text('uri\nimg0.jpg\n"img1.jpg\nimg2.jpg\nimg3.jpg\n')
    m = Manifest(str(tmp_path / "quote.csv"))
    assert [r["uri"] for t in m.tables() for r in t.to_pylist()] == [str(tmp_path / "img0.jpg")]
    assert m.dropped == {STRAY_QUOTE: 3} and "stray quote" in m.dropped_text()

    (tmp_path / "messy.csv").write_text(
        "uri\nimg0.jpg \n\timg1.jpg\t\n./img0.jpg\nhttp://example.com/a.jpg\nftp://h/b.jpg\n"
        f"{tmp_path}/img2.jpg\nfile://{tmp_path}/img2.jpg\nimg3.jpg\nimg3.jpg\n\n")
    m = Manifest(str(tmp_path / "messy.csv"))
    uris = [r["uri"] for t in m.tables() for r in t.to_pylist()]
    assert uris == [str(tmp_path / f"img{i}.jpg") for i in range(4)]
    assert m.dropped[DUPLICATE] == 3 and sum(n for why, n in m.dropped.items() if "scheme" in why) == 2
    assert "http" in m.dropped_text() and "ftp" in m.dropped_text()

    (tmp_path / "bytes.csv").write_bytes(b"uri\nimg0.jpg\nimg\xff\xfe1.jpg\nimg2.jpg\n")  # one name is not UTF-8
    m = Manifest(str(tmp_path / "bytes.csv"))
    assert [r["uri"] for t in m.tables() for r in t.to_pylist()] == [str(tmp_path / f"img{i}.jpg") for i in (0, 2)]
    assert m.dropped == {"not valid UTF-8": 1}


def test_the_scan_prints_and_records_the_dropped_rows(model, tmp_path, capsys):
    small_images(tmp_path / "in", 4)
    manifest = tmp_path / "in" / "m.csv"
    manifest.write_text('uri\nimg0.jpg\n"img1.jpg\nimg2.jpg\nimg3.jpg\nhttp://h/x.jpg\n')
    code, marker, uris = scan(model, tmp_path, manifest)
    assert code == 0 and uris == [str(tmp_path / "in" / "img0.jpg")]
    assert marker["dropped"] == {STRAY_QUOTE: 4}  # the quote swallowed the 3 lines after it
    captured = capsys.readouterr()
    assert "dropped 4 manifest rows" in captured.out and "stray quote" in captured.err
