"""Scan throughput: genscan against the original project's way and the model's limit.

On the same N images, same model (random ResNet18 weights: speed does not depend on
them), same threads, in one run:

1. forward only: the model on pre-decoded, pre-processed tensors in memory;
2. the original project's way: one image at a time, PIL open, Resize 224, forward,
   backward-pass Grad-CAM through hooks, heat-map overlay written as an image;
3. pytorch-grad-cam's GradCAM, batched, plus overlays written as images;
4. the genscan scan job end to end (local folder): list, fetch, decode, score,
   closed-form heat map, thumbnail, Parquet written and published; the input is a
   manifest of exactly the N files (asserted: listed == scored == N). ``genscan_scan``
   is jobs.scan as a user runs it (``--executor auto``: in the driver process up to
   ``jobs.scan.pipeline.LOCAL_MAX_OBJECTS`` images, Ray Data above); ``genscan_scan_ray``
   forces the Ray Data pipeline (local Ray) on the same N;
then, for jobs.train's default preset and architecture (native resolution, whole pictures):
5. decode only: bytes to the model's tiles (PIL + the preset), one thread;
6. forward only per runtime (detector.backends: torch, openvino);
7. the scan end to end per runtime with default flags (``--images 768``: the Ray Data path).

Ray is started before timing (a one-off per cluster, outside ``jobs.scan.run``). Each
scan row is preceded by a warm-up scan of ``--warmup`` images; ``genscan_scan`` is the
N-image scan's end-to-end rate (its fixed cost included: model load, publishing and, on
Ray Data, planning and worker start) and ``genscan_scan_steady`` its rate after the first batch
(from the report's per-batch ``scanned_at`` stamps): the throughput of a long scan.

    .venv/bin/python benchmarks/scan_throughput.py --images 128
    .venv/bin/python benchmarks/scan_throughput.py --images 128 --use-gpu   # on a GPU machine

Prints a table (images/s and ratios) and ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import start_ray, cpu_features, input_images, json_line, machine, print_table, save_jpeg, timed  # noqa: E402
from detector.backends import available, resolve  # noqa: E402
from detector.checkpoint import save_checkpoint  # noqa: E402
from detector.model import FAKE, build_model  # noqa: E402
from detector.presets import get_preset  # noqa: E402


def forward_only(model, files, preset, batch_size, device, runtime: str = "torch") -> float:
    """Model limit: the preset's uint8 tiles already in memory; the scan's scoring graph
    (detector.backends.ScoringGraph: normalisation, trunk, pooling, heat-map sum) in
    ``runtime``, plus the head. Pictures with several tiles count once."""
    from detector.backends import make_features

    tiles = torch.cat([preset.prepare(Image.open(f).convert("RGB"))[0] for f in files])
    m = model.to(device, memory_format=torch.channels_last).eval()
    features = make_features(runtime, m, preset, num_threads=torch.get_num_threads(), memory_format=torch.channels_last)
    shapes = {tuple(x.shape) for x in tiles}
    assert len(shapes) == 1, f"forward_only wants pictures of one size, got tiles {shapes}"

    def run():
        with torch.inference_mode():
            for i in range(0, len(tiles), batch_size):
                m.fc(features(tiles[i:i + batch_size].to(device))[0].to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up (allocator, kernels, OpenVINO's compile)
    _, secs = timed(run)
    return len(files) / secs


def decode_only(files, preset) -> float:
    """Decoding and cutting the model inputs (PIL, the scan's detector.inference.prepare),
    one thread: the CPU cost per picture that the fetch stage pays."""
    from detector.inference import prepare

    data = [Path(f).read_bytes() for f in files]
    _, secs = timed(lambda: [prepare(d, preset) for d in data])
    return len(files) / secs


def seed_loop(model, files, out_dir: Path, device) -> float:
    """The original project: one image at a time, hooks, backward pass, overlay file."""
    preset = get_preset("baseline")
    m = model.to(device, memory_format=torch.contiguous_format).eval()
    store = {}
    layer = m.layer4
    h1 = layer.register_forward_hook(lambda mod, inp, out: store.__setitem__("act", out))
    h2 = layer.register_full_backward_hook(lambda mod, gin, gout: store.__setitem__("grad", gout[0]))
    out_dir.mkdir(parents=True, exist_ok=True)

    def run():
        for i, f in enumerate(files):
            img = Image.open(f).convert("RGB")
            x = preset.normalize(preset.prepare(img)[0]).to(device).requires_grad_(True)
            logits = m(x)
            m.zero_grad()
            logits[0, FAKE].backward()
            weights = store["grad"].mean(dim=(2, 3), keepdim=True)
            cam = F.relu((weights * store["act"]).sum(1))[0].detach().cpu().numpy()
            cam = cv2.resize(cam, (224, 224))
            cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
            base = np.asarray(img.resize((224, 224)), dtype=np.float32) / 255
            heat = cv2.applyColorMap(np.uint8(255 * cam), cv2.COLORMAP_JET)[..., ::-1] / 255
            overlay = np.uint8(255 * (0.5 * heat + 0.5 * base))
            save_jpeg(overlay, out_dir / f"seed_{i}.jpg")

    try:
        _, secs = timed(run)
    finally:
        h1.remove()
        h2.remove()
    return len(files) / secs


def gradcam_library(model, files, out_dir: Path, batch_size, device) -> float:
    """pytorch-grad-cam's GradCAM on batches, overlays with its show_cam_on_image."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    preset = get_preset("baseline")
    m = model.to(device, memory_format=torch.channels_last).eval()
    out_dir.mkdir(parents=True, exist_ok=True)

    def run():
        with GradCAM(model=m, target_layers=[m.layer4]) as cam:
            for i in range(0, len(files), batch_size):
                imgs = [Image.open(f).convert("RGB") for f in files[i:i + batch_size]]
                pixels = torch.cat([preset.prepare(im)[0] for im in imgs])
                x = preset.normalize(pixels).contiguous(memory_format=torch.channels_last).to(device)
                maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(FAKE)] * len(imgs))
                for j, (p, g) in enumerate(zip(pixels, maps)):
                    rgb = p.permute(1, 2, 0).numpy().astype(np.float32) / 255
                    save_jpeg(show_cam_on_image(rgb, g, use_rgb=True), out_dir / f"lib_{i + j}.jpg")

    _, secs = timed(run)
    return len(files) / secs


