"""What a report reads: the selection of rows (dates, scan, URI prefix, flagged) pushed
down to the Parquet scan, and ``flagged`` re-decided under another threshold.

    python -c "from jobs.report.selection import ReportConfig; help(ReportConfig)"
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from jobs import cli
from jobs.report.schema import REPORT_SCHEMA, decide

BINARY_COLUMNS = ("thumbnail", "cam")
LIGHT_COLUMNS = tuple(n for n in REPORT_SCHEMA.names if n not in BINARY_COLUMNS)
HTML_ROWS = ("flagged", "all")


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
        p = cli.uri_problems(input=self.input, html=self.html, csv=self.csv, parquet=self.parquet, histogram=self.histogram)
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:  # written so that NaN fails too
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
    flagged, label = decide(table["score"], threshold)
    updates = {
        "flagged": flagged,
        "label": label,
        "threshold": pa.array(np.full(table.num_rows, threshold, dtype=np.float32)),
    }
    for name, values in updates.items():
        if name in table.column_names:
            i = table.column_names.index(name)
            table = table.set_column(i, REPORT_SCHEMA.field(name), pc.cast(values, REPORT_SCHEMA.field(name).type))
    return table
