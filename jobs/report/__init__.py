"""Summarise, filter and export scan reports; write the moderators' review page.

    python -m jobs.report --input reports/scans                       # per-scan summary + top 20 flagged
    python -m jobs.report --input s3://reports/scans --since 2026-05-01 --until 2026-05-31 \\
        --prefix s3://uploads/2026/05/ --threshold 0.9 --top 50
    python -m jobs.report --input reports/scans --html review.html --histogram scores.png
    python -m jobs.report --input reports/scans --scan-id 20260501T020000Z-3f2a1c --flagged-only \\
        --csv flagged.csv --parquet s3://exports/flagged.parquet

Reads only published scans (``jobs.report.store.open_reports``); no Ray. Filters are
pushed down to the Parquet scan: ``--since``/``--until`` (scan dates, inclusive),
``--scan-id``, ``--prefix`` (URIs starting with it). ``--threshold`` re-decides
``flagged``/``label``/``threshold`` for the selection (then ``--flagged-only`` keeps the
rows at or above it). Flag rate = flagged / scored (error rows have no score).
Exports hold exactly the selected rows: ``--parquet`` every column (``REPORT_SCHEMA``),
``--csv`` all but the binary ``thumbnail`` and ``cam``. Output files may be local or
``s3://``. When moderators have recorded decisions (``python -m jobs.review``), a table
per scan says how many flagged images were reviewed and the share confirmed generated
(jobs/report/reviewed.py). The review page: jobs.report.page. How analysts query the
reports: docs/ANALYSTS.md.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import date

from jobs import cli, storage
from jobs.report import exports
from jobs.report import store as report_store
from jobs.report.reviewed import ScanReview, reviews_text, scan_reviews
from jobs.report.selection import HTML_ROWS, LIGHT_COLUMNS, ReportConfig, select
from jobs.report.summary import (
    ScanStats,
    scan_stats,
    summary_text,
    table_text,
    top_flagged,
)

__all__ = ["ReportConfig", "ReportResult", "get_args_parser", "main", "run", "select", "table_text"]


@dataclass(frozen=True)
class ReportResult:
    scans: tuple[ScanStats, ...]
    top: tuple[tuple[float, str, str], ...]  # (score, scan_id, uri), highest first
    rows: int  # rows selected
    written: tuple[str, ...]  # output files
    reviews: tuple[ScanReview, ...] = ()  # the moderators' decisions per scan (jobs.review), if any

    def text(self) -> str:
        """The summary and top-N tables, as printed, and the moderators' decisions."""
        return summary_text(self.scans, self.top, self.rows) + reviews_text(self.reviews)


def parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def get_args_parser() -> argparse.ArgumentParser:
    d = ReportConfig.__dataclass_fields__
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--input", required=True, help="report root of jobs.scan --output (local or s3://)")
    p.add_argument("--html", help="write the self-contained review page here (local or s3://)")
    p.add_argument("--csv", help="export the selected rows as CSV (without thumbnail and cam)")
    p.add_argument("--parquet", help="export the selected rows as one Parquet file (every column)")
    p.add_argument("--histogram", help="write the score histogram PNG (one panel per scan)")
    p.add_argument("--top", type=int, default=d["top"].default, help="flagged images listed, highest score first (default %(default)s)")
    p.add_argument("--since", type=parse_day, help="first scan date, YYYY-MM-DD (inclusive)")
    p.add_argument("--until", type=parse_day, help="last scan date, YYYY-MM-DD (inclusive)")
    p.add_argument("--prefix", help="only URIs starting with this, e.g. s3://uploads/2026/05/")
    p.add_argument("--threshold", type=float, help="re-decide flagged as score >= this for the selection")
    p.add_argument("--scan-id", help="only this scan")
    p.add_argument("--flagged-only", action="store_true", help="select flagged rows only (summary, exports, page)")
    p.add_argument("--html-rows", choices=HTML_ROWS, default=d["html_rows"].default, help="rows on the page (default %(default)s)")
    p.add_argument("--html-limit", type=int, default=d["html_limit"].default, help="most rows on the page, highest scores first (default %(default)s)")
    cli.add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    config, debug = cli.parse_config(get_args_parser(), ReportConfig, argv)
    code, result = cli.run_main("report", lambda: run(config), debug=debug)
    if result is None:
        return code
    print(result.text(), flush=True)
    for uri in result.written:
        print(f"wrote {uri}")
    return code


def run(config: ReportConfig) -> ReportResult:
    """Read the selection, write the requested files, return the summary."""
    markers = report_store.published_scans(config.input)
    if not markers:
        raise FileNotFoundError(f"no published scans under {config.input} (expected the --output of jobs.scan, holding _scans/)")
    dataset = report_store.open_reports(config.input)
    light = select(dataset, config, columns=LIGHT_COLUMNS)
    scans = scan_stats(light)
    written: list[str] = []
    with cli.writing("the export files"):
        models = {m["scan_id"]: m["config"]["model"] for m in markers if isinstance((m.get("config") or {}).get("model"), str)}
        _write_exports(config, dataset, light, scans, written, models)
    return ReportResult(scans=tuple(scans), top=top_flagged(light, config.top), rows=light.num_rows,
                        written=tuple(written), reviews=scan_reviews(light, config.input))


def _write_exports(config: ReportConfig, dataset, light, scans, written: list[str], models: dict[str, str]) -> None:
    """Each requested file, appended to ``written`` once it is there; ``models``: scan id
    -> its --model, whose model card the review page shows."""
    if config.csv:
        storage.write_bytes(config.csv, exports.csv_bytes(light))
        written.append(config.csv)
    if config.parquet:
        storage.write_bytes(config.parquet, exports.parquet_bytes(select(dataset, config)))
        written.append(config.parquet)
    if config.histogram:
        storage.write_bytes(config.histogram, exports.histograms_png(light, scans))
        written.append(config.histogram)
    if config.html:
        storage.write_bytes(config.html, exports.review_html(dataset, config, light, scans, models).encode("utf-8"))
        written.append(config.html)


if __name__ == "__main__":
    sys.exit(main())
