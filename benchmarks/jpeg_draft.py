"""JPEG draft mode in the scan's decode: ``detector.inference.prepare`` (decode, resize to
the model input, thumbnail base) with and without ``Image.draft`` on large JPEGs.

A 512x512 image of ../shared/data/sd-coco-dev (generated noise when absent) is resized
(Lanczos) to photo sizes and saved as JPEG (quality 92); each is prepared 5 times with
the baseline preset (224) as the scan does (draft down to >= 2 x 224) and with draft
mode off. Prints the time per image of each, the ratio, and how far the model input and
the thumbnail base move (mean and max absolute difference in 0-255 levels).

    .venv/bin/python benchmarks/jpeg_draft.py
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import detector.inference as inference  # noqa: E402
from benchmarks.common import input_images, json_line, load_average, machine  # noqa: E402
from detector.presets import get_preset  # noqa: E402


def main() -> None:
    print(f"{machine()}; load average {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        src = Image.open(input_images(1, None, Path(tmp))[0]).convert("RGB")
    preset, margin, rows = get_preset("baseline"), inference.JPEG_DRAFT_MARGIN, []
    for w, h in ((1024, 768), (2048, 1536), (4032, 3024)):
        buf = io.BytesIO()
        src.resize((w, h), Image.Resampling.LANCZOS).save(buf, "JPEG", quality=92)
        data, out = buf.getvalue(), {}
        for draft in (False, True):
            inference.JPEG_DRAFT_MARGIN = margin if draft else 10**9  # 10**9: never drafts
            inference.prepare(data, preset)
            start = time.perf_counter()
            for _ in range(5):
                r = inference.prepare(data, preset)
            out[draft] = ((time.perf_counter() - start) / 5, r)
        inference.JPEG_DRAFT_MARGIN = margin
        (t0, a), (t1, b) = out[False], out[True]
        dp = np.abs(a.tiles.numpy().astype(int) - b.tiles.numpy().astype(int))
        dv = np.abs(a.view.astype(int) - b.view.astype(int))
        assert (a.width, a.height) == (b.width, b.height) == (w, h)
        rows.append({"size": f"{w}x{h}", "full_ms": 1000 * t0, "draft_ms": 1000 * t1, "speedup": t0 / t1,
                     "pixels_mean_abs": float(dp.mean()), "pixels_max_abs": int(dp.max()),
                     "view_mean_abs": float(dv.mean())})
        print(f"{w}x{h}: full decode {1000 * t0:.1f} ms, draft {1000 * t1:.1f} ms (x{t0 / t1:.2f}); model input "
              f"mean |diff| {dp.mean():.2f}, max {dp.max()}; thumbnail base mean |diff| {dv.mean():.2f}")
    print(json_line({"rows": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows]}))


if __name__ == "__main__":
    main()
