"""jobs.train.datacheck: the classes' file format, size and JPEG quality are compared on tiny
images made here; a biased set warns, a balanced one does not."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.train import datacheck
from jobs.train.data import list_labelled


def write_image(path: Path, *, fmt: str = "JPEG", size: tuple[int, int] = (40, 30), quality: int = 90,
                seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))


def make_set(root: Path, real: dict, fake: dict, n: int = 6) -> Path:
    """``root/{real,fake}/`` with ``n`` images each, written with the given options."""
    for label, options in (("real", real), ("fake", fake)):
        ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[options.get("fmt", "JPEG")]
        for i in range(n):
            write_image(root / label / f"{label}{i}.{ext}", seed=i, **options)
    return root


def check(root: Path, **kw) -> dict:
    return datacheck.check(list_labelled(str(root)), **kw)


@pytest.mark.parametrize("quality", [10, 35, 50, 75, 90, 95, 100])
def test_jpeg_quality_is_recovered_from_the_quantisation_tables(quality):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "gray").save(buf, format="JPEG", quality=quality)
    facts = datacheck.file_facts(buf.getvalue())
    assert (facts.format, facts.width, facts.height) == ("JPEG", 16, 16)
    assert (facts.jpeg_quality, facts.jpeg_table) == (quality, "ijg")


def test_png_and_garbage_have_no_jpeg_quality():
    buf = io.BytesIO()
    Image.new("RGB", (5, 7)).save(buf, format="PNG")
    assert datacheck.file_facts(buf.getvalue()) == datacheck.FileFacts("PNG", 5, 7)
    assert datacheck.file_facts(b"not an image").format == "unreadable"


def test_a_balanced_set_gives_no_warning(tmp_path):
    root = make_set(tmp_path / "d", real=dict(quality=90), fake=dict(quality=90))
    result = check(root)
    assert result["warnings"] == []
    for summary in result["classes"].values():
        assert summary["format"] == {"JPEG": 1.0} and summary["size"] == {"40x30": 1.0}
        assert summary["median_jpeg_quality"] == 90 and summary["files"] == 6


def test_real_jpeg_and_fake_png_warns_about_the_format_and_says_what_to_do(tmp_path):
    root = make_set(tmp_path / "d", real=dict(fmt="JPEG"), fake=dict(fmt="PNG"))
    warnings = check(root)["warnings"]
    assert len(warnings) == 1
    assert "file format differs" in warnings[0] and "fake PNG 100%" in warnings[0] and "real JPEG 100%" in warnings[0]
    assert "instead of the generation traces" in warnings[0]
    assert "Re-encode both classes" in warnings[0] and "--preset native" in warnings[0]


def test_different_sizes_warn(tmp_path):
    root = make_set(tmp_path / "d", real=dict(size=(64, 48)), fake=dict(size=(32, 32)))
    warnings = check(root)["warnings"]
    assert len(warnings) == 1 and "image sizes differ" in warnings[0] and "64x48" in warnings[0]


def test_different_jpeg_quality_warns(tmp_path):
    root = make_set(tmp_path / "d", real=dict(quality=75), fake=dict(quality=95))
    warnings = check(root)["warnings"]
    assert len(warnings) == 1 and "JPEG quality differs" in warnings[0]
    assert "real median 75" in warnings[0] and "fake median 95" in warnings[0]


def test_a_small_mixed_difference_stays_quiet(tmp_path):
    # one PNG among ten JPEGs in one class: a share gap of 0.1, under the threshold
    root = make_set(tmp_path / "d", real=dict(), fake=dict(), n=10)
    (root / "fake" / "fake0.jpg").unlink()
    write_image(root / "fake" / "fake0.png", fmt="PNG")
    assert check(root)["warnings"] == []


def test_the_sample_is_bounded_and_deterministic(tmp_path):
    root = make_set(tmp_path / "d", real=dict(), fake=dict(fmt="PNG"), n=6)
    a, b = check(root, per_class=4), check(root, per_class=4)
    assert a == b and all(s["files"] == 4 for s in a["classes"].values())


def test_unreadable_files_are_counted_not_fatal(tmp_path):
    root = make_set(tmp_path / "d", real=dict(), fake=dict())
    (root / "fake" / "fake0.jpg").write_bytes(b"broken")
    result = check(root)
    assert result["classes"]["fake"]["unreadable"] == 1 and result["warnings"] == []
