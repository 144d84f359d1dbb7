"""Evaluate a detector on labelled images: how well it separates real from generated,
and how well that survives the transformations images meet on the way to a bucket.

    python -m jobs.evaluate --data ../shared/data/cifake-4k --model OUT --json eval.json
    python -m jobs.evaluate --data ../shared/data/sd-coco-dev --model OUT --split validation \
        --robustness jpeg90,jpeg75,jpeg50,downscale0.5,upscale1.5,crop --plots eval-plots/

``--data`` takes the same layouts as ``jobs.train`` (``real/``+``fake/`` folders, the
original's ``train``/``validation`` folders, or a manifest). ``--split validation`` with the
training run's ``--data`` path, ``--seed`` and ``--val-fraction`` evaluates exactly its
held-out part; the split hashes each image's whole path, so a model records a digest of
its held-out images and a split that does not match it is refused.

Reported (fake is the positive class): accuracy and the confusion matrix at the
checkpoint's threshold, balanced accuracy, ROC AUC, average precision, TPR at 1% and 5%
FPR, a per-subfolder breakdown; with ``--robustness`` the same on transformed copies
made on the fly (JPEG re-compression, 0.5x downscale, centre crop), with the AUC change.
With both classes present, 95% bootstrap intervals of AUC and TPR (``intervals``) and of
each AUC change (paired: the same resamples before and after) say which differences this
many images can show.
"""

from __future__ import annotations

import argparse
import json
import math
import posixpath
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from detector.decode import DEFAULT_MAX_PIXELS, decode_image
from detector.errors import ImageDecodeError
from detector.inference import Detector, score_images
from detector.model import FAKE
from jobs import cli, storage
from jobs.metrics import Bootstrap, binary_metrics, interval
from jobs.robustness import ROBUSTNESS, TRANSFORMS
from jobs.storage.allowed import AllowedRoots
from jobs.storage.models import CARD_FILE, load_model, read_card
from jobs.train.data import DataError, Sample, list_labelled

SPLITS = ("all", "train", "validation")


