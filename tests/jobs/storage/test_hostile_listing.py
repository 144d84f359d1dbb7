"""Local listings of hostile trees: an entry that cannot be listed is a counted skip with
its reason (``storage.ListingStats``), never the end of the listing.

    pytest tests/jobs/storage/test_hostile_listing.py
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs import storage


def _listed(root: Path, stats: storage.ListingStats | None = None) -> list[str]:
    return [os.path.relpath(info.uri, root) for info in storage.list_objects(root, stats=stats)]


def test_symlink_loops_and_dangling_links_are_counted_skips(tmp_path: Path) -> None:
    (tmp_path / "ok.jpg").write_bytes(b"x")
    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")
    (tmp_path / "self.jpg").symlink_to(tmp_path / "self.jpg")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nothing-here.png")
    (tmp_path / "loop-dir").symlink_to(tmp_path / "loop-dir")
    stats = storage.ListingStats()
    assert _listed(tmp_path, stats) == ["ok.jpg"]
    loops = [r for r in stats.skipped if "Too many levels of symbolic links" in r]
    assert sum(stats.skipped[r] for r in loops) == 3, stats.skipped  # a.jpg, b.jpg, self.jpg
    assert stats.total == 4 and any("gone.png" in n for names in stats.examples.values() for n in names)


def test_without_stats_the_skips_are_one_warning(tmp_path: Path) -> None:
    (tmp_path / "ok.jpg").write_bytes(b"x")
    (tmp_path / "self.jpg").symlink_to(tmp_path / "self.jpg")
    with pytest.warns(storage.ListingSkipWarning, match=r"skipped 1 entries: 1 not listable .*self\.jpg"):
        assert _listed(tmp_path) == ["ok.jpg"]


def test_an_unreadable_subfolder_is_a_counted_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a/1.jpg", "locked/2.jpg", "z/3.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    if os.geteuid() == 0:  # root reads through chmod 000: refuse the way the kernel would
        scandir = os.scandir

        def refusing(path: str = ".") -> object:
            if not isinstance(path, int) and os.path.basename(os.fspath(path)) == "locked":
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return scandir(path)

        monkeypatch.setattr(os, "scandir", refusing)
    (tmp_path / "locked").chmod(0)
    try:
        stats = storage.ListingStats()
        assert _listed(tmp_path, stats) == ["a/1.jpg", "z/3.jpg"]
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert stats.skipped == {"folder not readable (PermissionError: Permission denied)": 1}
    assert stats.examples[next(iter(stats.skipped))] == [repr(str(tmp_path / "locked"))]


@pytest.fixture
def deep_tree(tmp_path: Path) -> Iterator[str]:
    """1500 nested folders (3000 characters: under PATH_MAX), made and removed one level
    at a time: os.makedirs and shutil.rmtree (pytest's clean-up too) recurse."""
    deep = str(tmp_path)
    for _ in range(1500):
        deep = os.path.join(deep, "d")
        os.mkdir(deep)
    yield deep
    for name in os.listdir(deep):
        os.unlink(os.path.join(deep, name))
    while deep != str(tmp_path):
        os.rmdir(deep)
        deep = os.path.dirname(deep)


def test_a_tree_deeper_than_the_recursion_limit_is_walked(tmp_path: Path, deep_tree: str) -> None:
    Path(deep_tree, "bottom.png").write_bytes(b"x")
    (tmp_path / "top.png").write_bytes(b"x")
    stats = storage.ListingStats()
    assert [os.path.basename(p) for p in _listed(tmp_path, stats)] == ["bottom.png", "top.png"]
    assert stats.total == 0


def test_names_that_are_not_utf8_are_counted_skips(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    for name in (b"/bad\xff.jpg", b"/ok.jpg", b"/folder\xfe", b"/folder\xfe/inner.png", b"/notes\xff.txt"):
        path = root + name
        if name.endswith((b".jpg", b".png", b".txt")):
            with open(path, "wb") as f:
                f.write(b"x")
        else:
            os.mkdir(path)
    stats = storage.ListingStats()
    assert _listed(tmp_path, stats) == ["ok.jpg"]
    assert stats.skipped == {"name is not valid UTF-8": 2}  # the .txt is no image: not counted
    shown = stats.examples["name is not valid UTF-8"]
    assert all(n.encode("utf-8") for n in shown) and any("bad\\\\xff.jpg" in n for n in shown), shown


def test_special_files_with_image_names_are_counted_skips(tmp_path: Path) -> None:
    (tmp_path / "ok.jpg").write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe.jpg")
    os.mkfifo(tmp_path / "pipe.txt")  # not an image name: no row, no skip
    stats = storage.ListingStats()
    assert _listed(tmp_path, stats) == ["ok.jpg"]
    assert stats.skipped == {"a FIFO (named pipe), not a regular file": 1}


def test_a_swapped_file_with_its_mtime_restored_gets_a_new_etag(tmp_path: Path) -> None:
    """Same size, mtime set back: the ctime in the local etag still moves."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"real")
    before = os.stat(photo)
    [first] = storage.list_objects(tmp_path)
    photo.write_bytes(b"fake")  # same size
    os.utime(photo, ns=(before.st_atime_ns, before.st_mtime_ns))
    [second] = storage.list_objects(tmp_path)
    assert (second.size, second.last_modified) == (first.size, first.last_modified)
    assert second.etag != first.etag
