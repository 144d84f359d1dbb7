"""What a scan is asked to do: its flags (``get_args_parser``) and ``ScanConfig``, checked once in ``__post_init__`` (so
``jobs.scan.run(config)`` called from Python checks too), each problem saying what to do.

    python -c "from jobs.scan.config import ScanConfig; print(ScanConfig(input='in', model='m', output='o'))"
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from detector.backends import RUNTIMES, resolve
from detector.decode import DEFAULT_MAX_PIXELS
from jobs import cli, observe
from jobs.report.markers import SCAN_ID_PATTERN
from jobs.scan.pipeline import EXECUTORS, FETCH_PLACES, LOCAL_MAX_OBJECTS
from jobs.scan.scorer import THUMBNAIL_MODES
from jobs.storage.allowed import AllowedRoots

MODES = ("full", "incremental")
DESCRIPTION = ("Scan a bucket prefix, folder or manifest for generated images: one Parquet report row per image, "
               "with score, label and a heat-map thumbnail.")


@dataclass(frozen=True)
class ScanConfig:
    output: str
    model: str
    input: str | None = None
    manifest: str | None = None
    threshold: float | None = None  # None: the checkpoint's calibrated threshold
    batch_size: int = 32
    concurrency: int = 1
    cpus_per_scorer: float | None = None  # None: jobs.scan.pipeline.scorer_cpus (the cluster's CPUs / concurrency)
    use_gpu: bool = False
    mode: str = "full"
    thumbnails: str = "all"
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = 64 * 1024 * 1024
    scan_id: str | None = None  # None: generated from the start time
    rows_per_file: int = 5000
    fetch: str = "auto"  # Ray Data: where objects are fetched and decoded (jobs.scan.pipeline.FETCH_PLACES)
    executor: str = "auto"  # auto: in the driver up to LOCAL_MAX_OBJECTS objects (jobs.scan.pipeline), else Ray Data
    runtime: str = "auto"  # what runs the network: detector.backends (auto: openvino on CPU when installed)
    allow_prefix: tuple[str, ...] = ()  # where manifest entries may point; () = the manifest's bucket or folder
    max_error_fraction: float = 0.05  # more error rows than this share: exit 7 (the report is still published)
    relist: bool = False  # a resumed scan lists again instead of reusing the killed attempt's listing

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow_prefix", tuple(self.allow_prefix or ()))  # the flag gives a list or None
        problems = validate(self)
        if problems:
            raise ValueError("; ".join(problems))


def validate(c: ScanConfig) -> list[str]:
    """Problems with a configuration, each saying what to do."""
    p = cli.uri_problems(input=c.input, manifest=c.manifest, model=c.model, output=c.output)
    p += cli.finite_problems(threshold=c.threshold, cpus_per_scorer=c.cpus_per_scorer,
                             max_error_fraction=c.max_error_fraction)
    if not 0.0 <= c.max_error_fraction <= 1.0:  # written so that NaN fails too
        p.append(f"--max-error-fraction must be in [0, 1] (1: never fail for error rows), got {c.max_error_fraction}")
    if (c.input is None) == (c.manifest is None):
        p.append("give either --input (a folder or s3:// prefix) or --manifest (a CSV/Parquet list), not both or neither")
    if c.allow_prefix and c.manifest is None:
        p.append("--allow-prefix confines a --manifest's entries; --input scans its own folder or prefix only")
    try:
        AllowedRoots(c.allow_prefix)
    except ValueError as e:
        p.append(str(e))
    if c.threshold is not None and not 0.0 <= c.threshold <= 1.0:  # written so that NaN fails too
        p.append(f"--threshold must be in [0, 1] (a probability), got {c.threshold}")
    for name in ("batch_size", "concurrency", "max_pixels", "max_bytes", "rows_per_file"):
        if getattr(c, name) < 1:
            p.append(f"--{name.replace('_', '-')} must be at least 1, got {getattr(c, name)}")
    if c.cpus_per_scorer is not None and not c.cpus_per_scorer > 0:
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
    if c.fetch not in FETCH_PLACES:
        p.append(f"--fetch must be one of {', '.join(FETCH_PLACES)}, got {c.fetch!r}")
    if c.executor not in EXECUTORS:
        p.append(f"--executor must be one of {', '.join(EXECUTORS)}, got {c.executor!r}")
    if c.thumbnails not in THUMBNAIL_MODES:
        p.append(f"--thumbnails must be one of {', '.join(THUMBNAIL_MODES)}, got {c.thumbnails!r}")
    if c.scan_id is not None and not SCAN_ID_PATTERN.match(c.scan_id):
        p.append(f"--scan-id {c.scan_id!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return p


def get_args_parser() -> argparse.ArgumentParser:
    d = ScanConfig.__dataclass_fields__
    p = argparse.ArgumentParser(prog="python -m jobs.scan", description=DESCRIPTION, allow_abbrev=False)  # a misspelt flag fails
    p.add_argument("--input", help="folder or s3://bucket/prefix to scan (images by extension, any depth)")
    p.add_argument("--manifest", help="CSV/Parquet file (or folder, e.g. an S3 Inventory) listing the objects: a uri column, or bucket and key")
    p.add_argument("--model", required=True, help="training output folder (local or s3://) holding model.safetensors, or the file")
    p.add_argument("--output", required=True, help="report root (local or s3://); the scan goes to scan_date=.../scan_id=.../")
    p.add_argument("--threshold", type=float, default=None, help="flag images with P(fake) >= this (default: the checkpoint's calibrated one)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"].default, help="images per model batch (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=d["concurrency"].default, help="scoring actors, each holding the model (default %(default)s)")
    p.add_argument("--cpus-per-scorer", type=float, default=d["cpus_per_scorer"].default, help="CPUs each scoring actor reserves and uses as model threads (default: the Ray cluster's CPUs "
                        "/ --concurrency, at most one node's; 1 with --use-gpu)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per scoring actor")
    p.add_argument("--mode", choices=MODES, default="full", help="incremental: skip objects this model already scored without error (same uri and etag)")
    p.add_argument("--thumbnails", choices=THUMBNAIL_MODES, default="all", help="which rows get a heat-map thumbnail (default all)")
    p.add_argument("--max-pixels", type=int, default=d["max_pixels"].default, help="larger images are error rows (decompression bombs; default %(default)s)")
    p.add_argument("--max-bytes", type=int, default=d["max_bytes"].default, help="larger objects are error rows, not downloaded (default %(default)s)")
    p.add_argument("--scan-id", default=None,
                   help="name of this scan (default: start time + random suffix). Re-running an id replaces that scan; "
                        "after a killed run it resumes: the kept listing, and only objects without staged rows are scored")
    p.add_argument("--relist", action="store_true",
                   help="when resuming a --scan-id, list the input again instead of reusing the killed run's listing")
    p.add_argument("--max-error-fraction", type=float, default=d["max_error_fraction"].default,
                   help="exit 7 when more than this share of the scan's rows are errors; the report is published all "
                        "the same. Default %(default)s: an S3 outage or revoked credentials makes (nearly) every row an "
                        "error, while corrupt uploads are rare in a healthy bucket; raise it for small incremental "
                        "scans, where one persistently broken object is a large share. 1 never fails")
    p.add_argument("--rows-per-file", type=int, default=d["rows_per_file"].default, help="Parquet rows per file (default %(default)s)")
    p.add_argument("--runtime", choices=RUNTIMES, default=d["runtime"].default,
                   help="what runs the network: torch (the reference; GPU), openvino (CPU, ~3x faster, scores within "
                        "0.01), auto (default: openvino on CPU when installed, else torch)")
    p.add_argument("--executor", choices=EXECUTORS, default=d["executor"].default,
                   help=f"ray: a Ray Data pipeline (scales out; ~5 s to start on 2 cores); local: fetch and score in this "
                        f"process; auto (default): local up to {LOCAL_MAX_OBJECTS} objects (GPU scans: ray)")
    p.add_argument("--fetch", choices=FETCH_PLACES, default=d["fetch"].default,
                   help="Ray Data scans: where objects are fetched and decoded: scorer (in the scoring actors, "
                        "overlapping the model; with --use-gpu JPEGs are decoded on the GPU), tasks (separate Ray "
                        "tasks on the cluster's CPUs); auto (default): scorer")
    cli.add_allow_prefix_flag(p, "--manifest")
    observe.add_flags(p)
    cli.add_debug_flag(p)
    return p


