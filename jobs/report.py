"""Summarise, filter and export scan reports; write the moderators' review page.

    python -m jobs.report --input reports/scans                       # per-scan summary + top 20 flagged
    python -m jobs.report --input s3://reports/scans --since 2026-05-01 --until 2026-05-31 \\
        --prefix s3://uploads/2026/05/ --threshold 0.9 --top 50
    python -m jobs.report --input reports/scans --html review.html --histogram scores.png
    python -m jobs.report --input reports/scans --scan-id 20260501T020000Z-3f2a1c --flagged-only \\
        --csv flagged.csv --parquet s3://exports/flagged.parquet

Reads only published scans (``jobs.report_store.open_reports``); no Ray. Filters are
pushed down to the Parquet scan: ``--since``/``--until`` (scan dates, inclusive),
``--scan-id``, ``--prefix`` (URIs starting with it). ``--threshold`` re-decides
``flagged``/``label``/``threshold`` for the selection (then ``--flagged-only`` keeps the
rows at or above it). Flag rate = flagged / scored (error rows have no score).
Exports hold exactly the selected rows: ``--parquet`` every column (``REPORT_SCHEMA``),
``--csv`` all but the binary ``thumbnail`` and ``cam``. Output files may be local or
``s3://``. The review page: jobs.review_page. How analysts query the reports: docs/ANALYSTS.md.
"""

from __future__ import annotations

import argparse
import io
import sys
import unicodedata
from dataclasses import dataclass
from datetime import date
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from jobs import report_store, storage
from jobs.plots import scan_histogram_png, scan_histograms_png
from jobs.review_page import ScanPanel, page_thumbnail, render_page
from jobs.schema import REPORT_SCHEMA, parquet_write_options

BINARY_COLUMNS = ("thumbnail", "cam")
LIGHT_COLUMNS = tuple(n for n in REPORT_SCHEMA.names if n not in BINARY_COLUMNS)
QUANTILES = (0.5, 0.9, 0.99)
HTML_ROWS = ("flagged", "all")
MAX_HISTOGRAM_PANELS = 24  # --histogram draws the latest scans of a wider selection


@dataclass(frozen=True)
class ReportConfig:
    input: str
    html: str | None = None
    csv: str | None = None
    parquet: str | None = None
    histogram: str | None = None
    top: int = 20
    since: date | None = None
    until: date | None = None
    prefix: str | None = None
    threshold: float | None = None  # None: each scan's own decision
    scan_id: str | None = None
    flagged_only: bool = False
    html_rows: str = "flagged"  # the page lists flagged rows, or all (with a "flagged only" toggle)
    html_limit: int = 10_000  # highest scores first

    def __post_init__(self) -> None:
        p = []
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            p.append(f"--threshold must be in [0, 1] (a probability), got {self.threshold}")
        if self.top < 0:
            p.append(f"--top must be 0 or more, got {self.top}")
        if self.html_limit < 1:
            p.append(f"--html-limit must be at least 1, got {self.html_limit}")
        if self.since and self.until and self.since > self.until:
            p.append(f"--since {self.since} is after --until {self.until}")
        if self.html_rows not in HTML_ROWS:
            p.append(f"--html-rows must be one of {', '.join(HTML_ROWS)}, got {self.html_rows!r}")
        if p:
            raise ValueError("; ".join(p))


@dataclass(frozen=True)
class ScanStats:
    scan_id: str
    scan_date: str
    model_version: str  # ", "-joined when a scan holds several (it should not)
    images: int
    scored: int
    flagged: int
    errors: int
    threshold: float | None  # the decision threshold of the selection (None if mixed)
    quantiles: tuple[float | None, ...]  # of the scores, at QUANTILES
    max_score: float | None

    @property
    def flag_rate(self) -> float | None:
        return self.flagged / self.scored if self.scored else None


