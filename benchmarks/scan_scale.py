"""Scan scale: many small images in a SeaweedFS bucket; listing time, images/s, fixed and
per-image cost, and peak memory of the scan's processes, at two sizes.

For each size N (default 1,000 and 10,000; ``--images N`` for one size), in one run
against one local S3 server (jobs.demo.s3_server.SeaweedS3Server, ``weed mini``):

- N 64x64 JPEGs are uploaded to ``s3://bench/n<N>/`` with a thread pool (not timed);
- listing: ``jobs.scan.listing.list_input`` over the prefix, timed on its own;
- the scan: ``jobs.scan.run`` end to end (list, fetch over S3, decode, score, heat map,
  thumbnail for every image, Parquet written and published), on a local Ray started
  before timing; images/s = N / wall seconds;
- memory: the resident set (RSS) of the driver and of every Ray worker process
  (``ray::*`` children), sampled every 0.2 s during the scan: the peak of the sum and of
  the largest process. (RSS counts pages of the shared object store once per process
  that maps them, so the sum over-counts; it is flat when the scan streams.)

With two sizes the wall times give T(N) = fixed + per_image * N: the fixed cost of one
scan (actor start, model load, planning, publishing) and the marginal cost per image,
which is compared with the model's forward pass alone at the same input size.

The model is ResNet18 with random weights at ``--image-size`` (default 64, the images'
size: the scale test measures per-object overhead, not the model).

    .venv/bin/python benchmarks/scan_scale.py                  # 1,000 and 10,000
    .venv/bin/python benchmarks/scan_scale.py --images 2000    # one size
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import start_ray, json_line, machine, timed  # noqa: E402
from detector.checkpoint import save_checkpoint  # noqa: E402
from detector.model import build_model  # noqa: E402
from detector.presets import get_preset  # noqa: E402

BUCKET = "bench"
MiB = 1024 * 1024


def small_jpegs(variants: int = 64, size: int = 64) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(variants):
        base = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(base).resize((size, size), Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def upload(client, prefix: str, n: int, jpegs: list[bytes], threads: int = 32) -> float:
    def put(i: int) -> None:
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{i // 1000:03d}/img_{i:06d}.jpg", Body=jpegs[i % len(jpegs)])

    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(n)))
    return time.monotonic() - start


def _descendants(root: int) -> list[int]:
    """Process ids below ``root`` (Linux /proc; no psutil in the venv)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _is_ray_worker(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::")
    except OSError:
        return False


class MemorySampler:
    """Peak RSS of this process plus its ``ray::`` descendants (the Ray workers)."""

    def __init__(self, every_s: float = 0.2):
        self.every_s, self.peak_total, self.peak_one, self.max_workers = every_s, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        workers = [p for p in _descendants(os.getpid()) if _is_ray_worker(p)]
        rss = [_rss(os.getpid())] + [_rss(p) for p in workers]
        self.peak_total = max(self.peak_total, sum(rss))
        self.peak_one = max(self.peak_one, max(rss))
        self.max_workers = max(self.max_workers, len(workers))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every_s)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def forward_rate(model, size: int, batch: int) -> float:
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    m = model.to(memory_format=torch.channels_last).eval()
    with torch.inference_mode():
        m(x)
        start = time.perf_counter()
        for _ in range(3):
            m(x)
    return 3 * batch / (time.perf_counter() - start)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, action="append", default=None,
                   help="scan this many images (repeatable; default 1000 and 10000)")
    p.add_argument("--image-size", type=int, default=64, help="model input size (baseline preset; default 64)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="Ray CPUs (default all)")
    p.add_argument("--cpus-per-scorer", type=float, default=None, help="default: the scan's own default")
    p.add_argument("--use-gpu", action="store_true")
    args = p.parse_args(argv)
    sizes = args.images or [1000, 10000]
    from jobs.scan.listing import list_input
    from jobs.demo.s3_server import SeaweedS3Server
    from jobs.scan import ScanConfig, run

    cps = args.cpus_per_scorer
    load = os.getloadavg()
    print(f"sizes {sizes}, model input {args.image_size}; {machine()}; "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}", flush=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("none")
    fwd = forward_rate(model, args.image_size, args.batch_size)
    print(f"  model forward alone at {args.image_size} px: {fwd:.0f} img/s", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="genscan-scale-") as tmp, SeaweedS3Server(Path(tmp) / "s3") as server:
        tmp = Path(tmp)
        server.create_bucket(BUCKET)
        os.environ.update(server.env())  # before Ray starts, so its workers inherit them
        save_checkpoint(tmp / "model", model, preset=get_preset("baseline", image_size=args.image_size))
        client = server.client()
        jpegs = small_jpegs()
        _, ray_start = timed(start_ray, args.threads)
        print(f"  Ray start-up: {ray_start:.1f} s (not in the rows)", flush=True)
        for n in sizes:
            prefix = f"n{n}"
            up = upload(client, prefix, n, jpegs)
            print(f"  uploaded {n} objects in {up:.1f} s", flush=True)
            listing, list_s = timed(lambda: sum(t.num_rows for t in list_input(input=f"s3://{BUCKET}/{prefix}/")))
            assert listing == n, f"listed {listing}, uploaded {n}"
            config = ScanConfig(input=f"s3://{BUCKET}/{prefix}/", model=str(tmp / "model"),
                                output=str(tmp / "reports"), batch_size=args.batch_size,
                                cpus_per_scorer=cps, use_gpu=args.use_gpu)
            with MemorySampler() as mem:
                summary, secs = timed(run, config)
            assert summary.listed == n and summary.scored == n, summary
            row = {"images": n, "list_s": list_s, "scan_s": secs, "img_s": n / secs,
                   "peak_rss_total_mib": mem.peak_total / MiB, "peak_rss_one_mib": mem.peak_one / MiB,
                   "ray_workers": mem.max_workers}
            results.append(row)
            print(f"  {n} images: listing {list_s:.2f} s, scan {secs:.1f} s ({n / secs:.1f} img/s), "
                  f"peak RSS {mem.peak_total / MiB:.0f} MiB over driver + {mem.max_workers} workers "
                  f"(largest process {mem.peak_one / MiB:.0f} MiB)", flush=True)

    print(f"\n{'images':>7}  {'list s':>7}  {'scan s':>7}  {'img/s':>7}  {'ms/img':>7}  "
          f"{'peak RSS MiB (sum)':>18}  {'largest MiB':>11}  {'workers':>7}")
    for r in results:
        print(f"{r['images']:>7}  {r['list_s']:7.2f}  {r['scan_s']:7.1f}  {r['img_s']:7.1f}  "
              f"{1000 / r['img_s']:7.1f}  {r['peak_rss_total_mib']:18.0f}  {r['peak_rss_one_mib']:11.0f}  "
              f"{r['ray_workers']:>7}")
    fit = {}
    if len(results) >= 2:
        a, b = results[0], results[-1]
        per_image = (b["scan_s"] - a["scan_s"]) / (b["images"] - a["images"])
        fixed = a["scan_s"] - per_image * a["images"]
        fit = {"fixed_s": fixed, "per_image_ms": 1000 * per_image,
               "per_image_overhead_ms": 1000 * (per_image - 1 / fwd),
               "memory_growth": b["peak_rss_total_mib"] / a["peak_rss_total_mib"]}
        print(f"T(N) = {fixed:.1f} s + {1000 * per_image:.2f} ms x N; the model's forward pass is "
              f"{1000 / fwd:.2f} ms of that, the rest ({fit['per_image_overhead_ms']:.2f} ms) is fetch, "
              f"decode, heat map, thumbnail, Parquet; peak RSS x{fit['memory_growth']:.2f} from "
              f"{a['images']} to {b['images']} images")
    load_end = os.getloadavg()
    print(f"load average at the end {load_end[0]:.1f} {load_end[1]:.1f} {load_end[2]:.1f}")
    print(json_line({"rows": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in results],
                     "forward_img_s": fwd, **fit, "load_avg_1m": [round(load[0], 1), round(load_end[0], 1)]}))


if __name__ == "__main__":
    main()
