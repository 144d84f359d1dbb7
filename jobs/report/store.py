"""Where scan reports live, how a scan's files are published all at once, and how to read
only published scans.

Layout under ``--output`` (local folder or ``s3://`` prefix)::

    scan_date=2026-05-01/scan_id=<id>/part-00000.parquet     # published report files
    _scans/<id>.json                                          # marker, written last
    _staging/<id>/lease.json                                  # the live run of <id> (jobs.report.lease)
    _staging/<id>/attempt-<hex>/data/part-*.parquet           # while the scan runs
    _staging/<id>/listing.json, listing/                      # its listing, for a resumed run (jobs.scan.resume)
    _staging/<id>/publishing.json                             # while it publishes

A scan takes the scan id's lease (a second live run of the id is refused), writes its
files under its own ``_staging/<id>/attempt-<hex>/`` (names starting with ``_`` are hidden
from pyarrow, pandas and Spark), then publishes them: it replaces the folder
``scan_date=<day>/scan_id=<id>/`` (one directory rename on a local disk; server-side
copies on S3) and writes the marker ``_scans/<id>.json`` last (file list, counts, model
version). ``open_reports`` trusts the markers only, so a scan killed at any point leaves
nothing it reads; readers that glob the folders directly see a killed S3 publish's
partial copies until the scan id is re-run. Re-running a scan id replaces its files
(wherever an earlier attempt put them); no other scan or date is ever touched. Folders named
in a marker or the publishing intent are deleted only when they have exactly the shape
``scan_date=YYYY-MM-DD/scan_id=<this id>``: file contents never choose what is deleted.

    python -c "from jobs.report.store import open_reports; print(open_reports('reports').to_table().num_rows)"
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from jobs import storage
from jobs.report.markers import (
    MARKER_FORMAT,
    SCAN_ID_PATTERN,
    SCANS_DIR,
    is_report_dir,
    published_scans,
)
from jobs.report.schema import (
    FILE_SCHEMA,
    REPORT_SCHEMA,
    parquet_write_options,
    partitioning,
)

STAGING_DIR = "_staging"


@dataclass(frozen=True)
class ScanLocation:
    """The places one attempt of one scan writes to under ``output``."""

    output: str
    scan_id: str
    scan_date: date
    attempt: str = field(default_factory=lambda: f"attempt-{uuid.uuid4().hex[:16]}")

    def __post_init__(self) -> None:
        # the id names folders that are deleted: never a path
        if not SCAN_ID_PATTERN.match(self.scan_id):
            raise ValueError(f"scan id {self.scan_id!r} must be 1-128 letters, digits, '.', '_' or '-'")

    @property
    def relative_dir(self) -> str:
        """``scan_date=YYYY-MM-DD/scan_id=<id>``: the report folder, relative to output."""
        return f"scan_date={self.scan_date.isoformat()}/scan_id={self.scan_id}"

    @property
    def report_uri(self) -> str:
        return storage.join(self.output, self.relative_dir)

    @property
    def marker_uri(self) -> str:
        return storage.join(self.output, SCANS_DIR, f"{self.scan_id}.json")

    @property
    def staging_uri(self) -> str:
        return storage.join(self.output, STAGING_DIR, self.scan_id)

    @property
    def attempt_uri(self) -> str:
        """This attempt's own staging folder: another run of the id never writes there."""
        return storage.join(self.staging_uri, self.attempt)

    @property
    def staged_data_uri(self) -> str:
        return storage.join(self.attempt_uri, "data")

    @property
    def intent_uri(self) -> str:
        return storage.join(self.staging_uri, "publishing.json")


def clear_staging_data(loc: ScanLocation) -> None:
    """Remove what this attempt staged (after a failure: a full disk's partial file), and
    the staging folders it leaves empty. Other attempts' folders are theirs."""
    storage.delete_prefix(loc.attempt_uri)
    remove_empty_staging(loc)


def remove_empty_staging(loc: ScanLocation) -> None:
    """Remove ``_staging/<id>/`` and ``_staging/`` when empty (local folders; S3 has none)."""
    path = storage.local_path_if_local(loc.staging_uri)
    for folder in (path, os.path.dirname(path)) if path else ():
        try:
            os.rmdir(folder)
        except OSError:  # not empty, or gone: fine
            pass


def write_staged(dataset: Any, loc: ScanLocation, *, rows_per_file: int, write_cpus: float = 1.0) -> None:
    """Write a Ray Dataset of ``FILE_SCHEMA`` rows as Parquet under the staging folder, in
    Ray Data tasks of ``write_cpus`` CPUs each."""
    from ray.data.datasource import FilenameProvider

    class PartNames(FilenameProvider):
        """``part-<write task>.parquet``: the attempt's staging folder is new, so task
        indices are unique without the write UUID in every name."""

        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"part-{task_index:05d}.parquet"

    fs, path = storage.pyarrow_filesystem(loc.staged_data_uri)
    dataset.write_parquet(
        path,
        filesystem=fs,  # Ray Data would otherwise build its own S3 client, without the endpoint
        filename_provider=PartNames(),
        mode="overwrite",
        min_rows_per_file=rows_per_file,
        max_rows_per_file=rows_per_file,
        schema=FILE_SCHEMA,
        ray_remote_args={"num_cpus": write_cpus},
        **parquet_write_options(row_group_size=min(rows_per_file, 1000)),
    )


