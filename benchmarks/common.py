"""Helpers shared by the benchmark scripts: input images, timing, and the table."""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def input_images(n: int, data: str | None, out_dir: Path, size: int = 512) -> list[Path]:
    """``n`` JPEG paths: from ``data`` (default ../shared/data/sd-coco-dev, real and fake
    alternating) or, when that folder is absent, generated ``size`` x ``size`` JPEGs."""
    root = Path(data) if data else SHARED_DATA / "sd-coco-dev"
    if root.is_dir():
        classes = [sorted((root / c).glob("*.jpg")) for c in ("real", "fake")]
        files = [f for pair in zip(*classes) for f in pair] or sorted(root.rglob("*.jpg"))
        if len(files) >= n:
            return files[:n]
        print(f"note: {root} has only {len(files)} images; generating the rest")
    else:
        print(f"note: {root} not found; using generated {size}x{size} JPEGs")
        files = []
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(len(files), n):
        base = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.Resampling.BICUBIC)
        p = out_dir / f"gen_{i:05d}.jpg"
        img.save(p, quality=95)
        files.append(p)
    return files[:n]


def timed(fn, *args, **kwargs) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores ({cpu_features()}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def cpu_features() -> str:
    """The CPU's widest vector units and OpenVINO's precision on it, e.g. "avx512_bf16,
    openvino bf16". They set the numbers: the same 2-core scan measured 8x slower
    forward passes in OpenVINO on an AVX2-only EPYC (f32) than on one with AVX-512 BF16."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split())
    except (OSError, IndexError):
        flags = set()
    widest = next((f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags), "unknown")
    try:
        import openvino

        precision = str(openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")).split("'")[1]
    except Exception:  # noqa: BLE001 (not installed, or no CPU plugin: the line says so)
        precision = "none"
    return f"{widest}, openvino {precision}"


def print_table(rows: list[tuple[str, float]], base_key: str, limit_key: str) -> None:
    """rows: (name, images/s). Ratios against ``base_key`` and ``limit_key`` rows."""
    rates = dict(rows)
    base, limit = rates.get(base_key), rates.get(limit_key)
    w = max(len(r[0]) for r in rows)
    print(f"\n{'method':<{w}}  {'img/s':>8}  {'x ' + base_key:>14}  {'x ' + limit_key:>14}")
    for name, rate in rows:
        rb = f"{rate / base:.2f}" if base else "-"
        rl = f"{rate / limit:.2f}" if limit else "-"
        print(f"{name:<{w}}  {rate:8.2f}  {rb:>14}  {rl:>14}")


def json_line(d: dict) -> str:
    return json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()})


def save_jpeg(arr: np.ndarray, path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    path.write_bytes(buf.getvalue())


def start_ray(num_cpus: int, object_store_memory: int | None = 512 * 1024 * 1024, attempts: int = 3) -> None:
    """A local Ray for one benchmark, as ``jobs.runtime.ensure_ray`` starts it, plus:

    - workers at nice 0: Ray starts them at nice 15 (``RAY_worker_niceness``) to keep a
      driver responsive, which on a machine shared with other work charges the Ray rows
      alone for the competition, while the rows without Ray run at nice 0;
    - up to ``attempts`` tries: on an overloaded machine the raylet may
      not register within Ray's fixed 30 s ("The current node timed out during startup")."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_worker_niceness", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=num_cpus, object_store_memory=object_store_memory, log_to_driver=True)
            return
        except Exception as e:  # noqa: BLE001 (Ray raises a bare Exception for this)
            if "timed out during startup" not in str(e) or attempt == attempts:
                raise
            print(f"note: Ray start-up attempt {attempt} timed out (machine overloaded); retrying", flush=True)
            ray.shutdown()


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def model_quality_parser(doc: str) -> argparse.ArgumentParser:
    """The flags of the scripts that measure one trained model on its validation split."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a jobs.train output")
    p.add_argument("--data", default=str(SHARED_DATA / "sd-coco-dev"), help="the training data (its validation split is used)")
    p.add_argument("--seed", type=int, default=0, help="the training run's --seed (its split)")
    return p
