"""The files a report writes: CSV and Parquet exports, score histograms, the review page.

    python -m jobs.report --input reports/scans --csv flagged.csv --html review.html
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from jobs.report.page import ScanPanel, page_thumbnail, render_page
from jobs.report.schema import REPORT_SCHEMA, parquet_write_options
from jobs.report.selection import (
    BINARY_COLUMNS,
    ReportConfig,
    flagged_expression,
    select,
)
from jobs.report.summary import ScanStats
from jobs.storage.models import read_card

MAX_HISTOGRAM_PANELS = 24  # --histogram draws the latest scans of a wider selection


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
    from jobs import plots  # matplotlib here, not in every importer of the report code (scan workers)

    shown = scans[-MAX_HISTOGRAM_PANELS:]
    if not shown:
        return plots.scan_histogram_png([], title="no images selected")
    return plots.scan_histograms_png([(_histogram_title(s), _scores(light, s.scan_id), s.threshold) for s in shown])


def review_html(dataset: ds.Dataset, config: ReportConfig, light: pa.Table, scans: list[ScanStats],
                models: dict[str, str] | None = None) -> str:
    """The review page of the selection: flagged rows (or all), highest scores first,
    at most ``html_limit``, thumbnails read only for those rows. ``models``: scan id ->
    its ``--model``, whose model card each scan's panel shows."""
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
    from jobs import plots  # see histograms_png

    cards = {m: read_card(m) for m in set((models or {}).values())}
    panels = [ScanPanel(scan_id=s.scan_id, facts=_facts(s), card=cards.get((models or {}).get(s.scan_id, "")),
                        histogram_png=plots.scan_histogram_png(_scores(light, s.scan_id), threshold=s.threshold, title=_histogram_title(s)))
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