def write_staged_tables(tables: Iterator[pa.Table], loc: ScanLocation, *, rows_per_file: int) -> None:
    """Write report tables as ``part-00000.parquet``, ``part-00001.parquet``, ... of
    ``rows_per_file`` rows under the staging folder (what ``write_staged`` writes from a Ray Dataset).

    Each part appears whole or not at all (a resumed scan reuses parts, jobs.scan.resume):
    a local part is written as ``.part-N.parquet.tmp`` and renamed when closed; an S3
    object exists only once its upload completes."""
    fs, path = storage.pyarrow_filesystem(loc.staged_data_uri)
    local = not storage.is_s3(loc.staged_data_uri)
    if local:
        fs.create_dir(path, recursive=True)
    options = parquet_write_options(row_group_size=min(rows_per_file, 1000))
    row_group_size = options.pop("row_group_size")
    writer, index, in_file = None, 0, 0

    def name(i: int) -> str:
        return f"{path}/.part-{i:05d}.parquet.tmp" if local else f"{path}/part-{i:05d}.parquet"

    def close() -> None:
        writer.close()
        if local:
            fs.move(name(index), f"{path}/part-{index:05d}.parquet")

    try:
        for table in tables:
            while table.num_rows:
                if writer is None:
                    writer = pq.ParquetWriter(name(index), FILE_SCHEMA, filesystem=fs, **options)
                take = table.slice(0, rows_per_file - in_file)
                writer.write_table(take, row_group_size=row_group_size)
                in_file += take.num_rows
                table = table.slice(take.num_rows)
                if in_file == rows_per_file:
                    close()
                    writer, index, in_file = None, index + 1, 0
    finally:
        if writer is not None:
            close()


def staged_files(loc: ScanLocation) -> list[str]:
    """Names of the staged Parquet files, sorted."""
    try:
        infos = storage.list_objects(loc.staged_data_uri, extensions=frozenset({".parquet"}))
        return sorted(i.uri.rsplit("/", 1)[-1] for i in infos)
    except FileNotFoundError:
        return []


def staged_counts(loc: ScanLocation, files: list[str]) -> dict[str, int]:
    """rows, scored, flagged, errors of the staged files (reads two columns)."""
    if not files:
        return {"rows": 0, "scored": 0, "flagged": 0, "errors": 0}
    fs, path = storage.pyarrow_filesystem(loc.staged_data_uri)
    table = ds.dataset([f"{path}/{f}" for f in files], filesystem=fs, format="parquet",
                       schema=FILE_SCHEMA).to_table(columns=["flagged", "error"])
    errors = table.num_rows - table["error"].null_count
    flagged = pc.sum(pc.fill_null(table["flagged"], False)).as_py() or 0
    return {"rows": table.num_rows, "scored": table.num_rows - errors, "flagged": flagged, "errors": errors}


def publish(loc: ScanLocation, files: list[str], record: dict[str, Any]) -> dict[str, Any]:
    """Move the staged ``files`` into the report folder and write the marker last.

    ``record`` (counts, model version, ...) goes into the marker with the file list.
    Returns the marker's content.
    """
    earlier = _earlier_dirs(loc)
    storage.write_bytes(loc.intent_uri, json.dumps({"report": loc.relative_dir}, allow_nan=False).encode())
    storage.delete_object(loc.marker_uri)
    for relative in earlier - {loc.relative_dir}:
        storage.delete_prefix(storage.join(loc.output, relative))
    if files:
        # one rename on a local disk (glob readers see old or new); server-side copies on S3
        storage.replace_folder(loc.staged_data_uri, loc.report_uri)
    elif storage.exists(loc.report_uri):
        storage.delete_prefix(loc.report_uri)
    marker = {
        "format": MARKER_FORMAT,
        "scan_id": loc.scan_id,
        "scan_date": loc.scan_date.isoformat(),
        "report": loc.relative_dir,
        "files": [f"{loc.relative_dir}/{f}" for f in files],
        **record,
    }
    # allow_nan=False: a NaN would make the marker invalid JSON for every other reader
    storage.write_bytes(loc.marker_uri, json.dumps(marker, indent=1, allow_nan=False).encode())
    storage.delete_prefix(loc.staging_uri)
    remove_empty_staging(loc)
    return marker


def _earlier_dirs(loc: ScanLocation) -> set[str]:
    """Report folders earlier attempts of this scan id may have left: its old marker's
    and an interrupted publish's (its intent file)."""
    found = {loc.relative_dir}
    for uri in (loc.marker_uri, loc.intent_uri):
        try:
            found.add(json.loads(storage.read_bytes(uri))["report"])
        except (FileNotFoundError, KeyError, TypeError, ValueError):
            pass
    return {d for d in found if is_report_dir(d, loc.scan_id)}


# -- reading ---------------------------------------------------------------------------


def open_reports(output: str, *, exclude_scan_ids: Iterable[str] = ()) -> ds.Dataset:
    """A pyarrow dataset of ``REPORT_SCHEMA`` over the published scans' files only.

    Query it with pyarrow (``.to_table(columns=..., filter=...)``), pandas
    (``.to_table().to_pandas()``) or DuckDB (``duckdb.connect().from_arrow(dataset)``).
    """
    excluded = set(exclude_scan_ids)
    files = [f for m in published_scans(output) if m["scan_id"] not in excluded for f in m["files"]]
    if not files:
        return ds.dataset(REPORT_SCHEMA.empty_table())
    fs, root = storage.pyarrow_filesystem(output)
    return ds.dataset(
        [f"{root}/{f}" for f in files],
        filesystem=fs,
        format="parquet",
        schema=REPORT_SCHEMA,
        partitioning=partitioning(),
        partition_base_dir=root,
    )


__all__ = ["MARKER_FORMAT", "SCAN_ID_PATTERN", "SCANS_DIR", "STAGING_DIR", "ScanLocation", "clear_staging_data",
           "open_reports", "publish", "published_scans", "remove_empty_staging", "staged_counts", "staged_files",
           "write_staged", "write_staged_tables"]
