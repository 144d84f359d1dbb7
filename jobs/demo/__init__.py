"""The whole product on this machine, on real parts, in a few minutes: ``make demo``.

    python -m jobs.demo                      # what `make demo` runs
    python -m jobs.demo --keep-server        # leave S3 running afterwards (Ctrl+C stops it)
    python -m jobs.demo --count 40 --epochs 1 --workdir /tmp/demo   # smaller and faster

It starts a SeaweedFS S3 server on loopback (jobs.demo.s3_server, data under
``<workdir>/s3``), points the AWS_* variables of this process at it *before* Ray starts
(so Ray's workers inherit them), makes the buckets ``labelled``, ``uploads``, ``models``
and ``reports``, fills ``s3://labelled/`` and ``s3://uploads/`` with sample images
(jobs.demo.samples: what "real" and "fake" are there), then runs the jobs as a user would:

1. ``jobs.train --data s3://labelled/ --output s3://models/detector``
2. ``jobs.scan --input s3://uploads/ --model s3://models/detector --output s3://reports/scans``
3. new images land in ``s3://uploads/``; the same scan with ``--mode incremental``
   scores only those
4. the review loop (jobs/demo/review_loop.py): decisions recorded through the review
   app's HTTP API, ``jobs.review export`` to ``<workdir>/labels.csv``, and
   ``jobs.train --init-from s3://models/detector --output s3://models/detector-v2``
5. ``jobs.report --input s3://reports/scans --html <workdir>/review.html --histogram ...``
   (with the moderators' precision per scan)
6. the reports (and decisions) are copied to ``<workdir>/report/`` for DuckDB, pandas or
   Spark, and the command that opens the review app on them is printed.

The server is stopped at the end, on failure, on Ctrl+C and on SIGTERM. Each run starts
from empty buckets (the previous ``<workdir>/s3`` and ``<workdir>/report`` are removed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from jobs.demo import local_ray

BUCKETS = ("labelled", "uploads", "models", "reports")
LABELLED, UPLOADS = "s3://labelled/", "s3://uploads/"
MODEL, SCANS, TUNED = "s3://models/detector", "s3://reports/scans", "s3://models/detector-v2"
STEPS = ("server", "samples", "train", "scan", "incremental", "review", "report", "download")
# Ray and the jobs start with defaults meant for real clusters; on a laptop the demo
# caps the object store and keeps Ray Data's progress bars off its output.
OBJECT_STORE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class DemoConfig:
    workdir: str = "demo-output"
    keep_server: bool = False
    count: int = 150  # labelled images per class
    uploads: int = 50  # images per class in s3://uploads/ before the first scan
    added: int = 5  # images per class added before the incremental scan
    size: int = 96  # sample side in pixels
    # Measured on the samples (2 cores, from scratch): the baseline preset at the samples'
    # own size (a resize to 96 px of a 96 px image changes no pixel, so the upsampling
    # trace survives), Adam 0.001, batch 16: validation accuracy 0.85 after one epoch,
    # about 0.9 after four. Small crops (native preset, 32 px) stayed near 0.65.
    epochs: int = 4
    image_size: int = 96  # the model input; equal to --size, so nothing is resampled
    batch_size: int = 16
    lr: float = 0.001
    fail_after: str | None = None  # for tests: fail right after this step

    def __post_init__(self) -> None:
        if min(self.count, self.uploads, self.added, self.epochs, self.batch_size) < 1 or self.lr <= 0:
            raise ValueError("--count, --uploads, --added, --epochs and --batch-size must be at least 1, --lr positive")
        if self.count < 5:
            raise ValueError("--count must be at least 5 (the 80/20 split needs validation images)")
        if not 16 <= self.image_size <= self.size:
            raise ValueError(f"--image-size must be between 16 and --size ({self.size})")
        if self.fail_after is not None and self.fail_after not in STEPS:
            raise ValueError(f"--fail-after must be one of {', '.join(STEPS)}")


class Interrupted(SystemExit):
    """SIGINT/SIGTERM: unwinds through every ``finally`` like Ctrl+C, exit 128+signal."""


def get_args_parser() -> argparse.ArgumentParser:
    d = DemoConfig.__dataclass_fields__
    p = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--workdir", default=d["workdir"].default, help="where the S3 data, report copy and review page go")
    p.add_argument("--keep-server", action="store_true", help="leave the S3 server running at the end until Ctrl+C")
    for name, help_ in (("count", "labelled sample images per class"), ("uploads", "images per class to scan"),
                        ("added", "images per class added before the incremental scan"),
                        ("size", "sample image side in pixels"), ("epochs", "training epochs"),
                        ("image-size", "model input size in pixels (the baseline preset resizes to it)"), ("batch-size", "training batch size")):
        p.add_argument(f"--{name}", type=int, default=d[name.replace("-", "_")].default,
                       help=f"{help_} (default %(default)s)")
    p.add_argument("--lr", type=float, default=d["lr"].default, help="peak learning rate (default %(default)s)")
    p.add_argument("--fail-after", choices=STEPS, default=None, help=argparse.SUPPRESS)  # tests: cleanup on failure
    return p


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        config = DemoConfig(**{k.replace("-", "_"): v for k, v in vars(args).items()})
    except ValueError as e:
        parser.error(str(e))
    _on_signals(_interrupt)
    try:
        run(config)
        return 0
    except BaseException as e:  # run() has stopped the server and Ray by now
        # Ray may turn the exception our handler raised inside ray.get into its own.
        signum = _RECEIVED[0] if _RECEIVED else int(signal.SIGINT) if isinstance(e, KeyboardInterrupt) else None
        if signum is not None:
            print(f"\ninterrupted (signal {signum}); the server is stopped", file=sys.stderr, flush=True)
            return 128 + signum
        if isinstance(e, SystemExit):
            raise
        traceback.print_exc()
        print("\ndemo failed (the traceback above says where); the server is stopped", file=sys.stderr, flush=True)
        return 1


def run(config: DemoConfig) -> None:
    """Every step of the demo; the S3 server and Ray are stopped whatever happens."""
    from jobs.demo.s3_server import SeaweedS3Server

    start = time.monotonic()
    work = Path(config.workdir).resolve()
    for old in ("s3", "report"):  # a second run starts from empty buckets
        shutil.rmtree(work / old, ignore_errors=True)
    for old in ("review.html", "scores.png", "labels.csv"):  # never left over from an earlier run
        (work / old).unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    server = SeaweedS3Server(work / "s3")
    try:
        _step(1, "start a local S3 server (SeaweedFS, loopback only)")
        server.start()
        os.environ.update(server.env())  # before Ray starts, so its workers inherit it
        print(f"S3 at {server.endpoint_url} (weed pid {server.pid}, data {server.data_dir})", flush=True)
        for bucket in BUCKETS:
            server.create_bucket(bucket)
        print(f"buckets: {', '.join(f's3://{b}/' for b in BUCKETS)}", flush=True)
        _maybe_fail(config, "server")
        _run_steps(config, work, start)
        if config.keep_server:
            local_ray.stop()
            _keep_serving(server)
    finally:
        _on_signals(signal.SIG_IGN)  # a second Ctrl+C must not cut the clean-up short
        local_ray.stop()
        server.stop()
        _on_signals(_interrupt)


def _run_steps(config: DemoConfig, work: Path, start: float) -> None:
    """The demo's steps in order (long: it is the script a reader follows)."""
    from jobs import scan, storage, train
    from jobs.demo.samples import make_samples
    from jobs.scan import ScanConfig

    _step(2, "sample images")
    n = make_samples(LABELLED, config.count, seed=0, size=config.size)
    print(f"{LABELLED}: {n['real']} real + {n['fake']} fake (photo crops vs. a toy upsampling generator)")
    make_samples(UPLOADS, config.uploads, seed=1, size=config.size)
    print(f"{UPLOADS}: {2 * config.uploads} images to scan (other crops, other seed)", flush=True)
    _maybe_fail(config, "samples")

    _step(3, f"train a detector: jobs.train --data {LABELLED} --output {MODEL}")
    local_ray.start(OBJECT_STORE_BYTES)
    _on_signals(_interrupt)  # ray.init installs its own SIGTERM handler (sys.exit(15))
    record = train.run(train.TrainConfig(
        data=LABELLED, output=MODEL, preset="baseline", epochs=config.epochs,
        image_size=config.image_size, batch_size=config.batch_size, lr=config.lr, num_workers=1))
    _on_signals(_interrupt)  # Ray Train's fit() leaves its own SIGINT handler (abort the run) behind
    best = record["best"]
    print(f"validation accuracy {best['val_accuracy']:.3f} (chance 0.5) at epoch {record['best_epoch']}, "
          f"threshold {record['threshold']:.3f}, model {record['model_version']}", flush=True)
    _maybe_fail(config, "train")

    # The demo shows the Ray Data pipeline: scans this small would otherwise run in the
    # driver (--executor auto scores up to jobs.scan.pipeline.LOCAL_MAX_OBJECTS there).
    _step(4, f"scan: jobs.scan --input {UPLOADS} --model {MODEL} --output {SCANS} --executor ray")
    first = scan.run(ScanConfig(input=UPLOADS, model=MODEL, output=SCANS, executor="ray"))
    print(first.line(), flush=True)
    _maybe_fail(config, "scan")

    _step(5, "new uploads, then the same scan with --mode incremental")
    make_samples(UPLOADS, config.added, seed=1, size=config.size, start=config.uploads)
    print(f"added {2 * config.added} images to {UPLOADS}", flush=True)
    second = scan.run(ScanConfig(input=UPLOADS, model=MODEL, output=SCANS, mode="incremental", executor="ray"))
    print(second.line(), flush=True)
    new = second.scored + second.errors
    if new != 2 * config.added or second.skipped != first.listed:
        raise RuntimeError(f"the incremental scan scored {new} images and skipped {second.skipped}; "
                           f"expected the {2 * config.added} new ones and {first.listed} skipped")
    print(f"incremental: scored only the {new} new images, skipped the {second.skipped} already scored", flush=True)
    _maybe_fail(config, "incremental")

    _step(6, f"review loop: decisions through the review app, jobs.review export, jobs.train --init-from {MODEL}")
    from jobs.demo.review_loop import review_loop

    loop = review_loop(scans=SCANS, model=MODEL, tuned=TUNED, labels=str(work / "labels.csv"), uploads=UPLOADS,
                       batch_size=config.batch_size)
    _on_signals(_interrupt)
    _maybe_fail(config, "review")

    html, histogram = work / "review.html", work / "scores.png"
    _step(7, f"report: jobs.report --input {SCANS} --html {html} --histogram {histogram}")
    _report(["--input", SCANS, "--html", str(html), "--histogram", str(histogram)])
    _maybe_fail(config, "report")

    _step(8, f"copy the Parquet reports to {work / 'report'}")
    files = storage.download_dir(SCANS, work / "report")
    print(f"{files} files (Parquet under scan_date=.../scan_id=..., markers under _scans/, decisions under _decisions/)", flush=True)
    _maybe_fail(config, "download")
    _summary(config, work, first, second, record, loop, time.monotonic() - start)


