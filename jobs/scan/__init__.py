"""Scan a bucket prefix, folder or manifest for generated images: one Parquet report row
per image, with score, label and a heat-map thumbnail.

    # a laptop (embedded Ray), local folders
    python -m jobs.scan --input ~/photos --model runs/detector-v1 --output reports/scans
    # a cluster; S3 through the AWS_* variables (AWS_ENDPOINT_URL for SeaweedFS/MinIO)
    ray job submit --working-dir . -- python -m jobs.scan --input s3://uploads/2026/ \\
        --model s3://models/detector-v3 --output s3://reports/scans --mode incremental \\
        --use-gpu --concurrency 2 --batch-size 64
    # an S3 Inventory (or any CSV/Parquet list of URIs)
    python -m jobs.scan --manifest s3://inventory/uploads/data/ --model ... --output ...

Pipeline (Ray Data, streaming): list on the driver (jobs.scan.listing) -> skip what earlier
scans scored (jobs.scan.incremental, --mode incremental) -> ``fetch_and_prepare`` tasks
(fetch, decode, preprocess; failures become error rows) -> ``Scorer`` actors (the
model loaded once per actor; score and closed-form Grad-CAM in one forward pass;
thumbnails) -> Parquet under a staging prefix -> published with a marker written last
(jobs.report.store). Report columns: jobs.report.schema. Scans of at most
``jobs.scan.pipeline.LOCAL_MAX_OBJECTS`` objects run the same stages in the driver process
(``--executor auto``, the default; ``ray`` or ``local`` to choose): starting Ray Data's
worker processes costs more than scoring a few hundred images.

The listing is held on the driver as Arrow tables (about 150 bytes per object, 1e6
objects ~ 150 MB) and handed to Ray Data as blocks. For 1e8 objects and more, list
into Parquet shards (or use an S3 Inventory) and scan them with several --manifest
runs, or replace the listing with a Ray Data datasource that lists prefixes in tasks.
"""

from __future__ import annotations

import argparse
import re
import secrets
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import pyarrow as pa

from detector.backends import RUNTIMES, resolve
from detector.decode import DEFAULT_MAX_PIXELS
from detector.errors import DetectorError
from jobs.report import store as report_store
from jobs.runtime import Progress, ensure_ray
from jobs.scan.incremental import ScoredIndex
from jobs.scan.listing import list_input
from jobs.scan.pipeline import (
    EXECUTORS,
    FETCH_CPUS,
    LOCAL_MAX_OBJECTS,
    choose_executor,
    listing_dataset,
    score_dataset,
    score_locally,
)
from jobs.scan.scorer import THUMBNAIL_MODES
from jobs.storage.models import load_model

SCAN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MODES = ("full", "incremental")


@dataclass(frozen=True)
class ScanConfig:
    output: str
    model: str
    input: str | None = None
    manifest: str | None = None
    threshold: float | None = None  # None: the checkpoint's calibrated threshold
    batch_size: int = 32
    concurrency: int = 1
    cpus_per_scorer: float = 1.0
    use_gpu: bool = False
    mode: str = "full"
    thumbnails: str = "all"
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = 64 * 1024 * 1024
    scan_id: str | None = None  # None: generated from the start time
    rows_per_file: int = 5000
    runtime: str = "auto"  # what runs the network: detector.backends (auto: openvino on CPU when installed)
    executor: str = "auto"  # auto: in the driver up to LOCAL_MAX_OBJECTS objects (jobs.scan.pipeline), else Ray Data

    def __post_init__(self) -> None:
        problems = validate(self)
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class ScanSummary:
    scan_id: str
    scan_date: str
    listed: int  # images listed (by extension)
    skipped: int  # already scored by this model (incremental mode)
    scored: int  # rows with a score
    flagged: int
    errors: int  # rows with error set
    seconds: float
    images_per_s: float  # (scored + errors) / seconds, listing included
    model_version: str
    report: str  # the report folder of this scan
    marker: str  # its _scans/<id>.json
    files: tuple[str, ...]
    executor: str = "ray"  # where it was scored: "ray" (Ray Data) or "local" (this process)

    def line(self) -> str:
        return (
            f"scan {self.scan_id}: listed {self.listed}, skipped {self.skipped}, scored {self.scored}, "
            f"flagged {self.flagged}, errors {self.errors} in {self.seconds:.1f} s "
            f"({self.images_per_s:.1f} images/s, {self.executor}); report {self.report} ({len(self.files)} files, "
            f"marker {self.marker})"
        )


