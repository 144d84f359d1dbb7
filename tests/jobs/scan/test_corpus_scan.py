"""The hostile corpus scanned from a folder by the real scan job, the 48-megapixel photo
included (tests/jobs/scan/test_scan.py scans the corpus without it, and checks each row's
columns): the set of report URIs equals the image files on disk, the counts agree, the
big photo is scored at full size, and a decompression bomb is refused without its
pixels ever being allocated (peak RSS of a process decoding only the bomb).

    .venv/bin/python -m pytest tests/jobs/scan/test_corpus_scan.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.report import store as report_store
from jobs.scan import ScanConfig, run
from tests.corpus import ERROR, SCORED, big_photo, make_corpus, png_bomb
from tests.helpers import save_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
BIG = "ok/camera-48mp.jpg"
BOMB = "bad/decompression-bomb.png"


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("corpus")
    expected = make_corpus(root / "input")  # the 48 MP photo too
    config = ScanConfig(input=str(root / "input"), model=str(save_model(root / "model", image_size=32)),
                        output=str(root / "reports"), batch_size=8, thumbnails="flagged")
    summary = run(config)
    rows = report_store.open_reports(config.output).to_table().to_pylist()
    return root, expected, summary, {r["uri"]: r for r in rows}, rows


def test_every_file_on_disk_has_exactly_one_row(scanned):
    root, expected, summary, by_uri, rows = scanned
    on_disk = {str(Path(d) / f) for d, _, files in os.walk(root / "input") for f in files}
    images = {p for p in on_disk if Path(p).suffix.lower() in IMAGE_SUFFIXES}
    assert on_disk - images == {str(root / "input" / "notes.txt"), str(root / "input" / "ok" / "README")}
    assert len(rows) == len(by_uri)  # no URI twice
    assert set(by_uri) == images == {str(root / "input" / rel) for rel in expected}
    n_scored = sum(kind == SCORED for kind in expected.values())
    n_errors = sum(kind == ERROR for kind in expected.values())
    assert (summary.listed, summary.skipped, summary.scored, summary.errors) == (len(images), 0, n_scored, n_errors)
    marker = json.loads(Path(summary.marker).read_text())
    assert (marker["rows"], marker["scored"], marker["errors"]) == (len(images), n_scored, n_errors)


def test_valid_images_are_scored_and_broken_ones_say_why(scanned):
    root, expected, _, by_uri, _ = scanned
    for rel, kind in expected.items():
        row = by_uri[str(root / "input" / rel)]
        if kind == SCORED:
            assert row["error"] is None and 0.0 <= row["score"] <= 1.0 and row["label"] in ("real", "fake"), rel
            assert len(row["cam"]) == 1  # 32 px input: a 1 x 1 heat map
        else:
            assert row["error"].startswith(("fetch: ", "decode: ")) and len(row["error"]) > len("decode: ") + 5, rel
            assert row["score"] is None and row["label"] is None, rel
    assert "0 bytes" in by_uri[str(root / "input" / "bad/zero-bytes.jpg")]["error"]
    assert "not a recognised image format" in by_uri[str(root / "input" / "bad/not-an-image.png")]["error"]


def test_big_photo_is_scored_at_full_size_and_the_bomb_is_refused(scanned):
    root, _, _, by_uri, _ = scanned
    big = by_uri[str(root / "input" / BIG)]
    assert big["error"] is None and (big["width"], big["height"], big["format"]) == (8000, 6000, "JPEG")
    bomb = by_uri[str(root / "input" / BOMB)]
    assert "decompression bomb" in bomb["error"] and bomb["width"] is None


# A lean process: the detector package is entered without its __init__ (which imports
# torch: 20+ s and 300 MB on a loaded machine) to run decode_image, the scan's first
# step on every object, on each file in turn; prints the growth of its peak RSS per file.
PEAK_RSS = """
import sys, types
package = types.ModuleType("detector")
package.__path__ = ["detector"]
sys.modules["detector"] = package
from detector.decode import decode_image
from detector.errors import ImageDecodeError

def peak_mib():  # this process's own high-water mark (ru_maxrss would carry the parent's over exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) // 1024

for path, max_pixels in zip(sys.argv[1::2], sys.argv[2::2]):
    data = open(path, "rb").read()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current RSS
    before = peak_mib()
    try:
        decoded = decode_image(data, max_pixels=int(max_pixels))
        outcome = f"decoded {decoded.width}x{decoded.height}"
        del decoded
    except ImageDecodeError as e:
        outcome = str(e)
    print(peak_mib() - before, outcome.replace(chr(10), " "), sep="\t")
"""


def test_bombs_are_refused_without_allocating_their_pixels(tmp_path):
    """A 10 G-pixel PNG (over PIL's own guard), a 144 M-pixel one (over ours, under PIL's)
    and the 48 MP photo with --max-pixels below its size: 30 GB, 430 MB and 144 MB as RGB,
    each refused from its header with the peak RSS barely moved. The same photo decoded
    under the default limit is the control: there the peak RSS grows by its pixels."""
    files = {"bomb-10g.png": png_bomb(100_000, 100_000), "bomb-144m.png": png_bomb(12_000, 12_000),
             "photo.jpg": big_photo(48)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    assert (tmp_path / "bomb-10g.png").stat().st_size < 1000
    cases = [("bomb-10g.png", 100_000_000), ("bomb-144m.png", 100_000_000), ("photo.jpg", 40_000_000),
             ("photo.jpg", 100_000_000)]
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, *[str(x) for name, limit in cases
                                                            for x in (tmp_path / name, limit)]],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [line.split("\t") for line in done.stdout.strip().splitlines()]
    assert len(results) == len(cases), done.stdout
    (g1, bomb1), (g2, bomb2), (g3, photo_refused), (g4, photo) = [(int(g), o) for g, o in results]
    assert "decompression bomb" in bomb1 and "decompression bomb" in bomb2 and "144,000,000 pixels" in bomb2
    assert "8000x6000 = 48,000,000 pixels" in photo_refused and "--max-pixels" in photo_refused
    assert max(g1, g2, g3) < 32, f"refusing raised the peak RSS by {g1}, {g2}, {g3} MiB"
    assert photo == "decoded 8000x6000" and g4 > 100  # the measure sees a real decode
