"""Small scans in the driver process, without Ray Data.

A Ray Data scan starts fresh worker processes for its fetch tasks, its scoring actors
and its Parquet writer, and each imports torch, torchvision and pyarrow: about 13 s
on 2 cores before the first and after the last batch (BENCHMARKS.md), however few
images there are. A scan of a few hundred objects (an hourly incremental scan, a
moderator's spot check) is done by one process in less time than that, so ``jobs.scan``
with ``--executor auto`` (the default) scores up to ``LOCAL_MAX_OBJECTS`` objects here.

Same stages, same code, same report: ``fetch_and_prepare`` (in a background thread, one
batch ahead, so decoding overlaps the model) and ``Scorer`` from jobs.scoring, then
Parquet files under the staging folder exactly as the Ray path writes them
(``part-<i>.parquet``, ``rows_per_file`` rows each), published by jobs.report_store.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs import storage
from jobs.report_store import ScanLocation
from jobs.schema import FILE_SCHEMA, parquet_write_options
from jobs.scoring import Scorer, fetch_and_prepare

# Up to this many objects, --executor auto scores in the driver: about what one process
# scores (~20 img/s on 2 cores at 224 px) in the time a Ray Data scan takes to start.
LOCAL_MAX_OBJECTS = 256


def score_locally(
    blocks: list[pa.Table],
    *,
    checkpoint: bytes,
    preset: dict[str, Any],
    threshold: float,
    thumbnails: str,
    batch_size: int,
    use_gpu: bool,
    max_pixels: int,
    max_bytes: int,
    num_threads: int | None = None,
) -> Iterator[pa.Table]:
    """Listing blocks (uri, etag, size_bytes) -> report tables (FILE_SCHEMA), one per batch."""
    import torch

    scorer = Scorer(checkpoint, threshold=threshold, thumbnails=thumbnails, use_gpu=use_gpu,
                    num_threads=num_threads or torch.get_num_threads())
    batches = [b.slice(i, batch_size) for b in blocks for i in range(0, b.num_rows, batch_size)]

    def fetch(rows: pa.Table) -> dict[str, np.ndarray]:
        return fetch_and_prepare(_as_numpy(rows), preset=preset, max_pixels=max_pixels, max_bytes=max_bytes,
                                 keep_view=thumbnails != "none")

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="genscan-fetch") as ahead:
        pending = ahead.submit(fetch, batches[0]) if batches else None
        for i in range(len(batches)):
            batch = pending.result()
            pending = ahead.submit(fetch, batches[i + 1]) if i + 1 < len(batches) else None
            yield scorer(batch)


def write_tables(tables: Iterator[pa.Table], loc: ScanLocation, *, rows_per_file: int) -> None:
    """Write report tables as ``part-00000.parquet``, ``part-00001.parquet``, ... of
    ``rows_per_file`` rows under the staging folder (what ``report_store.write_staged``
    writes from a Ray Dataset)."""
    fs, path = storage.pyarrow_filesystem(loc.staged_data_uri)
    if not storage.is_s3(loc.staged_data_uri):
        fs.create_dir(path, recursive=True)
    options = parquet_write_options(row_group_size=min(rows_per_file, 1000))
    row_group_size = options.pop("row_group_size")
    writer, index, in_file = None, 0, 0
    try:
        for table in tables:
            while table.num_rows:
                if writer is None:
                    writer = pq.ParquetWriter(f"{path}/part-{index:05d}.parquet", FILE_SCHEMA, filesystem=fs, **options)
                take = table.slice(0, rows_per_file - in_file)
                writer.write_table(take, row_group_size=row_group_size)
                in_file += take.num_rows
                table = table.slice(take.num_rows)
                if in_file == rows_per_file:
                    writer.close()
                    writer, index, in_file = None, index + 1, 0
    finally:
        if writer is not None:
            writer.close()


def _as_numpy(rows: pa.Table) -> dict[str, np.ndarray]:
    """A listing slice as the numpy batch Ray Data would hand ``fetch_and_prepare``."""
    return {name: np.array(rows[name].to_pylist(), dtype=object) for name in ("uri", "etag", "size_bytes")}
