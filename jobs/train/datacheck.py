"""Dataset check for jobs.train: do the classes differ in how their files were made?

A detector learns whatever separates the classes most easily. When the real images are
all JPEG and the fakes all PNG (the original project's data), or the classes come in
different sizes or JPEG qualities, the file format is that easiest signal: the model
then scores the container, not the generation traces, and fails on the first fake that
was saved as JPEG. This check reads a sample of up to ``SAMPLE_PER_CLASS`` files per
class (file headers only: PIL's ``Image.open`` parses the header and the JPEG
quantisation tables without decoding pixels) and compares, per class:

- file format (JPEG, PNG, WEBP, ...);
- image size, width x height;
- JPEG quality, estimated from the luminance quantisation table as the IJG (libjpeg)
  quality whose scaled standard table is nearest; tables that are not IJG-scaled get
  their nearest quality too (``jpeg_table`` says ``custom``).

It warns when the distributions differ, says why that matters and what to do.
``jobs.train`` runs it before training, prints the warnings and stores the whole
record in ``metrics.json`` (``data_check``).

    python -m jobs.train.datacheck ../shared/data/sd-coco-dev
"""

from __future__ import annotations

import hashlib
import io
import statistics
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any

from PIL import Image

from detector.decode import open_image
from detector.model import CLASSES
from jobs import storage
from jobs.train.data import LabelledData, Sample, list_labelled

SAMPLE_PER_CLASS = 200
# Warn when two classes' distributions are this far apart (total variation distance:
# half the summed absolute difference of the shares; 0 same, 1 disjoint).
MAX_FORMAT_TV = 0.2
MAX_SIZE_TV = 0.3
MAX_AREA_RATIO = 1.5  # of the classes' median pixel counts
MAX_QUALITY_GAP = 5  # of the classes' median JPEG quality
MAX_QUALITY_TV = 0.3
TOP = 8  # distribution entries kept per class in the record

WHAT_TO_DO = ("Re-encode both classes the same way (same format, a common size by cropping, "
              "and the same JPEG quality), or train with --preset native, whose random crops at "
              "native resolution and JPEG re-compression and blur augmentation apply to both "
              "classes and so hide these differences.")


@dataclass(frozen=True)
class FileFacts:
    format: str  # "JPEG", "PNG", ...; "unreadable" when PIL cannot open it
    width: int = 0
    height: int = 0
    jpeg_quality: int | None = None
    jpeg_table: str | None = None  # "ijg" or "custom"


def file_facts(data: bytes) -> FileFacts:
    """Format, size and JPEG quality from the header of one image file."""
    try:
        with open_image(data) as img:  # lazy: reads the header, decodes no pixels; allow-listed formats only
            quality, table = (None, None)
            if img.format == "JPEG" and getattr(img, "quantization", None):
                quality, table = jpeg_quality(img.quantization)
            return FileFacts(img.format or "unknown", img.width, img.height, quality, table)
    except Exception:  # PIL raises many types for a damaged header
        return FileFacts("unreadable")


@cache
def _standard_luma_table() -> tuple[int, ...]:
    """The IJG standard luminance table (JPEG Annex K) in the order PIL reports tables:
    quality 50 scales it by exactly 1."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG", quality=50)
    buf.seek(0)
    return tuple(open_image(buf.getvalue()).quantization[0])


def _ijg_table(quality: int) -> list[int]:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [min(255, max(1, (t * scale + 50) // 100)) for t in _standard_luma_table()]


def jpeg_quality(qtables: dict[int, Any]) -> tuple[int | None, str | None]:
    """``(quality 1-100, "ijg" | "custom")`` estimated from PIL's ``img.quantization``."""
    luma = list(qtables.get(0, []))
    if len(luma) != 64:
        return None, None
    errors = {q: sum(abs(a - b) for a, b in zip(_ijg_table(q), luma)) for q in range(1, 101)}
    best = min(errors, key=lambda q: (errors[q], -q))
    return best, "ijg" if errors[best] == 0 else "custom"


def check(data: LabelledData, *, per_class: int = SAMPLE_PER_CLASS, seed: int = 0,
          threads: int = 8) -> dict[str, Any]:
    """Compare the classes of ``data`` (train and validation together) on a sample.

    Returns ``{"sample_per_class", "classes": {name: summary}, "warnings": [str]}``."""
    samples = list(data.train) + list(data.validation)
    chosen = {name: _sample([s for s in samples if s.label == i], per_class, seed)
              for i, name in enumerate(CLASSES)}

    def facts(s: Sample) -> FileFacts:
        try:
            return file_facts(storage.read_bytes(s.uri))
        except OSError:
            return FileFacts("unreadable")

    with ThreadPoolExecutor(threads) as pool:
        found = {name: list(pool.map(facts, members)) for name, members in chosen.items()}
    return {"sample_per_class": per_class,
            "classes": {name: summarize(f) for name, f in found.items()},
            "warnings": compare(found)}