@dataclass(frozen=True)
class ReportResult:
    scans: tuple[ScanStats, ...]
    top: tuple[tuple[float, str, str], ...]  # (score, scan_id, uri), highest first
    rows: int  # rows selected
    written: tuple[str, ...]  # output files

    def text(self) -> str:
        """The summary and top-N tables, as printed."""
        return summary_text(self)


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
    return p


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        config = ReportConfig(**vars(args))
    except ValueError as e:
        parser.error(str(e))
    try:
        result = run(config)
    except (FileNotFoundError, ValueError) as e:
        print(f"report failed: {e}", file=sys.stderr)
        return 1
    print(result.text(), flush=True)
    for uri in result.written:
        print(f"wrote {uri}")
    return 0


def run(config: ReportConfig) -> ReportResult:
    """Read the selection, write the requested files, return the summary."""
    markers = report_store.published_scans(config.input)
    if not markers:
        raise FileNotFoundError(f"no published scans under {config.input} (expected the --output of jobs.scan, holding _scans/)")
    dataset = report_store.open_reports(config.input)
    light = select(dataset, config, columns=LIGHT_COLUMNS)
    scans = scan_stats(light)
    written = []
    if config.csv:
        storage.write_bytes(config.csv, csv_bytes(light))
        written.append(config.csv)
    if config.parquet:
        storage.write_bytes(config.parquet, parquet_bytes(select(dataset, config)))
        written.append(config.parquet)
    if config.histogram:
        storage.write_bytes(config.histogram, histograms_png(light, scans))
        written.append(config.histogram)
    if config.html:
        storage.write_bytes(config.html, review_html(dataset, config, light, scans).encode("utf-8"))
        written.append(config.html)
    return ReportResult(scans=tuple(scans), top=top_flagged(light, config.top), rows=light.num_rows, written=tuple(written))


# -- selecting -------------------------------------------------------------------------


def selection_filter(config: ReportConfig) -> ds.Expression | None:
    """The row filter of ``config``, pushed down to the Parquet scan (None: every row)."""
    terms = []
    if config.since:
        terms.append(ds.field("scan_date") >= pa.scalar(config.since, pa.date32()))
    if config.until:
        terms.append(ds.field("scan_date") <= pa.scalar(config.until, pa.date32()))
    if config.scan_id:
        terms.append(ds.field("scan_id") == config.scan_id)
    if config.prefix:
        terms.append(pc.starts_with(ds.field("uri"), pattern=config.prefix))
    if config.flagged_only:
        terms.append(flagged_expression(config.threshold))
    expr = None
    for t in terms:
        expr = t if expr is None else expr & t
    return expr


def flagged_expression(threshold: float | None) -> ds.Expression:
    """Rows flagged under ``threshold`` (None: as the scan decided)."""
    if threshold is None:
        return ds.field("flagged") == True  # noqa: E712 - an Arrow expression, not a Python comparison
    return ds.field("score") >= threshold


def select(dataset: ds.Dataset, config: ReportConfig, *, columns=None, extra: ds.Expression | None = None) -> pa.Table:
    """The selected rows (``columns``, default all), flagged re-decided under ``--threshold``."""
    expr = selection_filter(config)
    if extra is not None:
        expr = extra if expr is None else expr & extra
    table = dataset.to_table(columns=list(columns) if columns else None, filter=expr)
    return redecide(table, config.threshold)


def redecide(table: pa.Table, threshold: float | None) -> pa.Table:
    """``flagged = score >= threshold``, ``label`` and ``threshold`` to match (null where
    the score is null); unchanged when ``threshold`` is None."""
    if threshold is None:
        return table
    score = table["score"]
    flagged = pc.greater_equal(pc.cast(score, pa.float64()), threshold)
    updates = {
        "flagged": flagged,
        "label": pc.if_else(flagged, "fake", "real"),
        "threshold": pa.array(np.full(table.num_rows, threshold, dtype=np.float32)),
    }
    for name, values in updates.items():
        if name in table.column_names:
            i = table.column_names.index(name)
            table = table.set_column(i, REPORT_SCHEMA.field(name), pc.cast(values, REPORT_SCHEMA.field(name).type))
    return table


# -- summarising -----------------------------------------------------------------------


