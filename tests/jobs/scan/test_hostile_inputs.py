"""Scans of hostile inputs finish: every image-named entry gets exactly one row or a
counted skip, no program outside the scan runs, no secret reaches the report.

    pytest tests/jobs/scan/test_hostile_inputs.py

Scored in the driver (``--executor local``); the fetch and decode code is the one Ray
Data runs. Local listings of unlistable entries give one ListingSkipWarning.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs import storage
from jobs.report.page import page_thumbnail
from jobs.scan import ScanConfig, run
from jobs.storage import s3 as storage_s3
from tests.corpus import foreign_formats, stand_in_program
from tests.helpers import image_bytes, save_model

PASSWORD = "pw-Hq52-never-shown"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_model(tmp_path_factory.mktemp("model")))


@pytest.fixture
def ghostscript_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from PIL import EpsImagePlugin

    log = tmp_path / "gs.log"
    stand_in_program(tmp_path / "bin", "gs", log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None, raising=False)
    return log


def _scan(model: str, out: Path, **kw: object) -> tuple[object, dict[str, dict], list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run(ScanConfig(model=model, output=str(out), executor="local", batch_size=8, **kw))
    rows = {r["uri"]: r for r in pq.read_table(summary.report).to_pylist()}
    assert len(rows) == summary.listed  # one row per listed object, no duplicates
    return summary, rows, [str(w.message) for w in caught if issubclass(w.category, storage.ListingSkipWarning)]


def _hostile_folder(root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[set[str], dict[str, bytes]]:
    """Files that must be rows, and foreign-format bodies under image names."""
    root.mkdir()
    (root / "ok.jpg").write_bytes(image_bytes(False, 0))
    foreign = {f"foreign/{fmt}.jpg": data for fmt, data in foreign_formats().items()}
    (root / "foreign").mkdir()
    for name, data in foreign.items():
        (root / name).write_bytes(data)
    (root / "a.jpg").symlink_to(root / "b.jpg")
    (root / "b.jpg").symlink_to(root / "a.jpg")
    (root / "self.jpg").symlink_to(root / "self.jpg")
    with open(os.fsencode(root) + b"/bad\xff.jpg", "wb") as f:
        f.write(image_bytes(False, 1))
    os.mkfifo(root / "pipe.jpg")
    deep = str(root)
    for _ in range(1100):
        deep = os.path.join(deep, "d")
        os.mkdir(deep)
    Path(deep, "bottom.png").write_bytes(image_bytes(True, 2))
    (root / "locked").mkdir()
    (root / "locked" / "hidden.jpg").write_bytes(image_bytes(True, 3))
    scandir = os.scandir  # unreadable as for a user without the right (tests run as root)

    def refusing(path: str = ".") -> object:
        if not isinstance(path, int) and os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    return {str(root / "ok.jpg"), os.path.join(deep, "bottom.png"), *(str(root / n) for n in foreign)}, foreign


def test_a_hostile_folder_scan_finishes_with_a_row_or_a_counted_skip_each(
        tmp_path: Path, model: str, monkeypatch: pytest.MonkeyPatch, ghostscript_log: Path) -> None:
    try:
        files, foreign = _hostile_folder(tmp_path / "input", monkeypatch)
        summary, rows, skips = _scan(model, tmp_path / "out", input=str(tmp_path / "input"))
    finally:
        _remove_deep(tmp_path / "input")
    assert set(rows) == files and summary.scored == 2
    for name in foreign:
        assert rows[str(tmp_path / "input" / name)]["error"].startswith("decode: not a recognised image format")
    assert not ghostscript_log.exists(), ghostscript_log.read_text()
    # a, b, self (loops), bad\xff (not UTF-8), pipe (FIFO), locked/ (unreadable): counted in the summary and marker
    skipped = dict(summary.dropped)
    assert sum(skipped.values()) == 6 and skipped["listing: not listable (OSError: Too many levels of symbolic links)"] == 3
    assert json.loads(Path(summary.marker).read_text())["dropped"] == skipped
    assert not skips  # reported through the summary, so no warning is needed
    assert all(page_thumbnail(data) is None for data in foreign.values())  # the review page too
    assert page_thumbnail(image_bytes(False, 0)).startswith("data:image/jpeg;base64,")
    assert not ghostscript_log.exists()


def _remove_deep(root: Path) -> None:
    """Remove the deep chain level by level (pytest's clean-up recurses)."""
    deep = str(root)
    while os.path.isdir(os.path.join(deep, "d")) and not os.path.islink(os.path.join(deep, "d")):
        deep = os.path.join(deep, "d")
    for name in os.listdir(deep):
        os.unlink(os.path.join(deep, name))
    while deep != str(root):
        os.rmdir(deep)
        deep = os.path.dirname(deep)


def test_manifest_entries_that_are_not_regular_files_are_error_rows(tmp_path: Path, model: str) -> None:
    """A FIFO would hang the read, /dev/zero would never end (--max-bytes 1000000)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "ok.jpg").write_bytes(image_bytes(False, 0))
    os.mkfifo(data / "pipe.jpg")
    (data / "zero.jpg").symlink_to("/dev/zero")
    (data / "self.jpg").symlink_to(data / "self.jpg")
    (data / "folder.jpg").mkdir()
    names = ["ok.jpg", "pipe.jpg", "zero.jpg", "self.jpg", "folder.jpg"]
    (tmp_path / "list.csv").write_text("uri\n" + "".join(f"data/{n}\n" for n in names))
    done: list[object] = []
    scan = threading.Thread(target=lambda: done.append(
        _scan(model, tmp_path / "out", manifest=str(tmp_path / "list.csv"), max_bytes=1_000_000,
              allow_prefix=("*",))), daemon=True)  # "*": the link to /dev/zero must reach the read
    scan.start()
    scan.join(120)
    if scan.is_alive():  # release a read blocked on the FIFO so that the test ends
        os.close(os.open(data / "pipe.jpg", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the scan hung on a FIFO")
    summary, rows, _ = done[0]
    errors = {os.path.basename(u): r["error"] for u, r in rows.items()}
    assert summary.scored == 1 and errors["ok.jpg"] is None and len(errors) == 5
    assert "FIFO (named pipe), not a regular file" in errors["pipe.jpg"]
    assert "character device, not a regular file" in errors["zero.jpg"]
    assert "Too many levels of symbolic links" in errors["self.jpg"]
    assert "a folder, not a regular file" in errors["folder.jpg"]


@pytest.fixture
def dropping_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """AWS_ENDPOINT_URL with user:password, at a server that accepts and closes every
    connection; fast retries so that each object fails in about a second."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://alice:{PASSWORD}@127.0.0.1:{server.getsockname()[1]}")
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test-secret"), ("AWS_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(storage_s3, "TRANSIENT_RETRY_S", 0.3)
    new_client = storage_s3._new_client
    fast = {"retries": {"mode": "standard", "total_max_attempts": 1}, "connect_timeout": 1, "read_timeout": 1}
    monkeypatch.setattr(storage_s3, "_new_client", lambda settings=None, **config: new_client(settings, **fast, **config))
    yield PASSWORD
    server.close()


def test_dropped_connections_leave_no_password_in_the_report_or_the_traceback(
        tmp_path: Path, model: str, dropping_endpoint: str) -> None:
    (tmp_path / "list.csv").write_text("uri\ns3://uploads/a.jpg\ns3://uploads/b.png\n")
    summary, rows, _ = _scan(model, tmp_path / "out", manifest=str(tmp_path / "list.csv"), allow_prefix=("s3://uploads",))
    assert not any(dropping_endpoint in r["error"] for r in rows.values())
    for path in Path(summary.report).rglob("*"):  # raw bytes too: footers, statistics
        assert path.is_dir() or dropping_endpoint.encode() not in path.read_bytes(), path
    assert summary.errors == 2 and all("cannot reach S3" in r["error"] for r in rows.values())
    with pytest.raises(ConnectionError) as caught:  # listing fails: what main would print
        run(ScanConfig(model=model, output=str(tmp_path / "out2"), input="s3://uploads/", executor="local"))
    assert dropping_endpoint not in "".join(traceback.format_exception(caught.value))