def write_manifest(files: list[Path], path: Path) -> Path:
    """A CSV manifest naming exactly ``files`` (absolute paths). A folder of symlinks
    would not do: ``storage.list_objects`` does not follow links leaving the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("uri\n" + "".join(f"{Path(f).resolve()}\n" for f in files))
    return path


def genscan_scan(model_dir: Path, manifest: Path, out_dir: Path, args, n: int, executor: str,
                 runtime: str = "torch", fetch: str = "auto") -> tuple[float, object]:
    """The scan job end to end (``jobs.scan.run``) on the already started local Ray:
    (wall seconds, summary). Checks every one of the ``n`` images came back scored."""
    from jobs.scan import ScanConfig, run

    config = ScanConfig(
        manifest=str(manifest),
        model=str(model_dir),
        output=str(out_dir),
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        cpus_per_scorer=args.cpus_per_scorer,
        use_gpu=args.use_gpu,
        executor=executor,
        runtime=runtime,
        fetch=fetch,
        allow_prefix=("*",),  # the benchmark's own manifest names the shared data set elsewhere
    )
    summary, secs = timed(run, config)
    assert summary.listed == n, f"the scan listed {summary.listed} images, expected {n}: {summary}"
    assert summary.scored == n and summary.errors == 0, summary
    return secs, summary


def in_scan_rate(report: str) -> float:
    """Images/s of a scan once its first batch is scored, from its own report: each
    Scorer batch stamps its rows with one ``scanned_at``, so (rows after the first
    batch) / (last stamp - first stamp). NaN with fewer than two batches."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    stamps = pads.dataset(report, format="parquet").to_table(columns=["scanned_at"])["scanned_at"]
    counts = pc.value_counts(stamps).to_pylist()
    if len(counts) < 2:
        return float("nan")
    counts.sort(key=lambda c: c["values"])
    seconds = (counts[-1]["values"] - counts[0]["values"]).total_seconds()
    return (len(stamps) - counts[0]["counts"]) / seconds if seconds > 0 else float("nan")


FIXED_S: dict[str, float] = {}  # per scan row: its fixed cost, wall time - N / steady rate


