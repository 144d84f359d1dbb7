"""The scan report's schema: one place for its columns, types and Parquet settings.

A report is Hive-partitioned Parquet under the scan's output::

    <output>/scan_date=YYYY-MM-DD/scan_id=<scan id>/part-00000.parquet
    <output>/_scans/<scan id>.json          # written last: the scan is published

``scan_date`` and ``scan_id`` live in the folder names only (the Hive convention that
pyarrow, DuckDB, Spark and Athena read), so ``FILE_SCHEMA`` is what each file holds and
``REPORT_SCHEMA`` is what a reader sees with hive partitioning on.

    python -c "from jobs.report.schema import REPORT_SCHEMA; print(REPORT_SCHEMA)"
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PARTITION_SCHEMA = pa.schema([
    pa.field("scan_date", pa.date32()),  # UTC date the scan started
    pa.field("scan_id", pa.string()),
])

FILE_SCHEMA = pa.schema([
    pa.field("uri", pa.string()),  # s3://bucket/key or absolute local path
    pa.field("etag", pa.string()),  # S3 ETag; locally mtime_ns-size-ctime_ns (hex); null if the manifest had none
    pa.field("size_bytes", pa.int64()),  # as listed, else as fetched
    pa.field("width", pa.int32()),  # decoded, after EXIF orientation; null on error
    pa.field("height", pa.int32()),
    pa.field("format", pa.string()),  # PIL's name: JPEG, PNG, WEBP, GIF, ...; null on error
    pa.field("label", pa.string()),  # "fake" / "real"; null on error
    pa.field("score", pa.float32()),  # P(fake) in [0, 1]; null on error
    pa.field("flagged", pa.bool_()),  # score >= threshold; null on error
    pa.field("threshold", pa.float32()),  # the operating threshold of this scan
    pa.field("thumbnail", pa.binary()),  # JPEG, heat map blended in; null per --thumbnails or on error
    pa.field("cam", pa.list_(pa.float32())),  # heat map over the whole picture, row-major h x w (h, w <= 32); null on error
    pa.field("cam_width", pa.int32()),  # w: the map is len(cam) / cam_width rows of cam_width cells
    pa.field("model_version", pa.string()),  # content hash of the checkpoint
    pa.field("error", pa.string()),  # why the image was not scored; null when scored
    pa.field("scanned_at", pa.timestamp("us", tz="UTC")),
])

REPORT_SCHEMA = pa.schema([*PARTITION_SCHEMA, *FILE_SCHEMA])

# Thumbnails are JPEG already: compressing them again costs CPU and saves nothing, and
# min/max statistics of image blobs are useless (and large).
_UNCOMPRESSED = {"thumbnail"}
_NO_STATISTICS = {"thumbnail", "cam"}
_DICTIONARY = {"format", "label", "model_version", "error"}


def decide(score: Any, threshold: float) -> tuple[Any, Any]:
    """The one flag/label rule: ``flagged = score >= threshold``, ``label`` "fake" when
    flagged else "real". Takes a numpy array (-> bool array, object array) or an Arrow
    array (-> Arrow arrays; nulls stay null). A NaN score is never flagged."""
    if isinstance(score, (pa.Array, pa.ChunkedArray)):
        flagged = pc.greater_equal(pc.cast(score, pa.float64()), threshold)
        return flagged, pc.if_else(flagged, "fake", "real")
    flagged = np.asarray(score) >= threshold
    return flagged, np.where(flagged, "fake", "real").astype(object)


def parquet_write_options(*, row_group_size: int) -> dict[str, Any]:
    """Keyword arguments for pyarrow's Parquet writer (``ParquetFileFormat().make_write_options``
    and Ray Data's ``write_parquet``): column-level compression and statistics."""
    names = FILE_SCHEMA.names
    # Per-column settings are keyed by Parquet leaf path: a list column's is "<name>.list.element".
    leaves = {n: f"{n}.list.element" if pa.types.is_list(FILE_SCHEMA.field(n).type) else n for n in names}
    return {
        "compression": {leaves[n]: ("none" if n in _UNCOMPRESSED else "zstd") for n in names},
        "use_dictionary": [n for n in names if n in _DICTIONARY],
        "write_statistics": [n for n in names if n not in _NO_STATISTICS],
        "row_group_size": row_group_size,
    }


def partitioning():  # -> pyarrow.dataset.Partitioning
    """Hive partitioning with the declared types (inference would make scan_date a string)."""
    import pyarrow.dataset as ds

    return ds.partitioning(PARTITION_SCHEMA, flavor="hive")
