"""What moderators decided about each scan's flagged images (jobs.review), for the report:
how many were reviewed and the share confirmed generated, i.e. the queue's precision.

    python -m jobs.report --input reports/scans      # adds the table when reports/scans/_decisions/ exists

A flagged row counts as reviewed when its image (``uri`` at that ``etag``) has a decision
(generated, real or unsure; the latest counts, jobs/review/decisions.py). Precision =
generated / (generated + real): unsure says nothing either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from jobs.report.summary import table_text


@dataclass(frozen=True)
class ScanReview:
    scan_id: str
    flagged: int
    reviewed: int
    generated: int
    real: int
    unsure: int

    @property
    def precision(self) -> float | None:
        decided = self.generated + self.real
        return self.generated / decided if decided else None


def scan_reviews(light: pa.Table, reports: str, decisions: str | None = None) -> tuple[ScanReview, ...]:
    """Per scan of ``light`` (report rows with uri, etag, flagged, scan_id): its review;
    () when there are no decisions."""
    from jobs.review import decisions as log  # here: jobs.review imports jobs.report

    table = log.read_decisions(log.decisions_uri(reports, decisions))
    if not table.num_rows:
        return ()
    latest = log.latest(table)[["uri", "etag", "decision"]]
    flagged = light.filter(pc.fill_null(light["flagged"], False)).select(["scan_id", "uri", "etag"]).to_pandas()
    rows = flagged.merge(latest, on=["uri", "etag"], how="left")
    out = []
    for scan_id, g in rows.groupby("scan_id", sort=True):
        n = g["decision"].value_counts()
        out.append(ScanReview(scan_id=str(scan_id), flagged=len(g), reviewed=int(g["decision"].notna().sum()),
                              generated=int(n.get("generated", 0)), real=int(n.get("real", 0)),
                              unsure=int(n.get("unsure", 0))))
    return tuple(out)


def reviews_text(reviews: tuple[ScanReview, ...]) -> str:
    if not reviews:
        return ""
    rows = [[r.scan_id, str(r.flagged), str(r.reviewed), str(r.generated), str(r.real), str(r.unsure),
             "-" if r.precision is None else f"{r.precision:.1%}"] for r in reviews]
    headers = ["scan_id", "flagged", "reviewed", "generated", "real", "unsure", "precision"]
    return "\n".join(["", "moderators' decisions (jobs.review; precision = generated / (generated + real))",
                      table_text(headers, rows, right=set(range(1, len(headers))))])