@dataclass(frozen=True)
class EvaluateConfig:
    data: str
    model: str
    json: str | None = None
    plots: str | None = None
    split: str = "all"
    val_fraction: float = 0.2
    seed: int = 0
    robustness: tuple[str, ...] = ()
    batch_size: int = 32
    threads: int = 4
    max_images: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_prefix: tuple[str, ...] = ()  # where --data manifest entries may point; () = its bucket or folder

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow_prefix", tuple(self.allow_prefix or ()))
        if isinstance(self.robustness, str):  # the flag's "jpeg75,crop" or "all"
            names = ROBUSTNESS if self.robustness == "all" else tuple(x for x in self.robustness.split(",") if x)
            object.__setattr__(self, "robustness", tuple(names))
        problems = cli.uri_problems(data=self.data, model=self.model, json=self.json, plots=self.plots)
        problems += cli.finite_problems(val_fraction=self.val_fraction)
        problems += [f"--allow-prefix: {e}" for e in _allow_problems(self.allow_prefix)]
        unknown = [n for n in self.robustness if n not in ROBUSTNESS]
        if unknown:
            problems.append(f"--robustness: unknown {unknown}; choose from {','.join(ROBUSTNESS)} or 'all'")
        if self.split not in SPLITS:
            problems.append(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.batch_size < 1 or self.threads < 1:
            problems.append("--batch-size and --threads must be at least 1")
        if self.max_images is not None and self.max_images < 1:
            problems.append("--max-images must be at least 1")
        if not 0 < self.val_fraction < 1:  # (NaN fails it too)
            problems.append("--val-fraction must be between 0 and 1, e.g. 0.2")
        if problems:
            raise ValueError("; ".join(problems))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--data", required=True, help="labelled images: folder, s3:// prefix or manifest (as jobs.train)")
    p.add_argument("--model", required=True, help="a jobs.train output (folder or s3://) or a model.safetensors file")
    p.add_argument("--json", default=None, help="write all metrics to this JSON file (local or s3://)")
    p.add_argument("--plots", default=None, help="folder (local or s3://) for roc.png and scores.png")
    p.add_argument("--split", default="all", choices=SPLITS, help="which part of --data to use (default all)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="as in jobs.train, to rebuild its split")
    p.add_argument("--seed", type=int, default=0, help="as in jobs.train, to rebuild its split")
    p.add_argument("--robustness", default="", help=f"comma-separated transformations to re-run on: {','.join(ROBUSTNESS)}, or 'all'")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--threads", type=int, default=4, help="threads fetching and decoding images")
    p.add_argument("--max-images", type=int, default=None, help="evaluate a deterministic subset of at most N images per class")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse images with more pixels")
    cli.add_allow_prefix_flag(p, "a --data")
    cli.add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    config, debug = cli.parse_config(get_args_parser(), EvaluateConfig, argv)
    code, result = cli.run_main("evaluate", lambda: run(config), debug=debug)
    if result is not None:
        card = read_card(config.model)
        print(card if card else f"(no {CARD_FILE} next to {config.model}: trained before model cards)", flush=True)
        print_summary(result)
    return code


def run(config: EvaluateConfig, *, keep_scores: bool = False) -> dict[str, Any]:
    """Metrics of ``config.model`` on ``config.data``, written to ``config.json`` if set.
    ``keep_scores`` adds ``per_image`` (not written): each decoded image's uri, is_fake and
    P(fake) clean and under each transformation, for paired comparisons of models on the
    same images (benchmarks/compare_models.py)."""
    started = time.monotonic()
    detector = _load(config.model)  # first: a bad model fails at once, before any listing
    samples = _select(config, detector.checkpoint.meta.get("data"))
    result: dict[str, Any] = {
        "data": config.data,
        "model": config.model,
        "model_version": detector.model_version,
        "preset": detector.preset.to_dict(),
        "config": {k: v for k, v in asdict(config).items() if k not in ("json", "plots")},
    }
    images = _fetch_all(samples, config)
    clean = _evaluate(detector, images, None, config)
    result.update(clean["metrics"])
    result["by_subfolder"] = clean["by_subfolder"]
    # 95% intervals from resampling these images (jobs.metrics.Bootstrap): how much of a
    # difference between two models or two transformations this many images can show.
    both = clean["labels"].any() and (~clean["labels"]).any()
    boot = Bootstrap(clean["labels"]) if both else None
    base = boot.curves(clean["scores"]) if boot else None
    if boot:
        result["intervals"] = {k: interval(v) for k, v in base.items()}
    result["robustness"] = {}
    per_image = {"uri": [im.sample.uri for im in images if im.image is not None], "is_fake": clean["labels"],
                 "clean": clean["scores"]}
    for name in config.robustness:
        transformed = _evaluate(detector, images, TRANSFORMS[name], config)
        per_image[name] = transformed["scores"]
        r = transformed["metrics"]
        r["auc_change"] = _diff(r.get("auc"), result.get("auc"))
        r["accuracy_change"] = _diff(r.get("accuracy"), result.get("accuracy"))
        if boot:  # the same images, so the change's interval is paired
            r["auc_change_interval"] = interval(boot.curves(transformed["scores"])["auc"] - base["auc"])
        result["robustness"][name] = r
    result["seconds"] = round(time.monotonic() - started, 1)
    if config.json:  # NaN (an undefined metric) is written as null: the file stays valid JSON
        with cli.writing(config.json):
            storage.write_bytes(config.json, json.dumps(_finite(result), indent=2, allow_nan=False).encode())
    if config.plots:
        from jobs.plots import roc_curve_png, score_histogram_png

        scores, labels = clean["scores"], clean["labels"]
        with cli.writing(config.plots):
            storage.write_bytes(storage.join(config.plots, "roc.png"), roc_curve_png(scores, labels))
            storage.write_bytes(storage.join(config.plots, "scores.png"),
                                score_histogram_png(scores, labels, threshold=detector.threshold))
    if keep_scores:
        result["per_image"] = per_image
    return result


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, for JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _allow_problems(prefixes: tuple[str, ...]) -> list[str]:
    try:
        AllowedRoots(prefixes)
    except ValueError as e:
        return [str(e)]
    return []


def _select(config: EvaluateConfig, trained_on: dict[str, Any] | None = None) -> list[Sample]:
    data = list_labelled(config.data, val_fraction=config.val_fraction, seed=config.seed,
                         allow_prefixes=config.allow_prefix or None)
    if config.split == "validation":
        data.check_held_out(trained_on)  # the model's own held-out images, or a clear error
    samples = {"all": data.train + data.validation, "train": data.train, "validation": data.validation}[config.split]
    if config.max_images:
        by_class: dict[int, list[Sample]] = defaultdict(list)
        for s in sorted(samples, key=lambda s: s.uri):
            by_class[s.label].append(s)
        samples = tuple(s for members in by_class.values() for s in members[: config.max_images])
    if not samples:
        raise DataError(f"no images in split {config.split!r} of {config.data}")
    return list(samples)


def _load(model: str) -> Detector:
    return Detector(load_model(model)[1])


@dataclass
class _Image:
    sample: Sample
    image: Image.Image | None
    error: str | None


def _fetch_all(samples: list[Sample], config: EvaluateConfig) -> list[_Image]:
    def fetch(s: Sample) -> _Image:
        try:
            return _Image(s, decode_image(storage.read_bytes(s.uri), max_pixels=config.max_pixels).image, None)
        except (ImageDecodeError, OSError, ValueError) as e:
            return _Image(s, None, str(e))

    with ThreadPoolExecutor(config.threads) as pool:
        return list(pool.map(fetch, samples))


def _evaluate(detector: Detector, images: list[_Image], transform: Callable | None, config: EvaluateConfig) -> dict[str, Any]:
    ok = [im for im in images if im.image is not None]
    scores = np.empty(len(ok), dtype=np.float64)

    def prepare(im: _Image) -> tuple[torch.Tensor, np.ndarray, int, int]:
        img = transform(im.image) if transform else im.image
        return (*detector.preset.prepare(img), img.width, img.height)  # the scan's geometry

    with ThreadPoolExecutor(config.threads) as pool:
        for i in range(0, len(ok), config.batch_size):
            chunk = ok[i : i + config.batch_size]
            scored = score_images(detector.model, detector.preset, list(pool.map(prepare, chunk)),
                                  memory_format=detector.memory_format)
            scores[i : i + len(chunk)] = [s.prob_fake for s in scored]
    labels = np.array([im.sample.label == FAKE for im in ok], dtype=bool)
    metrics = binary_metrics(scores, labels, detector.threshold)
    metrics["skipped"] = {im.sample.uri: im.error for im in images if im.image is None}
    groups: dict[str, list[int]] = defaultdict(list)
    for i, im in enumerate(ok):
        groups[_subfolder(im.sample.uri, config.data)].append(i)
    by_subfolder = {g: binary_metrics(scores[idx], labels[idx], detector.threshold, curves=False)
                    for g, idx in sorted(groups.items())}
    return {"metrics": metrics, "by_subfolder": by_subfolder, "scores": scores, "labels": labels}


def _subfolder(uri: str, root: str) -> str:
    root = storage.local_path_if_local(root) or root
    base = posixpath.dirname(root) if root.lower().endswith((".csv", ".parquet", ".pq")) else root
    rel = uri[len(base):] if uri.startswith(base) else uri
    return posixpath.dirname(rel.strip("/")) or "."


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 4)


def print_summary(r: dict[str, Any], out=sys.stdout) -> None:
    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    print(f"model {r['model_version']} on {r['data']} ({r['n']} images: {r['n_fake']} fake, {r['n_real']} real; "
          f"{len(r['skipped'])} undecodable)", file=out)
    head = f"{'set':<22}{'acc':>7}{'bal.acc':>9}{'AUC':>7}{'AP':>7}{'TPR@1%':>8}{'TPR@5%':>8}{'dAUC':>7}"
    print(head, file=out)
    rows = [("clean", r)] + list(r.get("robustness", {}).items())
    for name, m in rows:
        print(f"{name:<22}{fmt(m['accuracy']):>7}{fmt(m['balanced_accuracy']):>9}{fmt(m['auc']):>7}"
              f"{fmt(m['average_precision']):>7}{fmt(m['tpr_at_1pct_fpr']):>8}{fmt(m['tpr_at_5pct_fpr']):>8}"
              f"{fmt(m.get('auc_change')):>7}", file=out)
    if r.get("intervals"):
        def span(v):
            return f"[{v[0]:.3f}, {v[1]:.3f}]"

        changes = "".join(f"; {name} AUC change {span(m['auc_change_interval'])}"
                          for name, m in r.get("robustness", {}).items() if m.get("auc_change_interval"))
        print(f"95% intervals (resampling these images): AUC {span(r['intervals']['auc'])}, "
              f"TPR@5% {span(r['intervals']['tpr_at_5pct_fpr'])}{changes}", file=out)
    cm = r["confusion_matrix"]
    print(f"confusion at threshold {r['threshold']:.3f} (rows true fake/real, cols predicted fake/real): {cm}", file=out)
    for g, m in r.get("by_subfolder", {}).items():
        print(f"  {g:<30} n={m['n']:<5} acc={fmt(m['accuracy'])} auc={fmt(m['auc'])}", file=out)


if __name__ == "__main__":
    sys.exit(main())