def scan_stats(table: pa.Table) -> list[ScanStats]:
    """One ``ScanStats`` per scan in ``table``, oldest scan date first."""
    df = table.select(["scan_id", "scan_date", "model_version", "score", "flagged", "error", "threshold"]).to_pandas()
    out = []
    for (scan_id, scan_date), g in df.groupby(["scan_id", "scan_date"], sort=True):
        scores = g["score"].dropna().to_numpy(dtype=np.float64)
        thresholds = g["threshold"].dropna().unique()
        out.append(ScanStats(
            scan_id=str(scan_id), scan_date=str(scan_date),
            model_version=", ".join(sorted(str(v) for v in g["model_version"].dropna().unique())),
            images=len(g), scored=int(g["score"].notna().sum()),
            flagged=int(g["flagged"].fillna(False).astype(bool).sum()), errors=int(g["error"].notna().sum()),
            threshold=float(thresholds[0]) if len(thresholds) == 1 else None,
            quantiles=tuple(float(np.quantile(scores, q)) if scores.size else None for q in QUANTILES),
            max_score=float(scores.max()) if scores.size else None,
        ))
    return sorted(out, key=lambda s: (s.scan_date, s.scan_id))


def top_flagged(table: pa.Table, n: int) -> tuple[tuple[float, str, str], ...]:
    """The ``n`` highest-scoring flagged rows: (score, scan_id, uri); ties by URI."""
    if n == 0 or table.num_rows == 0:
        return ()
    flagged = table.filter(pc.fill_null(table["flagged"], False)).select(["score", "scan_id", "uri"])
    flagged = flagged.sort_by([("score", "descending"), ("uri", "ascending"), ("scan_id", "ascending")]).slice(0, n)
    return tuple(zip(flagged["score"].to_pylist(), flagged["scan_id"].to_pylist(), flagged["uri"].to_pylist()))


def summary_text(result: ReportResult) -> str:
    def num(v: float | None, fmt: str = ".3f") -> str:
        return "-" if v is None else format(v, fmt)

    headers = ["scan_id", "date", "model_version", "images", "flagged", "errors", "flag rate", "threshold",
               *(f"p{round(q * 100)}" for q in QUANTILES), "max"]
    rows = [[s.scan_id, s.scan_date, s.model_version, str(s.images), str(s.flagged), str(s.errors),
             "-" if s.flag_rate is None else f"{s.flag_rate:.1%}", num(s.threshold),
             *(num(q) for q in s.quantiles), num(s.max_score)] for s in result.scans]
    lines = [f"{len(result.scans)} scans, {result.rows} images selected"]
    if rows:
        lines.append(table_text(headers, rows, right=set(range(3, len(headers)))))
    if result.top:
        lines += ["", f"top {len(result.top)} flagged (highest score first)",
                  table_text(["score", "scan_id", "uri"], [[f"{s:.4f}", i, u] for s, i, u in result.top], right={0})]
    elif result.scans and not any(s.flagged for s in result.scans):
        lines += ["", "no flagged images in the selection"]
    return "\n".join(lines)