def validate(c: ScanConfig) -> list[str]:
    """Problems with a configuration, each saying what to do."""
    p = []
    if (c.input is None) == (c.manifest is None):
        p.append("give either --input (a folder or s3:// prefix) or --manifest (a CSV/Parquet list), not both or neither")
    if c.threshold is not None and not 0.0 <= c.threshold <= 1.0:
        p.append(f"--threshold must be in [0, 1] (a probability), got {c.threshold}")
    for name in ("batch_size", "concurrency", "max_pixels", "max_bytes", "rows_per_file"):
        if getattr(c, name) < 1:
            p.append(f"--{name.replace('_', '-')} must be at least 1, got {getattr(c, name)}")
    if c.cpus_per_scorer <= 0:
        p.append(f"--cpus-per-scorer must be positive, got {c.cpus_per_scorer}")
    if c.mode not in MODES:
        p.append(f"--mode must be one of {', '.join(MODES)}, got {c.mode!r}")
    if c.runtime not in RUNTIMES:
        p.append(f"--runtime must be one of {', '.join(RUNTIMES)}, got {c.runtime!r}")
    elif c.runtime != "auto":
        try:
            resolve(c.runtime, use_gpu=c.use_gpu)
        except ValueError as e:
            p.append(str(e))
    if c.executor not in EXECUTORS:
        p.append(f"--executor must be one of {', '.join(EXECUTORS)}, got {c.executor!r}")
    if c.thumbnails not in THUMBNAIL_MODES:
        p.append(f"--thumbnails must be one of {', '.join(THUMBNAIL_MODES)}, got {c.thumbnails!r}")
    if c.scan_id is not None and not SCAN_ID_PATTERN.match(c.scan_id):
        p.append(f"--scan-id {c.scan_id!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return p


def get_args_parser() -> argparse.ArgumentParser:
    d = ScanConfig.__dataclass_fields__
    p = argparse.ArgumentParser(prog="python -m jobs.scan", description=__doc__.split("\n\n")[0], allow_abbrev=False)  # a misspelt flag fails
    p.add_argument("--input", help="folder or s3://bucket/prefix to scan (images by extension, any depth)")
    p.add_argument("--manifest", help="CSV/Parquet file (or folder, e.g. an S3 Inventory) listing the objects: a uri column, or bucket and key")
    p.add_argument("--model", required=True, help="training output folder (local or s3://) holding model.safetensors, or the file")
    p.add_argument("--output", required=True, help="report root (local or s3://); the scan goes to scan_date=.../scan_id=.../")
    p.add_argument("--threshold", type=float, default=None, help="flag images with P(fake) >= this (default: the checkpoint's calibrated one)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"].default, help="images per model batch (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=d["concurrency"].default, help="scoring actors, each holding the model (default %(default)s)")
    p.add_argument("--cpus-per-scorer", type=float, default=d["cpus_per_scorer"].default, help="CPUs each scoring actor reserves and uses as torch threads (default %(default)s)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per scoring actor")
    p.add_argument("--mode", choices=MODES, default="full", help="incremental: skip objects this model already scored without error (same uri and etag)")
    p.add_argument("--thumbnails", choices=THUMBNAIL_MODES, default="all", help="which rows get a heat-map thumbnail (default all)")
    p.add_argument("--max-pixels", type=int, default=d["max_pixels"].default, help="larger images are error rows (decompression bombs; default %(default)s)")
    p.add_argument("--max-bytes", type=int, default=d["max_bytes"].default, help="larger objects are error rows, not downloaded (default %(default)s)")
    p.add_argument("--scan-id", default=None, help="name of this scan (default: start time + random suffix); re-running an id replaces that scan")
    p.add_argument("--rows-per-file", type=int, default=d["rows_per_file"].default, help="Parquet rows per file (default %(default)s)")
    p.add_argument("--runtime", choices=RUNTIMES, default=d["runtime"].default,
                   help="what runs the network: torch (the reference; GPU), openvino (CPU, ~3x faster, scores within "
                        "0.01), auto (default: openvino on CPU when installed, else torch)")
    p.add_argument("--executor", choices=EXECUTORS, default=d["executor"].default,
                   help=f"ray: a Ray Data pipeline (scales out; ~13 s to start on 2 cores); local: fetch and score in this "
                        f"process; auto (default): local up to {LOCAL_MAX_OBJECTS} objects (GPU scans: ray)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        config = ScanConfig(**vars(args))
    except ValueError as e:
        parser.error(str(e))
    try:
        summary = run(config)
    except (FileNotFoundError, DetectorError, ValueError) as e:
        print(f"scan failed: {e}", file=sys.stderr)
        return 1
    print(summary.line(), flush=True)
    return 0


def run(config: ScanConfig) -> ScanSummary:
    """Scan, write and publish one report; returns its summary. The Ray Data path joins
    the Ray cluster (``ray.init()``: RAY_ADDRESS, or a local Ray) unless Ray is initialised."""
    import ray

    start = time.monotonic()
    started_at = datetime.now(timezone.utc)
    scan_id = config.scan_id or f"{started_at:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    loc = report_store.ScanLocation(config.output, scan_id, started_at.date())
    checkpoint, model_version, threshold, preset = _load_model(config)

    blocks, listed, skipped = _list(config, scan_id, model_version)
    report_store.clear_staging_data(loc)
    rows = sum(b.num_rows for b in blocks)
    executor = choose_executor(config.executor, rows, use_gpu=config.use_gpu)
    if rows and executor == "local":
        tables = score_locally(
            blocks, checkpoint=checkpoint, preset=preset, threshold=threshold, thumbnails=config.thumbnails,
            batch_size=config.batch_size, use_gpu=config.use_gpu, max_pixels=config.max_pixels, runtime=config.runtime,
            max_bytes=config.max_bytes,
        )
        report_store.write_staged_tables(tables, loc, rows_per_file=config.rows_per_file)
    elif rows:
        ensure_ray()
        _check_resources(config, ray.cluster_resources())
        ds = score_dataset(
            listing_dataset(blocks), checkpoint=ray.put(checkpoint), preset=preset, threshold=threshold, thumbnails=config.thumbnails,
            batch_size=config.batch_size, concurrency=config.concurrency, cpus_per_scorer=config.cpus_per_scorer,
            use_gpu=config.use_gpu, max_pixels=config.max_pixels, max_bytes=config.max_bytes, runtime=config.runtime,
        )
        report_store.write_staged(ds, loc, rows_per_file=config.rows_per_file)
    files = report_store.staged_files(loc)
    counts = report_store.staged_counts(loc, files)
    if counts["rows"] != rows:  # every object handed to the pipeline must come back as one row
        raise RuntimeError(f"scan {scan_id}: {rows} objects went in but {counts['rows']} rows were written; not published")
    seconds = time.monotonic() - start
    record = {
        "model_version": model_version, "threshold": threshold, "mode": config.mode, "executor": executor,
        "runtime": resolve(config.runtime, use_gpu=config.use_gpu),
        "input": config.input, "manifest": config.manifest, "listed": listed, "skipped": skipped, **counts,
        "started_at": started_at.isoformat(), "published_at": datetime.now(timezone.utc).isoformat(),
        "config": asdict(config),
    }
    marker = report_store.publish(loc, files, record)
    return ScanSummary(
        scan_id=scan_id, scan_date=loc.scan_date.isoformat(), listed=listed, skipped=skipped,
        scored=counts["scored"], flagged=counts["flagged"], errors=counts["errors"],
        seconds=seconds, images_per_s=counts["rows"] / max(seconds, 1e-9), model_version=model_version,
        report=loc.report_uri, marker=loc.marker_uri, files=tuple(marker["files"]), executor=executor,
    )


def _check_resources(config: ScanConfig, resources: dict) -> None:
    """Warn when the pipeline cannot start on the cluster as it is now (it would wait:
    fine when an autoscaler adds nodes, a silent hang on a laptop)."""
    need = config.concurrency * config.cpus_per_scorer + FETCH_CPUS
    if resources.get("CPU", 0) < need:
        warnings.warn(
            f"the scan needs {need:g} CPUs ({config.concurrency} scoring actors x {config.cpus_per_scorer:g} "
            f"+ {FETCH_CPUS:g} for fetching) and the Ray cluster has {resources.get('CPU', 0):g} now; it waits "
            f"for more nodes. Lower --concurrency or --cpus-per-scorer on a fixed-size cluster.", stacklevel=2)
    if config.use_gpu and resources.get("GPU", 0) < config.concurrency:
        warnings.warn(f"--use-gpu with --concurrency {config.concurrency}: the Ray cluster has "
                      f"{resources.get('GPU', 0):g} GPUs now; the scan waits until enough join", stacklevel=2)


def _load_model(config: ScanConfig) -> tuple[bytes, str, float, dict]:
    """Checkpoint bytes (checked by loading them here once), model_version, the
    threshold to use and the preset."""
    data, ckpt = load_model(config.model)
    threshold = ckpt.threshold if config.threshold is None else config.threshold
    return data, ckpt.model_version, float(threshold), ckpt.preset.to_dict()


def _list(config: ScanConfig, scan_id: str, model_version: str) -> tuple[list[pa.Table], int, int]:
    """The listing as Arrow tables, minus what incremental mode skips."""
    index = None
    if config.mode == "incremental":
        index = ScoredIndex.from_reports(config.output, model_version, exclude_scan_ids={scan_id})
        print(f"incremental: {len(index)} objects already scored by {model_version}", flush=True)
    progress = Progress(f"listing {config.input or config.manifest}")
    blocks: list[pa.Table] = []
    listed = skipped = 0
    for chunk in list_input(input=config.input, manifest=config.manifest):
        n = chunk.num_rows
        listed += n
        if index is not None:
            seen = index.contains(chunk["uri"], chunk["etag"])
            skipped += int(seen.sum())
            chunk = chunk.filter(pa.array(~seen))
        if chunk.num_rows:
            blocks.append(chunk)
        progress.update(n, skipped=skipped)
    progress.print(listed=listed, skipped=skipped)
    return blocks, listed, skipped


if __name__ == "__main__":
    sys.exit(main())
