"""Resuming a killed scan: a re-run of the same ``--scan-id`` keeps the earlier attempts'
listing and their complete staged Parquet parts, and scores only what they do not cover.

Under ``_staging/<id>/`` (jobs.report.store)::

    listing/part-00000.parquet ...     the listing still to score (uri, etag, size_bytes)
    listing.json                       its counts and what it depends on; written last
    attempt-<hex>/data/part-*.parquet  each attempt's staged report rows

The first attempt keeps its listing (after the incremental skip) there; a re-run reads it
instead of listing again, unless ``--relist`` or the scan's settings changed (input,
manifest, mode, model version, threshold, thumbnails, size limits: ``fingerprint``). A
staged part is reused when its Parquet footer reads (a part cut short by the kill has
none), its (uri, etag) pairs are all still to score and no other reused part has them;
the rest of the listing is scored, and publish moves the reused parts in next to the new
ones, so the report has exactly one row per listed object. Error rows are reused as they
are; ``--mode incremental`` re-scores them later, as always.

    python -c "from jobs.scan.resume import fingerprint; help(fingerprint)"
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs import storage
from jobs.report.store import ScanLocation
from jobs.scan.listing import Listing

LISTING_DIR, LISTING_RECORD = "listing", "listing.json"
LISTING_FILE_ROWS = 1_000_000  # ~150 MB of listing per Parquet file
_STAGED_PART = re.compile(r"/(attempt-[0-9a-f]+)/data/(part-[A-Za-z0-9_-]+\.parquet)$")


@dataclass
class Resumed:
    """Staged parts of earlier attempts that this attempt publishes as they are."""

    parts: list[str] = field(default_factory=list)  # their URIs
    rows: int = 0


def fingerprint(config: Any, model_version: str, threshold: float) -> dict[str, Any]:
    """The settings an earlier attempt's listing and rows must share to be reused."""
    keys = ("input", "manifest", "allow_prefix", "mode", "thumbnails", "max_pixels", "max_bytes")
    return {**{k: getattr(config, k) for k in keys}, "allow_prefix": list(config.allow_prefix),
            "model_version": model_version, "threshold": threshold}


def load_listing(loc: ScanLocation, expected: dict[str, Any]) -> Listing | None:
    """The listing an earlier attempt kept, or None (none, incomplete, or other settings)."""
    try:
        record = json.loads(storage.read_bytes(storage.join(loc.staging_uri, LISTING_RECORD)))
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != expected:
        return None
    fs, root = storage.pyarrow_filesystem(storage.join(loc.staging_uri, LISTING_DIR))
    blocks = [pq.read_table(f"{root}/{name}", filesystem=fs) for name in record["files"]]
    return Listing(blocks=[b for b in blocks if b.num_rows], listed=record["listed"], skipped=record["skipped"],
                   dropped=Counter(record["dropped"]), reused=True)


def save_listing(loc: ScanLocation, listing: Listing, expected: dict[str, Any]) -> None:
    """Keep ``listing`` for a re-run: the Parquet files, then the record naming them."""
    fs, root = storage.pyarrow_filesystem(storage.join(loc.staging_uri, LISTING_DIR))
    if not storage.is_s3(loc.staging_uri):
        fs.create_dir(root, recursive=True)
    table = pa.concat_tables(listing.blocks) if listing.blocks else None
    files = []
    for i, start in enumerate(range(0, table.num_rows if table is not None else 0, LISTING_FILE_ROWS)):
        files.append(f"part-{i:05d}.parquet")
        pq.write_table(table.slice(start, LISTING_FILE_ROWS), f"{root}/{files[-1]}", filesystem=fs)
    record = {"fingerprint": expected, "files": files, "listed": listing.listed, "skipped": listing.skipped,
              "dropped": dict(listing.dropped)}
    storage.write_bytes(storage.join(loc.staging_uri, LISTING_RECORD), json.dumps(record, allow_nan=False).encode())


def discard_listing(loc: ScanLocation) -> None:
    """Remove the kept listing: a run that fails with an error (or Ctrl+C) cleans up after
    itself; only a killed run (SIGKILL, SIGTERM, node lost) leaves its staging to resume."""
    storage.delete_object(storage.join(loc.staging_uri, LISTING_RECORD))
    storage.delete_prefix(storage.join(loc.staging_uri, LISTING_DIR))


def reuse_staged(loc: ScanLocation, listing: Listing) -> tuple[Listing, Resumed]:
    """``listing`` minus the objects that earlier attempts' complete parts hold, and those parts."""
    parts = _earlier_parts(loc)
    if not parts:  # a first attempt: no key set of the whole listing to build
        return listing, Resumed()
    wanted = {k for b in listing.blocks for k in _keys(b)}
    resumed, done = Resumed(), set()
    for uri in parts:
        keys = _part_keys(uri)
        if keys is None or not keys or not keys <= wanted or keys & done:
            continue  # cut short, empty, of another listing, or already covered
        resumed.parts.append(uri)
        resumed.rows += len(keys)
        done |= keys
    if not done:
        return listing, resumed
    blocks = []
    for b in listing.blocks:
        left = b.filter(pc.invert(pc.is_in(_key_array(b), value_set=pa.array(sorted(done)))))
        if left.num_rows:
            blocks.append(left)
    return Listing(blocks, listing.listed, listing.skipped, listing.dropped, listing.reused), resumed


def move_into(resumed: Resumed, loc: ScanLocation) -> None:
    """Move the reused parts into this attempt's staging data folder (before publishing)."""
    if not resumed.parts:
        return
    fs, root = storage.pyarrow_filesystem(loc.staged_data_uri)
    if not storage.is_s3(loc.staged_data_uri):
        fs.create_dir(root, recursive=True)
    for i, uri in enumerate(resumed.parts):
        src_fs, src = storage.pyarrow_filesystem(uri)
        src_fs.move(src, f"{root}/part-resumed-{i:05d}.parquet")


def _earlier_parts(loc: ScanLocation) -> list[str]:
    """URIs of the staged parts of every other attempt of this scan id."""
    try:
        infos = list(storage.list_objects(loc.staging_uri, extensions=frozenset({".parquet"})))
    except FileNotFoundError:
        return []
    found = []
    for info in infos:  # local URIs come back absolute: match the tail under the staging folder
        match = _STAGED_PART.search(info.uri)
        if match and match.group(1) != loc.attempt:
            found.append(info.uri)
    return sorted(found)


def _part_keys(uri: str) -> set[str] | None:
    """The (uri, etag) keys of a staged part; None when it does not read whole."""
    fs, path = storage.pyarrow_filesystem(uri)
    try:
        table = pq.read_table(path, filesystem=fs, columns=["uri", "etag"])
    except (OSError, pa.ArrowException):  # no footer: the kill cut it short
        return None
    keys = set(_keys(table))
    return keys if len(keys) == table.num_rows else None


def _key_array(table: pa.Table) -> pa.Array:
    etag = pc.fill_null(table["etag"].cast(pa.string()), "")
    return pc.binary_join_element_wise(table["uri"].cast(pa.string()), etag, "\x00")


def _keys(table: pa.Table) -> list[str]:
    return _key_array(table).to_pylist()