def scan_rows(label: str, model_dir: Path, files: list[Path], tmp: Path, args,
              executor: str = "auto", runtime: str = "torch", fetch: str = "auto") -> tuple[list[tuple[str, float]], str]:
    """A warm-up scan of ``args.warmup`` images, then the scan of all N. Rows: the N-image
    scan's end-to-end rate (Ray already started; actor start, model load, planning and
    publishing included) and its steady rate: images/s after its first batch, from the
    batch time stamps in its report (``in_scan_rate``). Also printed: the marginal rate
    (N - w) / (T(N) - T(w)) against the warm-up scan, which is noisy on a busy machine.
    Also returns the executor the scan ran on (``--executor auto`` picks one)."""
    w = min(args.warmup, len(files) - 1)
    t_w, _ = genscan_scan(model_dir, write_manifest(files[:w], tmp / f"{label}-warmup.csv"), tmp / f"{label}-warmup",
                          args, w, executor, runtime, fetch)
    t_n, summary = genscan_scan(model_dir, write_manifest(files, tmp / f"{label}.csv"), tmp / label, args, len(files),
                                executor, runtime, fetch)
    steady = in_scan_rate(summary.report)
    FIXED_S[label] = t_n - len(files) / steady  # start-up (actors, model load and compile, planning) and publishing
    marginal = (len(files) - w) / (t_n - t_w) if t_n > t_w else float("nan")
    print(f"  {label} (--executor {executor} -> {summary.executor}): warm-up {w} images {t_w:.1f} s, {len(files)} images {t_n:.1f} s "
          f"({len(files) / t_n:.2f} img/s end to end, {steady:.2f} img/s after the first batch, "
          f"marginal against the warm-up {marginal:.2f} img/s; fixed cost {FIXED_S[label]:.1f} s)", flush=True)
    return [(label, len(files) / t_n), (label + "_steady", steady)], summary.executor


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=128, help="number of images (default 128)")
    p.add_argument("--data", default=None, help="folder with real/ and fake/ JPEGs (default ../shared/data/sd-coco-dev)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size for batched methods and the scan")
    p.add_argument("--concurrency", type=int, default=1, help="scoring actors in the scan job")
    cpus = os.cpu_count() or 1
    p.add_argument("--threads", type=int, default=cpus, help="torch threads for rows 1-3 and Ray's CPUs (default all)")
    p.add_argument("--cpus-per-scorer", type=float, default=None,
                   help="CPUs per scoring actor (its model threads, rounded); default: the scan's own default")
    p.add_argument("--warmup", type=int, default=8, help="images in the warm-up scan before each timed scan")
    p.add_argument("--use-gpu", action="store_true", help="run the model on CUDA")
    p.add_argument("--preset-row", default=None, help="preset of the last row (default: jobs.train's default preset)")
    p.add_argument("--skip-seed", action="store_true", help="skip the slow original-way row")
    args = p.parse_args(argv)
    if args.use_gpu and not torch.cuda.is_available():
        p.error("--use-gpu given but CUDA is not available")
    if args.images < 2:
        p.error("--images must be at least 2")
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.use_gpu else "cpu")
    torch.manual_seed(0)
    model = build_model("none")
    default, arch = preset_row(args.preset_row)
    default_model = build_model("none", arch=arch)
    runtimes = available()
    rows: list[tuple[str, float]] = []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="genscan-bench-") as tmp:
        tmp = Path(tmp)
        files = input_images(args.images, args.data, tmp / "generated")
        print(f"{len(files)} images from {Path(files[0]).parent.parent}; {machine()}; device {device}; "
              f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
        baseline = get_preset("baseline")
        save_checkpoint(tmp / "model-baseline", model, preset=baseline)
        save_checkpoint(tmp / "model-default", default_model, preset=default)

        rows.append(("forward_only", forward_only(model, files, baseline, args.batch_size, device)))
        print(f"  forward only: {rows[-1][1]:.1f} img/s", flush=True)
        if not args.skip_seed:
            rows.append(("seed_loop", seed_loop(model, files, tmp / "seed", device)))
            print(f"  original way: {rows[-1][1]:.1f} img/s", flush=True)
        rows.append(("gradcam_lib", gradcam_library(model, files, tmp / "lib", args.batch_size, device)))
        print(f"  pytorch-grad-cam batched: {rows[-1][1]:.1f} img/s", flush=True)
        rows.append(("decode_only", decode_only(files, default)))
        print(f"  decode + cut ({default.name}), 1 thread: {rows[-1][1]:.1f} img/s", flush=True)
        for rt in runtimes if not args.use_gpu else ("torch",):
            rows.append((f"forward_{rt}", forward_only(default_model, files, default, args.batch_size, device, rt)))
            print(f"  forward only, {arch} {default.name}, {rt}: {rows[-1][1]:.1f} img/s", flush=True)

        # Ray start-up is a one-off per cluster, outside jobs.scan.run (main() calls ensure_ray first); common.start_ray
        # also runs Ray's workers at nice 0 like the rows above.
        _, ray_start = timed(start_ray, args.threads)
        print(f"  Ray start-up: {ray_start:.1f} s (once per cluster; not in the scan rows)", flush=True)
        # jobs.scan's default --executor auto: in the driver up to LOCAL_MAX_OBJECTS images, else Ray Data
        scan, scan_executor = scan_rows("genscan_scan", tmp / "model-baseline", files, tmp, args)
        rows += scan
        rows += scan_rows("genscan_scan_ray", tmp / "model-baseline", files, tmp, args, executor="ray")[0]
        for rt in runtimes if not args.use_gpu else ("torch",):
            rows += scan_rows(f"scan_default_{rt}", tmp / "model-default", files, tmp, args, runtime=rt)[0]
        # the same scan with fetching in separate Ray tasks (--fetch tasks: the default until
        # round 3), side by side with the default's fetching in the scoring actor
        auto = resolve("auto", use_gpu=args.use_gpu)
        rows += scan_rows(f"scan_default_{auto}_fetch_tasks", tmp / "model-default", files, tmp, args, runtime=auto,
                          fetch="tasks")[0]

    print_table(rows, "seed_loop", "forward_only")
    r = dict(rows)
    fwd = [rt for rt in runtimes if f"forward_{rt}" in r]
    auto = resolve("auto", use_gpu=args.use_gpu)  # what a scan with default flags runs on
    load_end = os.getloadavg()
    print(f"load average at the end {load_end[0]:.1f} {load_end[1]:.1f} {load_end[2]:.1f}")
    print(json_line({
        "images": len(files),
        "device": str(device),
        "cpu": cpu_features(),  # the numbers move 8x with the CPU's vector units (benchmarks/common.py)
        "threads": args.threads,
        "load_avg_1m": [round(load[0], 1), round(load_end[0], 1)],
        "forward_only_img_s": r["forward_only"],
        "seed_loop_img_s": r.get("seed_loop"),
        "gradcam_lib_img_s": r["gradcam_lib"],
        "genscan_scan_img_s": r["genscan_scan"],
        "genscan_scan_steady_img_s": r["genscan_scan_steady"],
        "genscan_scan_executor": scan_executor,
        "genscan_scan_ray_img_s": r["genscan_scan_ray"],
        "genscan_scan_ray_steady_img_s": r["genscan_scan_ray_steady"],
        "decode_only_img_s": r["decode_only"],
        "forward_torch_img_s": r["forward_torch"],
        "forward_best_img_s": max(r[f"forward_{rt}"] for rt in fwd),
        "forward_best_runtime": max(fwd, key=lambda rt: r[f"forward_{rt}"]),
        "scan_default_img_s": r[f"scan_default_{auto}"],
        "scan_default_steady_img_s": r[f"scan_default_{auto}_steady"],
        "scan_default_runtime": auto,
        "scan_default_fixed_s": FIXED_S[f"scan_default_{auto}"],
        "scan_default_torch_img_s": r["scan_default_torch"],
        "scan_default_fetch_tasks_img_s": r[f"scan_default_{auto}_fetch_tasks"],
        "default_model": f"{arch} {default.name}",
        "ray_start_s": ray_start,
        "scan_vs_seed": r["genscan_scan"] / r["seed_loop"] if "seed_loop" in r else None,
        "scan_vs_forward": r["genscan_scan"] / r["forward_only"],
        "steady_vs_seed": r["genscan_scan_steady"] / r["seed_loop"] if "seed_loop" in r else None,
        "steady_vs_forward": r["genscan_scan_steady"] / r["forward_only"],
        "ray_scan_vs_forward": r["genscan_scan_ray"] / r["forward_only"],
        "ray_steady_vs_forward": r["genscan_scan_ray_steady"] / r["forward_only"],
    }))


def preset_row(name: str | None):
    """jobs.train's default preset (or ``name``) with its recipe's sizes and architecture."""
    from jobs.train import RECIPES, TrainConfig

    chosen = name or TrainConfig.__dataclass_fields__["preset"].default
    recipe = RECIPES.get(chosen, {})
    return get_preset(chosen, image_size=recipe.get("image_size", 224)), recipe.get("arch", "resnet18")


if __name__ == "__main__":
    main()
