"""Per-scan statistics of a report selection and the plain-text tables that print them.

    python -c "from jobs.report.summary import table_text; print(table_text(['a'], [['1']]))"
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

QUANTILES = (0.5, 0.9, 0.99)


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


def summary_text(scans, top, rows: int) -> str:
    def num(v: float | None, fmt: str = ".3f") -> str:
        return "-" if v is None else format(v, fmt)

    headers = ["scan_id", "date", "model_version", "images", "flagged", "errors", "flag rate", "threshold",
               *(f"p{round(q * 100)}" for q in QUANTILES), "max"]
    cells = [[s.scan_id, s.scan_date, s.model_version, str(s.images), str(s.flagged), str(s.errors),
              "-" if s.flag_rate is None else f"{s.flag_rate:.1%}", num(s.threshold),
              *(num(q) for q in s.quantiles), num(s.max_score)] for s in scans]
    lines = [f"{len(scans)} scans, {rows} images selected"]  # rows: the count, not the table
    if rows:
        lines.append(table_text(headers, cells, right=set(range(3, len(headers)))))
    if top:
        lines += ["", f"top {len(top)} flagged (highest score first)",
                  table_text(["score", "scan_id", "uri"], [[f"{s:.4f}", i, u] for s, i, u in top], right={0})]
    elif scans and not any(s.flagged for s in scans):
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