def _sample(members: list[Sample], n: int, seed: int) -> list[Sample]:
    return sorted(members, key=lambda s: hashlib.sha256(f"datacheck:{seed}:{s.uri}".encode()).digest())[:n]


def summarize(facts: list[FileFacts]) -> dict[str, Any]:
    readable = [f for f in facts if f.format != "unreadable"]
    qualities = [f.jpeg_quality for f in readable if f.jpeg_quality is not None]
    return {
        "files": len(facts),
        "unreadable": len(facts) - len(readable),
        "format": _shares(f.format for f in readable),
        "size": _shares(f"{f.width}x{f.height}" for f in readable),
        "median_pixels": statistics.median(f.width * f.height for f in readable) if readable else None,
        "jpeg_quality": _shares(str(q) for q in qualities),
        "median_jpeg_quality": statistics.median(qualities) if qualities else None,
        "jpeg_tables": _shares(f.jpeg_table for f in readable if f.jpeg_table),
    }


def compare(found: dict[str, list[FileFacts]]) -> list[str]:
    """Warnings, one per way the classes differ (two classes: fake and real)."""
    (name_a, a), (name_b, b) = [(n, [f for f in fs if f.format != "unreadable"]) for n, fs in found.items()]
    if not a or not b:
        return []
    warnings = []
    fmt_a, fmt_b = Counter(f.format for f in a), Counter(f.format for f in b)
    if _tv(fmt_a, fmt_b) > MAX_FORMAT_TV:
        warnings.append(
            f"file format differs between the classes: {name_a} {_describe(fmt_a)}, {name_b} {_describe(fmt_b)}. "
            f"A detector can learn the format (compression artefacts or their absence) instead of the "
            f"generation traces, and then miss fakes saved as {_top(fmt_b if fmt_a.most_common(1)[0][0] != 'JPEG' else fmt_a)}. "
            + WHAT_TO_DO)
    size_a, size_b = Counter(f"{f.width}x{f.height}" for f in a), Counter(f"{f.width}x{f.height}" for f in b)
    area_a = statistics.median(f.width * f.height for f in a)
    area_b = statistics.median(f.width * f.height for f in b)
    ratio = max(area_a, area_b) / max(1, min(area_a, area_b))
    if _tv(size_a, size_b) > MAX_SIZE_TV or ratio > MAX_AREA_RATIO:
        warnings.append(
            f"image sizes differ between the classes: {name_a} {_describe(size_a)}, {name_b} {_describe(size_b)} "
            f"(median pixels {area_a:,.0f} vs {area_b:,.0f}). A detector can learn the size, or the "
            f"resampling that made it, instead of the generation traces (the baseline preset resizes "
            f"every image to one size, which leaves different resampling traces per class). " + WHAT_TO_DO)
    q_a = [f.jpeg_quality for f in a if f.jpeg_quality is not None]
    q_b = [f.jpeg_quality for f in b if f.jpeg_quality is not None]
    if q_a and q_b:
        med_a, med_b = statistics.median(q_a), statistics.median(q_b)
        if abs(med_a - med_b) >= MAX_QUALITY_GAP or _tv(Counter(q_a), Counter(q_b)) > MAX_QUALITY_TV:
            warnings.append(
                f"JPEG quality differs between the classes: {name_a} median {med_a:g} ({_describe(Counter(q_a))}), "
                f"{name_b} median {med_b:g} ({_describe(Counter(q_b))}). A detector can learn the strength of "
                f"JPEG compression instead of the generation traces, and then flag any real photo "
                f"compressed like the fakes. " + WHAT_TO_DO)
    return warnings


def _shares(values) -> dict[str, float]:
    counts = Counter(values)
    total = sum(counts.values())
    return {k: round(n / total, 3) for k, n in counts.most_common(TOP)} if total else {}


def _tv(a: Counter, b: Counter) -> float:
    na, nb = sum(a.values()), sum(b.values())
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in a.keys() | b.keys())


def _describe(c: Counter) -> str:
    total = sum(c.values())
    return ", ".join(f"{k} {n / total:.0%}" for k, n in c.most_common(3)) + (" ..." if len(c) > 3 else "")


def _top(c: Counter) -> str:
    return str(c.most_common(1)[0][0])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m jobs.train.datacheck", description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="labelled images, as jobs.train --data")
    p.add_argument("--per-class", type=int, default=SAMPLE_PER_CLASS, help="files sampled per class")
    args = p.parse_args(argv)
    result = check(list_labelled(args.data), per_class=args.per_class)
    json.dump(result, sys.stdout, indent=1)
    print()
    for w in result["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