def _report(argv: list[str]) -> None:
    from jobs import report

    try:
        code = report.main(argv)
    except Interrupted:
        raise
    except SystemExit as e:  # argparse or a job's sys.exit("error: ...")
        code = e.code
    if code not in (None, 0):
        raise RuntimeError(f"jobs.report {' '.join(argv)} failed (exit {code})")


def _summary(config: DemoConfig, work: Path, first, second, record: dict, loop, seconds: float) -> None:
    rel = os.path.relpath(work) if work.is_relative_to(Path.cwd()) else str(work)
    parquet = f"{rel}/report/scan_date=*/scan_id=*/*.parquet"  # not _decisions/: another table
    # The samples' folder (s3://uploads/<real|fake>/...) is the truth: a confusion table.
    query = (f"SELECT split_part(uri, '/', 4) AS truth, label AS predicted, count(*) AS images, "
             f"round(avg(score), 3) AS mean_score FROM read_parquet('{parquet}', hive_partitioning=true) "
             f"GROUP BY ALL ORDER BY ALL")
    _step(9, f"done in {seconds:.0f} s")
    python = sys.executable if not _in_venv() else ".venv/bin/python"
    print(f"""\
trained   {MODEL} (val accuracy {record['best']['val_accuracy']:.3f}, {config.epochs} epochs)
scanned   {first.listed} images, then {second.scored + second.errors} new ones incrementally; \
{first.flagged + second.flagged} flagged
Parquet   {rel}/report/  (one row per image: uri, label, score, flagged, thumbnail, cam, ...)
review    {rel}/review.html  (flagged images with their heat maps; open it in a browser)
histogram {rel}/scores.png
reviewed  {sum(loop.decided.values())} images through the review app; {rel}/labels.csv; fine-tuned {TUNED} \
(val accuracy {loop.trained['best']['val_accuracy']:.3f})

try:
  {python} -c "import duckdb; print(duckdb.sql(\\"{query}\\"))"
  {python} -m jobs.review --reports {rel}/report      # the review queue in your browser (prints its URL)
""", flush=True)


def _keep_serving(server) -> None:
    print("\nthe S3 server keeps running for you; in another shell:", flush=True)
    for name, value in server.env().items():
        print(f"export {name}={value}")
    print("Ctrl+C here stops it.", flush=True)
    server.wait()


def _step(n: int, title: str) -> None:
    print(f"\n== {n}/9 {title}", flush=True)


def _maybe_fail(config: DemoConfig, step: str) -> None:
    if config.fail_after == step:
        raise RuntimeError(f"failing after step {step!r} as asked (--fail-after)")


_RECEIVED: list[int] = []  # the signals that arrived, first first


def _interrupt(signum: int, frame: object) -> None:
    _RECEIVED.append(signum)
    raise Interrupted(128 + signum)


def _on_signals(handler) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def _in_venv() -> bool:
    return Path(sys.executable).parent.parent.resolve() == (Path.cwd() / ".venv").resolve()


if __name__ == "__main__":
    sys.exit(main())
