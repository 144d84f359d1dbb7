"""Scan a bucket prefix, folder or manifest for generated images: one Parquet report row
per image, with score, label and a heat-map thumbnail.

    # a laptop (embedded Ray), local folders
    python -m jobs.scan --input ~/photos --model runs/detector-v1 --output reports/scans
    # a cluster; S3 through the AWS_* variables (AWS_ENDPOINT_URL for SeaweedFS/MinIO)
    ray job submit --working-dir . -- python -m jobs.scan --input s3://uploads/2026/ \\
        --model s3://models/detector-v3 --output s3://reports/scans --mode incremental \\
        --use-gpu --concurrency 2 --batch-size 64
    # an S3 Inventory (or any CSV/Parquet list of URIs); its entries may only name objects
    # under --allow-prefix (default: the manifest's own bucket or folder; '*': anything)
    python -m jobs.scan --manifest s3://inventory/uploads/data/ --allow-prefix s3://uploads/ \\
        --model ... --output ...

Failures print one ``scan failed: ...`` line and exit with the code of their kind
(jobs/cli.py: 2 bad flags, 3 bad model, 4 storage unreachable or denied, 5 output not
writable, 6 scan id in use, 7 more error rows than ``--max-error-fraction`` (published
all the same), 1 anything else); ``--debug`` adds the traceback. ``--metrics-push`` /
``--metrics-file`` export the counts (jobs.observe.metrics), ``--log-format json`` the
summary as JSON (jobs.observe.logs). Re-running a killed scan's ``--scan-id`` resumes it
(jobs.scan.resume): its kept listing, and only the objects it had not staged are scored.

Pipeline (Ray Data, streaming): list on the driver (jobs.scan.listing) -> skip what earlier
scans scored (jobs.scan.incremental, --mode incremental) -> scoring actors that fetch,
decode and preprocess (failures become error rows; on CPU in the actor itself, decoding one
batch while the model runs another; with GPUs in separate tasks: ``--fetch``), then load the
model once per actor, score with the closed-form Grad-CAM in one forward pass and draw the
thumbnails (jobs.scan.pipeline) -> Parquet under a staging prefix -> published with a marker written last
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

import dataclasses
import secrets
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import pyarrow as pa

from detector.backends import resolve
from jobs import cli
from jobs.observe import logs
from jobs.observe import metrics as observe_metrics
from jobs.report import store as report_store
from jobs.report.lease import ScanLease
from jobs.runtime import ensure_ray
from jobs.scan.config import MODES, ScanConfig, get_args_parser, validate
from jobs.scan.listing import Listing, scan_listing
from jobs.scan.pipeline import (
    FETCH_CPUS,
    WRITE_CPUS,
    choose_executor,
    choose_fetch,
    listing_dataset,
    score_dataset,
    score_locally,
    scorer_cpus,
)
from jobs.scan.resume import (
    Resumed,
    discard_listing,
    fingerprint,
    load_listing,
    move_into,
    reuse_staged,
    save_listing,
)
from jobs.storage.models import load_model

SCAN_ID_PATTERN = report_store.SCAN_ID_PATTERN
__all__ = ["MODES", "SCAN_ID_PATTERN", "ScanConfig", "ScanSummary", "get_args_parser", "main", "run", "validate"]


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
    images_per_s: float  # rows this run scored or failed (resumed ones not) / seconds, listing included
    model_version: str
    report: str  # the report folder of this scan
    marker: str  # its _scans/<id>.json
    files: tuple[str, ...]
    executor: str = "ray"  # where it was scored: "ray" (Ray Data) or "local" (this process)
    dropped: tuple[tuple[str, int], ...] = ()  # manifest rows and folder entries left out: (reason, count)
    resumed: int = 0  # rows kept from a killed attempt of this scan id (jobs.scan.resume), not scored again

    def line(self) -> str:
        dropped = f", dropped {sum(n for _, n in self.dropped)} manifest rows or entries" if self.dropped else ""
        resumed = f" ({self.resumed} kept from an earlier attempt)" if self.resumed else ""
        return (
            f"scan {self.scan_id}: listed {self.listed}{dropped}, skipped {self.skipped}, scored {self.scored}{resumed}, "
            f"flagged {self.flagged}, errors {self.errors} in {self.seconds:.1f} s "
            f"({self.images_per_s:.1f} images/s, {self.executor}); report {self.report} ({len(self.files)} files, "
            f"marker {self.marker})"
        )

    def too_many_errors(self, max_fraction: float) -> str | None:
        """Why the scan fails for its error rows (jobs.cli.TOO_MANY_ERRORS), or None."""
        rows = self.scored + self.errors
        if not rows or self.errors <= max_fraction * rows:
            return None
        return (f"{self.errors} of {rows} rows are errors ({self.errors / rows:.0%}), over --max-error-fraction "
                f"{max_fraction:g}; the report is published ({self.marker}) and --mode incremental re-scores them")


def main(argv: list[str] | None = None) -> int:
    config, options = cli.parse_job(get_args_parser(), ScanConfig, argv)
    logs.configure(options.log_format)
    start = time.monotonic()
    config = dataclasses.replace(config, scan_id=config.scan_id or new_scan_id(datetime.now(timezone.utc)))
    code, summary = cli.run_main("scan", lambda: run(config), debug=options.debug, say=logs.error)
    why = None if summary is None else summary.too_many_errors(config.max_error_fraction)
    if why:
        code = cli.TOO_MANY_ERRORS
    if summary is not None:
        fields = {k: v for k, v in asdict(summary).items() if k != "files"}
        logs.summary(summary.line(), {**fields, "files": len(summary.files), "exit_code": code})
    if why:
        logs.error(f"scan failed: {why}", scan_id=config.scan_id, exit_code=code)
    _export_metrics(config, options, summary, code, time.monotonic() - start)
    return code


def _export_metrics(config: ScanConfig, options: cli.JobOptions, summary: ScanSummary | None, code: int,
                    seconds: float) -> None:
    """--metrics-push / --metrics-file, whatever the outcome: a failure before any row
    still says so (its exit code, listed 0)."""
    counts = {"seconds": seconds}
    if summary is not None:
        counts = {k: getattr(summary, k) for k in observe_metrics.SCAN_GAUGES if hasattr(summary, k)}
        counts["images_per_second"] = summary.images_per_s
    source = config.input or config.manifest
    observe_metrics.export(
        observe_metrics.scan_registry(input=source, scan_id=config.scan_id, counts=counts, exit_code=code),
        job=observe_metrics.SCAN_JOB, grouping={"input": source}, push=options.metrics_push,
        file=options.metrics_file, succeeded=code == cli.OK)


def new_scan_id(started_at: datetime) -> str:
    """A scan id from the start time and a random suffix: ``20261125T082804Z-737250``."""
    return f"{started_at:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def run(config: ScanConfig) -> ScanSummary:
    """Scan, write and publish one report; returns its summary. The Ray Data path joins
    the Ray cluster (``ray.init()``: RAY_ADDRESS, or a local Ray) unless Ray is initialised.

    The scan id's lease (jobs.report.lease) is taken before anything is staged, so a second
    live run of the id is refused (jobs.cli.InUseError); each attempt stages in its own
    folder, and one that fails removes what it staged (a full disk's partial file)."""
    start = time.monotonic()
    started_at = datetime.now(timezone.utc)
    scan_id = config.scan_id or new_scan_id(started_at)
    loc = report_store.ScanLocation(config.output, scan_id, started_at.date())
    checkpoint, model_version, threshold, preset = _load_model(config)
    lease = ScanLease(loc.staging_uri, scan_id, loc.attempt)
    with cli.writing(config.output):  # the first write: a read-only --output fails here, before any work
        lease.acquire()
    try:
        listing, resumed = _listing(config, loc, model_version, threshold)
        executor, rows = _score_and_stage(config, loc, listing.blocks, checkpoint=checkpoint, preset=preset,
                                          threshold=threshold)
        with cli.writing(config.output):
            move_into(resumed, loc)
        files = report_store.staged_files(loc)
        counts = report_store.staged_counts(loc, files)
        if counts["rows"] != rows + resumed.rows:  # every object handed to the pipeline must come back as one row
            raise RuntimeError(f"scan {scan_id}: {rows} objects went in and {resumed.rows} rows were resumed, but "
                               f"{counts['rows']} rows were written; not published")
        seconds = time.monotonic() - start
        listed, skipped, dropped = listing.listed, listing.skipped, listing.dropped
        record = {
            "model_version": model_version, "threshold": threshold, "mode": config.mode, "executor": executor,
            "runtime": resolve(config.runtime, use_gpu=config.use_gpu),
            "input": config.input, "manifest": config.manifest, "listed": listed, "skipped": skipped,
            "resumed": resumed.rows, "listing_reused": listing.reused,
            "dropped": dict(dropped), **counts, "started_at": started_at.isoformat(),
            "published_at": datetime.now(timezone.utc).isoformat(), "config": asdict(config),
        }
        lease.check()  # still this attempt's scan id: publish
        with cli.writing(config.output):
            marker = report_store.publish(loc, files, record)
    except BaseException:
        _discard(loc)
        raise
    finally:
        lease.release()
        report_store.remove_empty_staging(loc)
    return ScanSummary(
        scan_id=scan_id, scan_date=loc.scan_date.isoformat(), listed=listed, skipped=skipped,
        scored=counts["scored"], flagged=counts["flagged"], errors=counts["errors"],
        seconds=seconds, images_per_s=(counts["rows"] - resumed.rows) / max(seconds, 1e-9), model_version=model_version,
        report=loc.report_uri, marker=loc.marker_uri, files=tuple(marker["files"]), executor=executor,
        dropped=tuple(dropped.most_common()), resumed=resumed.rows,
    )


def _listing(config: ScanConfig, loc: report_store.ScanLocation, model_version: str,
             threshold: float) -> tuple[Listing, Resumed]:
    """What this attempt scores: an earlier attempt's kept listing (unless --relist) minus
    the objects its complete staged parts hold (jobs.scan.resume), or a new listing, kept."""
    expected = fingerprint(config, model_version, threshold)
    listing = None if config.relist else load_listing(loc, expected)
    if listing is None:
        listing = scan_listing(config, loc.scan_id, model_version)
        with cli.writing(config.output):
            save_listing(loc, listing, expected)
    else:
        print(f"resuming scan {loc.scan_id}: its listing of {listing.listed} objects is kept "
              f"(--relist lists again)", file=sys.stderr, flush=True)
    listing, resumed = reuse_staged(loc, listing)
    if resumed.rows:
        print(f"resuming scan {loc.scan_id}: {resumed.rows} rows staged by earlier attempts are kept, "
              f"{sum(b.num_rows for b in listing.blocks)} objects left to score", file=sys.stderr, flush=True)
    return listing, resumed


def _score_and_stage(config: ScanConfig, loc: report_store.ScanLocation, blocks: list[pa.Table], *,
                     checkpoint: bytes, preset: dict, threshold: float) -> tuple[str, int]:
    """Score the listing into this attempt's staging folder; returns (executor, rows in)."""
    import ray

    rows = sum(b.num_rows for b in blocks)
    executor = choose_executor(config.executor, rows, use_gpu=config.use_gpu)
    if rows and executor == "local":
        tables = score_locally(
            blocks, checkpoint=checkpoint, preset=preset, threshold=threshold, thumbnails=config.thumbnails,
            batch_size=config.batch_size, use_gpu=config.use_gpu, max_pixels=config.max_pixels, runtime=config.runtime,
            max_bytes=config.max_bytes,
        )
        with cli.writing(config.output):
            report_store.write_staged_tables(tables, loc, rows_per_file=config.rows_per_file)
    elif rows:
        ensure_ray()
        fetch = choose_fetch(config.fetch, use_gpu=config.use_gpu)
        cpus = scorer_cpus(config.cpus_per_scorer, concurrency=config.concurrency, fetch=fetch, use_gpu=config.use_gpu)
        _check_resources(config, ray.cluster_resources(), cpus=cpus, fetch=fetch)
        ds = score_dataset(
            listing_dataset(blocks), checkpoint=ray.put(checkpoint), preset=preset, threshold=threshold, thumbnails=config.thumbnails,
            batch_size=config.batch_size, concurrency=config.concurrency, cpus_per_scorer=cpus,
            use_gpu=config.use_gpu, max_pixels=config.max_pixels, max_bytes=config.max_bytes, runtime=config.runtime,
            fetch=fetch,
        )
        with cli.writing(config.output):
            report_store.write_staged(ds, loc, rows_per_file=config.rows_per_file, write_cpus=WRITE_CPUS)
    return executor, rows


def _discard(loc: report_store.ScanLocation) -> None:
    """Remove what a failed attempt staged; never hide the failure itself."""
    try:
        report_store.clear_staging_data(loc)
        discard_listing(loc)  # run()'s finally then removes the emptied folders
    except Exception as e:  # noqa: BLE001
        logs.warning(f"could not remove {loc.attempt_uri}: {e}")


def _check_resources(config: ScanConfig, resources: dict, *, cpus: float, fetch: str) -> None:
    """Warn when the pipeline cannot start on the cluster as it is now (it would wait:
    fine when an autoscaler adds nodes, a silent hang on a laptop)."""
    fetching = FETCH_CPUS if fetch == "tasks" else 0
    need = config.concurrency * cpus + fetching + WRITE_CPUS
    if resources.get("CPU", 0) < need:
        warnings.warn(
            f"the scan needs {need:g} CPUs ({config.concurrency} scoring actors x {cpus:g} "
            f"+ {fetching:g} for fetch tasks + {WRITE_CPUS:g} for writes) and the Ray cluster has {resources.get('CPU', 0):g} now; it waits "
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


if __name__ == "__main__":
    sys.exit(main())
