"""The moderators' decisions: an append-only Parquet table beside the reports.

One row per decision, in files under ``OUT/_decisions/`` (or ``--decisions``, local or
``s3://``)::

    _decisions/20261202T163000Z-<session>-000001.parquet

Each review session writes its own files (its random session id is in every name) and
each file is written whole in one atomic write (a local rename, an S3 PUT): two
moderators reviewing at once never write the same file, and a reader never sees half a
file. Nothing is ever rewritten or deleted. The decision that counts for an image (a
``uri`` at one ``etag``) is its latest by ``decided_at``; an undo is a row too
(``decision = "cleared"``), so the log keeps what happened. The folder name starts with
``_``, so readers of the Hive report folders (pyarrow, pandas, Spark) skip it.

    python -c "from jobs.review.decisions import read_decisions; print(read_decisions('reports/_decisions'))"
"""

from __future__ import annotations

import io
import secrets
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from jobs import storage

DECISIONS_DIR = "_decisions"
#: What a moderator can say about a flagged image; "cleared" takes a decision back.
DECISIONS = ("generated", "real", "unsure")
CLEARED = "cleared"
LABELS = {"generated": "fake", "real": "real"}  # decision -> training label (unsure: left out)

DECISION_SCHEMA = pa.schema([
    pa.field("uri", pa.string()),
    pa.field("etag", pa.string()),  # the scanned version: a changed object is a new image
    pa.field("decision", pa.string()),  # DECISIONS or CLEARED
    pa.field("reviewer", pa.string()),
    pa.field("decided_at", pa.timestamp("us", tz="UTC")),
    pa.field("scan_id", pa.string()),  # the scan the moderator saw it in
    pa.field("model_version", pa.string()),  # the model that flagged it
    pa.field("score", pa.float32()),  # its score then
])
KEY = ("uri", "etag")


def decisions_uri(reports: str, decisions: str | None = None) -> str:
    """Where the decisions of ``reports`` live: ``decisions``, else ``reports/_decisions``."""
    return decisions or storage.join(reports, DECISIONS_DIR)


class DecisionWriter:
    """Appends decisions for one review session: one new file per call, never shared."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.session = secrets.token_hex(6)
        self._seq = 0
        self._lock = threading.Lock()  # one app serves requests from several threads

    def append(self, rows: list[dict[str, Any]]) -> tuple[str, pa.Table]:
        """Write ``rows`` (DECISION_SCHEMA fields; ``decided_at`` is now) as one file: its URI
        and the rows as written."""
        now = datetime.now(timezone.utc)
        table = pa.Table.from_pylist([{**r, "decided_at": now} for r in rows], schema=DECISION_SCHEMA)
        out = io.BytesIO()
        pq.write_table(table, out, compression="zstd")
        with self._lock:
            self._seq += 1
            name = f"{now:%Y%m%dT%H%M%S}Z-{self.session}-{self._seq:06d}.parquet"
        target = storage.join(self.uri, name)
        storage.write_bytes(target, out.getvalue())
        return target, table


def decision_files(uri: str) -> list[str]:
    """The decision files under ``uri``, sorted by name (the write order of each session)."""
    try:
        return sorted(i.uri for i in storage.list_objects(uri, extensions=frozenset({".parquet"}))
                      if not i.uri.rsplit("/", 1)[-1].startswith((".", "_")))
    except FileNotFoundError:
        return []


def read_files(files: Iterable[str], *, bad: list[str] | None = None) -> pa.Table:
    """The rows of ``files`` in DECISION_SCHEMA. A file of another shape is a ValueError
    naming it, or, with ``bad``, left out and described there."""
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(io.BytesIO(storage.read_bytes(f))).select(DECISION_SCHEMA.names)
                          .cast(DECISION_SCHEMA))
        except (pa.ArrowException, KeyError, ValueError) as e:
            if bad is None:
                raise ValueError(f"{f} is not a decisions file ({e})") from None
            bad.append(f"{f} is not a decisions file ({e})")
    return pa.concat_tables(tables) if tables else DECISION_SCHEMA.empty_table()


def read_decisions(uri: str) -> pa.Table:
    """Every decision row under ``uri`` (the whole log)."""
    return read_files(decision_files(uri))


def latest(table: pa.Table) -> pd.DataFrame:
    """The decision that counts per image (``uri``, ``etag``): the latest; images whose
    latest is "cleared" are left out."""
    df = table.to_pandas()
    df = df.sort_values("decided_at", kind="stable").drop_duplicates(list(KEY), keep="last")
    return df[df["decision"] != CLEARED].reset_index(drop=True)
