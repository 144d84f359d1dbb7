"""Training throughput: a bare PyTorch loop against Ray Train (jobs.train) with 1 and 2 workers.

Same labelled images, same preset and recipe (batch size, optimizer), same CPUs, in one run:

1. bare loop: one process, no Ray: jobs.train.images.LabelledImages (fetch, decode, the
   preset's train transform) in a DataLoader, forward, cross-entropy, backward, step;
   ``--threads`` torch threads;
2. Ray Train, 1 worker with ``--threads`` CPUs: ``jobs.train.run`` (its real loop,
   jobs.train.loop, DDP-wrapped model, checkpoint every epoch);
3. Ray Train, 2 workers with ``--threads / 2`` CPUs each (the global batch split in two).

The rate of each is the training images per second of its last epoch (the first epoch
fetches and caches the bytes in every row): for Ray Train, the ``images_per_s`` that the
loop itself records in metrics.json (training steps only; validation and checkpointing
excluded). The wall time of each whole Ray Train run is printed too.

    .venv/bin/python benchmarks/train_throughput.py --images 64 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import start_ray, input_images, json_line, machine, timed  # noqa: E402
from detector.model import build_model  # noqa: E402


def labelled_manifest(n: int, data: str | None, tmp: Path) -> Path:
    """A CSV manifest (uri,label) of ``n`` images, real and fake alternating; generated
    images (when the data is absent) are labelled alternately too."""
    files = input_images(n, data, tmp / "generated")
    rows = []
    for i, f in enumerate(files):
        parent = Path(f).parent.name
        label = parent if parent in ("real", "fake") else ("real", "fake")[i % 2]
        rows.append(f"{Path(f).resolve()},{label}\n")
    path = tmp / "train.csv"
    path.write_text("uri,label\n" + "".join(rows))
    return path


def bare_loop(manifest: Path, config, threads: int) -> float:
    """The plain PyTorch loop on the same training split; images/s of the last epoch."""
    from jobs.train.data import list_labelled
    from jobs.train.images import LabelledImages, collate_crops
    from jobs.train.loop import CHANNELS_LAST_MIN_SIZE, _optimizer

    torch.set_num_threads(threads)
    data = list_labelled(str(manifest), val_fraction=config.val_fraction, seed=config.seed)
    preset = config.make_preset()
    samples = [(s.uri, s.label) for s in data.train]
    loader = DataLoader(LabelledImages(samples, preset, config.max_pixels), config.batch_size, shuffle=True,
                        num_workers=0, collate_fn=collate_crops)
    fmt = torch.channels_last if config.image_size >= CHANNELS_LAST_MIN_SIZE else torch.contiguous_format
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model = build_model("none", arch=config.arch).to(memory_format=fmt).train()
    optimizer = _optimizer(model, config)
    rate = 0.0
    for epoch in range(1, config.epochs + 1):
        start, n = time.monotonic(), 0
        for x, y, _, _ in loader:
            logits = model(preset.normalize(x).contiguous(memory_format=fmt))
            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n += len(y)
        rate = n / (time.monotonic() - start)
        print(f"  bare loop epoch {epoch}: {n} images, {rate:.2f} img/s", flush=True)
    return rate


def ray_train(manifest: Path, out: Path, base: dict, workers: int, cpus: int) -> tuple[float, float]:
    """jobs.train.run with ``workers`` x ``cpus``: (last epoch's images/s, wall seconds)."""
    from jobs.train import TrainConfig, run

    config = TrainConfig(**{**base, "output": str(out), "num_workers": workers, "cpus_per_worker": cpus})
    _, secs = timed(run, config)
    history = json.loads((out / "metrics.json").read_text())["history"]
    for h in history:
        print(f"  Ray Train {workers}x{cpus} CPU epoch {h['epoch']}: {h['train_images']} images, "
              f"{h['images_per_s']:.2f} img/s", flush=True)
    return float(history[-1]["images_per_s"]), secs


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=64, help="labelled images (default 64; 80%% train)")
    p.add_argument("--data", default=None, help="folder with real/ and fake/ JPEGs (default ../shared/data/sd-coco-dev)")
    p.add_argument("--epochs", type=int, default=2, help="epochs; the last one is measured (default 2)")
    p.add_argument("--preset", default=None, help="training preset (default: jobs.train's default)")
    p.add_argument("--image-size", type=int, default=None, help="override the preset recipe's image size")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the recipe's)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPUs for every row (default all)")
    args = p.parse_args(argv)
    from jobs.train import TrainConfig

    preset = args.preset or TrainConfig.__dataclass_fields__["preset"].default
    load = os.getloadavg()
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="genscan-train-bench-") as tmp:
        tmp = Path(tmp)
        manifest = labelled_manifest(args.images, args.data, tmp)
        base = dict(data=str(manifest), output=str(tmp / "unused"), preset=preset, epochs=args.epochs,
                    image_size=args.image_size, batch_size=args.batch_size)
        config = TrainConfig(**base)
        print(f"{args.images} images, preset {preset} ({config.image_size} px, batch {config.batch_size}, "
              f"{config.optimizer}), {args.epochs} epochs; {machine()}; "
              f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}", flush=True)
        rows.append(("bare_loop", bare_loop(manifest, config, args.threads)))
        _, ray_start = timed(start_ray, args.threads)
        print(f"  Ray start-up: {ray_start:.1f} s (once per cluster; not in the rows)", flush=True)
        walls = {}
        for workers in (1, 2):
            if args.threads % workers or (config.batch_size % workers):
                continue
            name = f"ray_train_{workers}w"
            rate, walls[name] = ray_train(manifest, tmp / name, base, workers, args.threads // workers)
            rows.append((name, rate))
    bare = rows[0][1]
    print(f"\n{'method':<14}  {'img/s':>8}  {'x bare_loop':>11}  {'run wall s':>10}")
    for name, rate in rows:
        wall = f"{walls[name]:.1f}" if name in walls else "-"
        print(f"{name:<14}  {rate:8.2f}  {rate / bare:11.2f}  {wall:>10}")
    load_end = os.getloadavg()
    print(f"load average at the end {load_end[0]:.1f} {load_end[1]:.1f} {load_end[2]:.1f}")
    r = dict(rows)
    print(json_line({
        "images": args.images, "preset": preset, "image_size": config.image_size, "epochs": args.epochs,
        "threads": args.threads, "load_avg_1m": [round(load[0], 1), round(load_end[0], 1)],
        "bare_loop_img_s": bare, "ray_train_1w_img_s": r.get("ray_train_1w"),
        "ray_train_2w_img_s": r.get("ray_train_2w"),
        "ray_1w_vs_bare": r["ray_train_1w"] / bare if "ray_train_1w" in r else None,
        "ray_2w_vs_bare": r["ray_train_2w"] / bare if "ray_train_2w" in r else None,
    }))


if __name__ == "__main__":
    main()
