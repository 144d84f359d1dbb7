"""Resuming a killed scan (jobs/scan/resume.py): a real ``python -m jobs.scan`` SIGKILLed at
about half way, then the same ``--scan-id`` run again, which scores only what the killed
run had not staged and publishes exactly one row per object; and the rules for which
staged parts are reused (whole files of the same settings only).

    .venv/bin/python -m pytest tests/jobs/scan/test_resume.py -q
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import replace
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs import cli, storage
from jobs.report import store as report_store
from jobs.scan import ScanConfig, main
from jobs.scan.listing import Listing, scan_listing
from jobs.scan.resume import fingerprint, load_listing, reuse_staged, save_listing
from tests.helpers import image_bytes, save_model

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(save_model(tmp_path_factory.mktemp("model") / "m", image_size=32))


def tiny_images(folder: Path, n: int) -> dict[str, bytes]:
    """{relative name: PNG bytes} of ``n`` 32 px pictures in ten subfolders, written under ``folder``."""
    made = {f"d{i % 10}/img{i:05d}.png": image_bytes(i % 2 == 0, i) for i in range(n)}
    for name, data in made.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return made


def staged_parts(output: str, scan_id: str) -> list[str]:
    try:
        infos = storage.list_objects(storage.join(output, "_staging", scan_id), extensions=frozenset({".parquet"}))
        return [i.uri for i in infos if "/data/part-" in i.uri]
    except FileNotFoundError:
        return []


def kill_half_way(argv: list[str], output: str, scan_id: str, parts: int, log: Path, env: dict | None = None) -> int:
    """Run ``python -m jobs.scan argv``, SIGKILL it once ``parts`` staged parts exist; the
    rows those parts hold."""
    with open(log, "wb") as out:
        driver = subprocess.Popen([sys.executable, "-m", "jobs.scan", *argv], cwd=REPO, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + 180
        while len(staged_parts(output, scan_id)) < parts:
            assert driver.poll() is None, f"the scan ended before it was killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(30)
    assert not report_store.published_scans(output)  # the killed run published nothing
    fs_rows = 0
    for uri in staged_parts(output, scan_id):
        fs, path = storage.pyarrow_filesystem(uri)
        try:
            fs_rows += pq.read_metadata(path, filesystem=fs).num_rows
        except Exception:  # noqa: BLE001 (a part cut short by the kill: not reusable)
            pass
    return fs_rows


def assert_one_row_each(output: str, scan_id: str, uris: set[str]) -> dict:
    rows = report_store.open_reports(output).to_table(columns=["uri", "scan_id", "error"]).to_pylist()
    counts = Counter(r["uri"] for r in rows if r["scan_id"] == scan_id)
    assert set(counts) == uris and set(counts.values()) == {1}  # nothing lost, nothing twice
    assert not [r for r in rows if r["error"]]
    [marker] = report_store.published_scans(output)
    assert marker["rows"] == marker["listed"] == marker["scored"] == len(uris)
    return marker


def test_a_killed_folder_scan_of_2000_images_resumes(model, tmp_path, capsys):
    made = tiny_images(tmp_path / "in", 2000)
    out = str(tmp_path / "out")
    argv = ["--input", str(tmp_path / "in"), "--model", model, "--output", out, "--scan-id", "nightly",
            "--executor", "local", "--runtime", "torch", "--thumbnails", "none", "--rows-per-file", "100"]
    staged = kill_half_way(argv, out, "nightly", parts=10, log=tmp_path / "killed.log")
    assert 500 <= staged < 2000, staged
    assert (tmp_path / "out" / "_staging" / "nightly" / "listing.json").exists()  # the listing was kept

    assert main(argv) == cli.OK
    err = capsys.readouterr().err
    marker = assert_one_row_each(out, "nightly", {str(tmp_path / "in" / name) for name in made})
    assert marker["resumed"] == staged and marker["listing_reused"] is True  # every complete part kept
    assert marker["rows"] - marker["resumed"] == 2000 - staged <= 1500  # what the second run scored
    assert f"{staged} rows staged by earlier attempts are kept, {2000 - staged} objects left to score" in err
    assert not (tmp_path / "out" / "_staging").exists()


def test_a_killed_bucket_scan_resumes(model, tmp_path, s3_server, s3_env, capsys):
    suffix = uuid.uuid4().hex[:8]
    uploads, reports = s3_server.create_bucket(f"up-{suffix}"), s3_server.create_bucket(f"rep-{suffix}")
    made = tiny_images(tmp_path / "in", 400)
    storage.upload_dir(str(tmp_path / "in"), uploads)
    out = storage.join(reports, "scans")
    argv = ["--input", uploads, "--model", model, "--output", out, "--scan-id", "bucket", "--executor", "local",
            "--runtime", "torch", "--thumbnails", "none", "--rows-per-file", "25", "--batch-size", "25"]
    staged = kill_half_way(argv, out, "bucket", parts=6, log=tmp_path / "killed.log", env=s3_server.env())
    assert 150 <= staged < 400, staged
    assert main(argv) == cli.OK, capsys.readouterr().err
    marker = assert_one_row_each(out, "bucket", {storage.join(uploads, name) for name in made})
    assert marker["resumed"] == staged and marker["rows"] - marker["resumed"] == 400 - staged
    assert not staged_parts(out, "bucket")  # staging cleared by the publish


def write_part(loc: report_store.ScanLocation, attempt: str, name: str, uris: list[str], etags: list[str]) -> Path:
    """A staged part of report rows for ``uris`` in ``attempt``'s folder (schema: the report's)."""
    import pyarrow as pa

    from jobs.report.schema import FILE_SCHEMA

    rows = {f.name: [None] * len(uris) for f in FILE_SCHEMA}
    rows.update(uri=uris, etag=etags, size_bytes=[1] * len(uris))
    path = Path(loc.staging_uri) / attempt / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(rows, schema=FILE_SCHEMA), path)
    return path


def test_only_whole_parts_of_the_same_listing_are_reused(tmp_path, model):
    small = tmp_path / "in"
    tiny_images(small, 12)
    config = ScanConfig(input=str(small), model=model, output=str(tmp_path / "out"), scan_id="rules")
    loc = report_store.ScanLocation(config.output, "rules", date(2026, 12, 2))
    listing = scan_listing(config, "rules", "v1")
    names = sorted(listing.blocks[0]["uri"].to_pylist())
    etag = dict(zip(listing.blocks[0]["uri"].to_pylist(), listing.blocks[0]["etag"].to_pylist()))
    whole = write_part(loc, "attempt-aa", "part-00000.parquet", names[:4], [etag[u] for u in names[:4]])
    cut = write_part(loc, "attempt-aa", "part-00001.parquet", names[4:8], [etag[u] for u in names[4:8]])
    cut.write_bytes(cut.read_bytes()[:-20])  # the kill cut it short: no footer
    write_part(loc, "attempt-bb", "part-00000.parquet", names[2:6], [etag[u] for u in names[2:6]])  # overlaps
    write_part(loc, "attempt-bb", "part-00001.parquet", names[8:10], ["changed", "changed"])  # other etags
    left, resumed = reuse_staged(loc, listing)
    assert resumed.parts == [str(whole)] and resumed.rows == 4
    assert sorted(u for b in left.blocks for u in b["uri"].to_pylist()) == names[4:]

    expected = fingerprint(config, "v1", 0.5)
    save_listing(loc, listing, expected)
    kept = load_listing(loc, expected)
    assert isinstance(kept, Listing) and kept.reused and (kept.listed, kept.skipped) == (12, 0)
    assert sorted(u for b in kept.blocks for u in b["uri"].to_pylist()) == names
    assert load_listing(loc, fingerprint(config, "v2", 0.5)) is None  # another model: list again
    assert load_listing(loc, fingerprint(replace(config, thumbnails="none"), "v1", 0.5)) is None