def table_text(headers: list[str], rows: list[list[str]], *, right: set[int] = frozenset()) -> str:
    """An aligned plain-text table; control and format characters in cells are escaped
    (an object key could otherwise move the cursor or reverse the text in a terminal)."""
    cells = [[printable(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    out = []
    for k, row in enumerate(cells):
        out.append("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def printable(text: str) -> str:
    return "".join(c if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp") else c.encode("unicode_escape").decode("ascii")
                   for c in str(text))


# -- writing ---------------------------------------------------------------------------


def csv_bytes(table: pa.Table) -> bytes:
    """CSV of every column but the binary ones; nulls as empty fields, empty strings as ""."""
    import pyarrow.csv as pacsv

    out = io.BytesIO()
    pacsv.write_csv(table.select([n for n in table.column_names if n not in BINARY_COLUMNS]), out)
    return out.getvalue()


def parquet_bytes(table: pa.Table) -> bytes:
    """One Parquet file of ``REPORT_SCHEMA`` rows, with the report's column settings."""
    import pyarrow.parquet as pq

    options = parquet_write_options(row_group_size=1000)
    options["compression"] = {**options["compression"], "scan_date": "zstd", "scan_id": "zstd"}
    out = io.BytesIO()
    pq.write_table(table.select(REPORT_SCHEMA.names).cast(REPORT_SCHEMA), out, **options)
    return out.getvalue()


def histograms_png(light: pa.Table, scans: list[ScanStats]) -> bytes:
    """One histogram panel per scan (the latest ``MAX_HISTOGRAM_PANELS``)."""
    shown = scans[-MAX_HISTOGRAM_PANELS:]
    if not shown:
        return scan_histogram_png([], title="no images selected")
    return scan_histograms_png([(_histogram_title(s), _scores(light, s.scan_id), s.threshold) for s in shown])


def review_html(dataset: ds.Dataset, config: ReportConfig, light: pa.Table, scans: list[ScanStats]) -> str:
    """The review page of the selection: flagged rows (or all), highest scores first,
    at most ``html_limit``, thumbnails read only for those rows."""
    candidates = light
    if config.html_rows == "flagged":
        candidates = light.filter(pc.fill_null(light["flagged"], False))
    total = candidates.num_rows
    extra = flagged_expression(config.threshold) if config.html_rows == "flagged" else None
    scores = pc.drop_null(candidates["score"]).to_numpy()
    if scores.size >= config.html_limit:  # read the thumbnails of the highest scores only
        kth = float(np.partition(scores, scores.size - config.html_limit)[scores.size - config.html_limit])
        high = ds.field("score") >= kth
        extra = high if extra is None else extra & high
    columns = ["uri", "score", "flagged", "model_version", "scan_id", "scan_date", "error", "thumbnail"]
    table = select(dataset, config, columns=columns, extra=extra)
    table = table.sort_by([("score", "descending"), ("uri", "ascending")]).slice(0, config.html_limit)
    rows = table.drop_columns(["thumbnail"]).to_pylist()
    for row, thumb in zip(rows, table["thumbnail"].to_pylist()):
        row["thumb"] = page_thumbnail(thumb)
        row["scan_date"] = str(row["scan_date"])
    what = "flagged images" if config.html_rows == "flagged" else "images"
    notes = [f"{total} {what} in the selection of {config.input}" + (
        f"; the {len(rows)} highest-scoring are listed (raise --html-limit or narrow the selection)" if total > len(rows) else "")]
    if config.threshold is not None:
        notes.append(f"flagged re-decided at threshold {config.threshold:g}")
    panels = [ScanPanel(scan_id=s.scan_id, facts=_facts(s),
                        histogram_png=scan_histogram_png(_scores(light, s.scan_id), threshold=s.threshold, title=_histogram_title(s)))
              for s in scans[-MAX_HISTOGRAM_PANELS:]]
    return render_page(rows, title="genscan review: flagged images" if config.html_rows == "flagged" else "genscan review",
                       scans=panels, notes=notes, flagged_only=True)


def _scores(light: pa.Table, scan_id: str) -> np.ndarray:
    scores = light.filter(pc.equal(light["scan_id"], scan_id))["score"]
    return pc.drop_null(scores).to_numpy().astype(np.float64) if len(scores) else np.zeros(0)


def _histogram_title(s: ScanStats) -> str:
    return f"scan {s.scan_id} ({s.scan_date})"


def _facts(s: ScanStats) -> tuple[tuple[str, str], ...]:
    rate = "-" if s.flag_rate is None else f"{s.flag_rate:.1%}"
    return (("scan", s.scan_id), ("date", s.scan_date), ("model", s.model_version), ("images", str(s.images)),
            ("flagged", f"{s.flagged} ({rate})"), ("errors", str(s.errors)),
            ("median score", "-" if s.quantiles[0] is None else f"{s.quantiles[0]:.3f}"))


if __name__ == "__main__":
    sys.exit(main())
