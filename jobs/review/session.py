"""One review session: the queue, the decisions so far (this session's and everyone
else's), and this session's writer. The HTTP layer (jobs/review/app.py) calls it.

Other moderators' decisions arrive as new files in the decisions folder; ``refresh``
reads only files it has not read yet, at most every ``REFRESH_S`` seconds.

    python -c "from jobs.review.session import ReviewSession; print(ReviewSession.open('reports').counts())"
"""

from __future__ import annotations

import sys
import threading
import time
import unicodedata
from dataclasses import dataclass
from datetime import date
from typing import Any

import pandas as pd
import pyarrow as pa

from jobs.report.summary import printable
from jobs.review import decisions as log
from jobs.review.queue import Queue, QueueFilter

REFRESH_S = 2.0
MAX_ITEMS = 500  # decisions in one POST
MAX_REVIEWER = 64


class BadRequest(ValueError):
    """The request asks for something invalid; the message says what (HTTP 400)."""


@dataclass
class ReviewSession:
    queue: Queue
    writer: log.DecisionWriter
    reviewer: str  # the default name shown on the page

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self._log = log.DECISION_SCHEMA.empty_table()
        self._decided = self.queue.decisions_of(log.latest(self._log))
        self._refreshed = float("-inf")

    @classmethod
    def open(cls, reports: str, *, decisions: str | None = None, reviewer: str = "", scan_ids: tuple[str, ...] = (),
             since: date | None = None, until: date | None = None, threshold: float | None = None) -> ReviewSession:
        queue = Queue.load(reports, scan_ids=scan_ids, since=since, until=until, threshold=threshold)
        session = cls(queue, log.DecisionWriter(log.decisions_uri(reports, decisions)), reviewer)
        session.refresh(force=True)
        return session

    def refresh(self, *, force: bool = False) -> None:
        """Read decision files written since the last look (other sessions' too)."""
        if not force and time.monotonic() - self._refreshed < REFRESH_S:
            return
        files = [f for f in log.decision_files(self.writer.uri) if f not in self._seen]
        bad: list[str] = []
        new = log.read_files(files, bad=bad)  # one damaged file must not stop the review
        for problem in bad:
            print(f"warning: {printable(problem)}; left out", file=sys.stderr, flush=True)
        with self._lock:
            self._add(new, files)
            self._refreshed = time.monotonic()

    def _add(self, rows: pa.Table, files: list[str]) -> None:
        self._seen.update(files)
        if rows.num_rows:
            self._log = pa.concat_tables([self._log, rows])
            self._decided = self.queue.decisions_of(log.latest(self._log))

    def page(self, f: QueueFilter, offset: int, limit: int) -> dict[str, Any]:
        self.refresh()
        decided = self._decided
        ids = self.queue.select(f, decided)
        return {"total": int(len(ids)), "offset": offset, "rows": self.queue.page(ids, decided, offset, limit)}

    def decide(self, body: Any) -> dict[str, Any]:
        """Record ``{"reviewer": name, "items": [{"id": row, "decision": d}, ...]}`` as one file;
        the rows as the page now shows them."""
        reviewer, items = _checked(body, len(self.queue.rows))
        rows = [{**self.queue.record(i), "decision": d, "reviewer": reviewer} for i, d in items]
        written, table = self.writer.append(rows)
        with self._lock:
            self._add(table, [written])
            decided = self._decided
        ids = pd.unique(pd.Series([i for i, _ in items])).tolist()
        return {"rows": self.queue.page(ids, decided, 0, len(ids))}

    def counts(self) -> dict[str, int]:
        decided = self._decided["decision"]
        return {"flagged": len(self.queue.rows), **{d: int((decided == d).sum()) for d in log.DECISIONS}}


def _checked(body: Any, rows: int) -> tuple[str, list[tuple[int, str]]]:
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise BadRequest('expected {"reviewer": "...", "items": [{"id": 0, "decision": "generated"}]}')
    reviewer = body.get("reviewer")
    if not isinstance(reviewer, str) or not reviewer.strip() or len(reviewer) > MAX_REVIEWER or any(
            unicodedata.category(c)[0] in "CZ" and c != " " for c in reviewer):
        raise BadRequest(f"reviewer must be a name of 1-{MAX_REVIEWER} printable characters")
    if not 1 <= len(body["items"]) <= MAX_ITEMS:
        raise BadRequest(f"items must hold 1-{MAX_ITEMS} decisions")
    items = []
    for item in body["items"]:
        i, d = (item.get("id"), item.get("decision")) if isinstance(item, dict) else (None, None)
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < rows:
            raise BadRequest(f"id must be a row of the queue (0-{rows - 1}), got {i!r}")
        if d not in (*log.DECISIONS, log.CLEARED):
            raise BadRequest(f"decision must be one of {', '.join((*log.DECISIONS, log.CLEARED))}, got {d!r}")
        items.append((i, d))
    return reviewer.strip(), items
