"""The review queue: the flagged rows of the chosen scans, highest score first, paged.

The light columns of the flagged rows are read once (``uri``, ``etag``, ``score``,
``scan_id``, ``scan_date``, ``model_version``: ~100 bytes a row, so 100,000 flagged rows
are ~10 MB) with the place of each row in its Parquet row group. Filtering and paging are
then numpy work on those columns, milliseconds for 100,000 rows; a thumbnail is read only
when the browser asks for it, from its own row group (a few recent row groups are kept).

    python -c "from jobs.review.queue import Queue; q = Queue.load('reports'); print(len(q.rows))"
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds

from jobs.report import store as report_store
from jobs.report.selection import ReportConfig, selection_filter
from jobs.report.summary import printable

LIGHT = ["uri", "etag", "score", "flagged", "model_version"]
MAX_PAGE = 200


@dataclass(frozen=True)
class QueueFilter:
    """What the moderator asked to see (all optional)."""

    scan_id: str | None = None
    scan_date: date | None = None
    prefix: str | None = None
    undecided: bool = False


class Queue:
    """Flagged rows sorted by score (highest first); ``rows`` index = the row's id."""

    def __init__(self, rows: pd.DataFrame, groups: list[ds.Fragment]) -> None:
        self.rows = rows.reset_index(drop=True)
        self._groups = groups  # one fragment per Parquet row group: where thumbnails are read
        self.keys = pd.Index(self.rows["uri"] + "\0" + self.rows["etag"].fillna(""))

    @classmethod
    def load(cls, reports: str, *, scan_ids: tuple[str, ...] = (), since: date | None = None,
             until: date | None = None, threshold: float | None = None) -> Queue:
        """The queue of the published scans under ``reports`` (``scan_ids``: only those; dates
        inclusive); ``threshold``: rows scored at least this, instead of each scan's flags."""
        if not report_store.published_scans(reports):
            raise FileNotFoundError(f"no published scans under {reports} (expected the --output of jobs.scan, "
                                    "holding _scans/)")
        dataset = report_store.open_reports(reports)
        partitions = selection_filter(ReportConfig(input=reports, since=since, until=until))
        if scan_ids:
            wanted = ds.field("scan_id").isin(list(scan_ids))
            partitions = wanted if partitions is None else partitions & wanted
        frames, groups = [], []
        for fragment in dataset.get_fragments(filter=partitions):
            keys = ds.get_partition_keys(fragment.partition_expression)
            for group in fragment.split_by_row_group():
                table = group.to_table(columns=LIGHT, schema=dataset.schema)
                decided = table["flagged"] if threshold is None else pc.greater_equal(table["score"], threshold)
                flagged = np.asarray(decided.fill_null(False))
                if not flagged.any():
                    continue
                df = table.filter(flagged).to_pandas()
                df["scan_id"], df["scan_date"] = keys.get("scan_id"), str(keys.get("scan_date"))
                df["group"], df["row"] = len(groups), np.flatnonzero(flagged)
                frames.append(df.drop(columns="flagged"))
                groups.append(group)
        rows = pd.concat(frames) if frames else pd.DataFrame(columns=[*LIGHT, "scan_id", "scan_date", "group", "row"])
        rows = rows.sort_values(["score", "uri"], ascending=[False, True], kind="stable")
        return cls(rows, groups)

    def decisions_of(self, latest: pd.DataFrame) -> pd.DataFrame:
        """Per row: the latest decision, reviewer and time (NaN where none); ``latest`` is
        jobs.review.decisions.latest()."""
        if latest.empty:
            return pd.DataFrame(index=range(len(self.rows)), columns=["decision", "reviewer", "decided_at"])
        index = pd.Index(latest["uri"] + "\0" + latest["etag"].fillna(""))
        found = latest.set_index(index)[["decision", "reviewer", "decided_at"]]
        return found.reindex(self.keys).reset_index(drop=True)

    def select(self, f: QueueFilter, decided: pd.DataFrame) -> np.ndarray:
        """Ids of the rows ``f`` keeps, in queue order."""
        keep = np.ones(len(self.rows), dtype=bool)
        if f.scan_id:
            keep &= (self.rows["scan_id"] == f.scan_id).to_numpy()
        if f.scan_date:
            keep &= (self.rows["scan_date"] == f.scan_date.isoformat()).to_numpy()
        if f.prefix:
            keep &= self.rows["uri"].str.startswith(f.prefix).to_numpy()
        if f.undecided:
            keep &= decided["decision"].isna().to_numpy()
        return np.flatnonzero(keep)

    def page(self, ids: np.ndarray, decided: pd.DataFrame, offset: int, limit: int) -> list[dict[str, Any]]:
        """The rows ``ids[offset:offset+limit]`` as the page shows them. Text from the data
        is escaped as the terminal summary escapes it (a bidi override or a zero-width
        character shows as ``\\u202e``), so a key cannot disguise itself."""
        out = []
        for i in ids[offset:offset + min(limit, MAX_PAGE)]:
            r, d = self.rows.iloc[i], decided.iloc[i]
            out.append({
                "id": int(i), "uri": printable(r["uri"]), "score": round(float(r["score"]), 4),
                "scan_id": printable(r["scan_id"]), "scan_date": r["scan_date"],
                "model_version": printable(r["model_version"] or ""),
                "decision": None if pd.isna(d["decision"]) else d["decision"],
                "reviewer": None if pd.isna(d["reviewer"]) else printable(d["reviewer"]),
                "decided_at": None if pd.isna(d["decided_at"]) else f"{pd.Timestamp(d['decided_at']):%Y-%m-%d %H:%M:%S} UTC",
            })
        return out

    def record(self, i: int) -> dict[str, Any]:
        """What a decision on row ``i`` records about the image (decisions.DECISION_SCHEMA)."""
        r = self.rows.iloc[i]
        return {"uri": r["uri"], "etag": None if pd.isna(r["etag"]) else r["etag"], "scan_id": r["scan_id"],
                "model_version": r["model_version"], "score": float(r["score"])}

    def thumbnail(self, i: int) -> bytes | None:
        r = self.rows.iloc[i]
        return _thumbnails(self._groups[r["group"]])[r["row"]]

    def scans(self) -> list[dict[str, Any]]:
        """The scans in the queue with their flagged rows, newest first."""
        counts = self.rows.groupby(["scan_id", "scan_date"]).size().reset_index(name="flagged")
        counts = counts.sort_values(["scan_date", "scan_id"], ascending=False)
        return [{"scan_id": s, "label": printable(s), "scan_date": d, "flagged": int(n)}
                for s, d, n in counts.itertuples(index=False)]


@functools.lru_cache(maxsize=8)
def _thumbnails(group: ds.Fragment) -> list[bytes | None]:
    """The thumbnail column of one row group (a page's neighbours often share one)."""
    return group.to_table(columns=["thumbnail"])["thumbnail"].to_pylist()
