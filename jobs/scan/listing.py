"""What a scan covers: every image under a folder or bucket prefix, or the rows of a manifest.

An object counts as an image when its name ends in one of ``jobs.storage.IMAGE_EXTENSIONS``
(``.jpg .jpeg .png .webp .gif .bmp .tif .tiff``, compared lower-cased), for folders,
prefixes and manifests alike. Listing yields Arrow tables of ``LISTING_SCHEMA`` in
chunks, so the driver never holds a Python object per listed image.

Manifests (CSV/Parquet lists, S3 Inventory) are read by jobs/storage/manifest.py, the
one reader training uses too. S3 objects without an etag in the manifest are scored in
every incremental scan.

    python -c "from jobs.scan.listing import list_input; print(*list_input(input='tests'), sep='\\n')"
"""

from __future__ import annotations

import os
import re
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jobs import storage
from jobs.observe import logs
from jobs.runtime import Progress
from jobs.scan.incremental import ScoredIndex
from jobs.storage.manifest import Manifest

LISTING_SCHEMA = pa.schema([
    pa.field("uri", pa.string()),
    pa.field("etag", pa.string()),
    pa.field("size_bytes", pa.int64()),  # null when a manifest does not say
])
CHUNK_ROWS = 10_000


@dataclass
class Listing:
    """What a scan scores: the listing blocks (minus the incremental skip) and its counts."""

    blocks: list[pa.Table]
    listed: int
    skipped: int
    dropped: Counter[str] = field(default_factory=Counter)
    reused: bool = False  # read back from an earlier attempt (jobs.scan.resume), not listed again


def list_input(
    *,
    input: str | None = None,
    manifest: str | Manifest | None = None,
    extensions: frozenset[str] = storage.IMAGE_EXTENSIONS,
    chunk_rows: int = CHUNK_ROWS,
    stats: storage.ListingStats | None = None,
) -> Iterator[pa.Table]:
    """Tables of ``LISTING_SCHEMA``, at most ``chunk_rows`` rows each, for ``input`` (a
    folder or ``s3://`` prefix) or ``manifest`` (a URI, or a Manifest opened with its own
    options, e.g. allowed prefixes). Exactly one of the two must be given.

    Entries of a folder that cannot be listed (unreadable subfolders, link loops, special
    files, names that are not UTF-8) are counted in ``stats`` (reason -> entries), or
    without one reported in a ``storage.ListingSkipWarning`` when the listing ends."""
    if (input is None) == (manifest is None):
        raise ValueError("give exactly one of input (a folder or s3:// prefix) and manifest")
    if input is not None:
        yield from _chunks(storage.list_objects(input, extensions=extensions, stats=stats), chunk_rows)
    else:
        yield from _manifest_chunks(manifest, extensions, chunk_rows)


def _chunks(objects: Iterator[storage.ObjectInfo], chunk_rows: int) -> Iterator[pa.Table]:
    uris: list[str] = []
    etags: list[str] = []
    sizes: list[int] = []
    for info in objects:
        uris.append(info.uri)
        etags.append(info.etag)
        sizes.append(info.size)
        if len(uris) >= chunk_rows:
            yield pa.table([uris, etags, sizes], schema=LISTING_SCHEMA)
            uris, etags, sizes = [], [], []
    if uris:
        yield pa.table([uris, etags, sizes], schema=LISTING_SCHEMA)


def _manifest_chunks(manifest: str | Manifest, extensions: frozenset[str], chunk_rows: int) -> Iterator[pa.Table]:
    reader = manifest if isinstance(manifest, Manifest) else Manifest(manifest)
    pending: list[pa.Table] = []
    for table in reader.tables():
        table = table.select(LISTING_SCHEMA.names)
        table = table.filter(_is_image(table["uri"], extensions))
        if table.num_rows:
            pending.append(_local_fields(table))
        if sum(t.num_rows for t in pending) >= chunk_rows:
            yield from _rechunk(pending, chunk_rows, final=False)
    yield from _rechunk(pending, chunk_rows, final=True)


def _is_image(uris: pa.ChunkedArray, extensions: frozenset[str]) -> pa.ChunkedArray:
    suffixes = "|".join(re.escape(e.lstrip(".")) for e in sorted(extensions))
    return pc.fill_null(pc.match_substring_regex(uris, rf"\.({suffixes})$", ignore_case=True), False)


def _local_fields(table: pa.Table) -> pa.Table:
    """Local files without an etag or size in the manifest get them from the file
    system, so incremental scans can skip them; a missing file keeps nulls (and
    becomes an error row when fetched)."""
    missing = pc.and_(pc.is_null(table["etag"]), pc.invert(pc.starts_with(table["uri"], "s3://")))
    if not pc.any(missing).as_py():
        return table
    uris, etags, sizes = table["uri"].to_pylist(), table["etag"].to_pylist(), table["size_bytes"].to_pylist()
    for i in pc.indices_nonzero(missing.combine_chunks()).to_pylist():
        try:
            # a file lists itself and nothing is skipped; a folder (no etag then) is not walked on
            info = next(storage.list_objects(uris[i], extensions=None, stats=storage.ListingStats()))
        except (OSError, StopIteration):
            continue
        if info.uri != storage.local_path_if_local(uris[i]):  # a folder, not a file
            continue
        etags[i], sizes[i] = info.etag, info.size if sizes[i] is None else sizes[i]
    return pa.table([uris, etags, sizes], schema=LISTING_SCHEMA)


def _rechunk(tables: list[pa.Table], chunk_rows: int, *, final: bool) -> Iterator[pa.Table]:
    """Emit full ``chunk_rows`` tables from ``tables`` (mutated to hold the rest); with
    ``final`` emit the rest too."""
    if not tables:
        return
    whole = pa.concat_tables(tables).combine_chunks()
    tables.clear()
    start = 0
    while whole.num_rows - start >= chunk_rows:
        yield whole.slice(start, chunk_rows)
        start += chunk_rows
    rest = whole.slice(start)
    if rest.num_rows:
        if final:
            yield rest
        else:
            tables.append(rest)


def scan_listing(config: Any, scan_id: str, model_version: str) -> Listing:
    """What a scan of ``config`` (a ScanConfig) covers: the listing as Arrow tables, minus
    what incremental mode skips; and the manifest rows left out, by reason (warned too)."""
    index = None
    if config.mode == "incremental":
        index = ScoredIndex.from_reports(config.output, model_version, exclude_scan_ids={scan_id})
        print(f"incremental: {len(index)} objects already scored by {model_version}", flush=True)
    check_input_kind(config.input)
    manifest = None if config.manifest is None else Manifest(config.manifest, allow_prefixes=config.allow_prefix or None)
    progress = Progress(f"listing {config.input or config.manifest}")
    blocks: list[pa.Table] = []
    listed = skipped = 0
    stats = storage.ListingStats()
    for chunk in list_input(input=config.input, manifest=manifest, stats=stats):
        n = chunk.num_rows
        listed += n
        if index is not None:
            seen = index.contains(chunk["uri"], chunk["etag"])
            skipped += int(seen.sum())
            chunk = chunk.filter(pa.array(~seen))
        if chunk.num_rows:
            blocks.append(chunk)
        progress.update(n, skipped=skipped)
    progress.print(listed=listed, skipped=skipped)
    if manifest is not None and manifest.dropped:
        logs.warning(f"{manifest.dropped_text()} (allowed: {manifest.allowed})")
    if stats.skipped:
        logs.warning(stats.summary())
    dropped = Counter(manifest.dropped if manifest is not None else {})
    dropped.update({f"listing: {why}": n for why, n in stats.skipped.items()})
    return Listing(blocks, listed, skipped, dropped)


def check_input_kind(input: str | None) -> None:
    """A local --input that exists but is neither a folder nor a file (a FIFO, a device,
    a socket) is named for what it is, not "does not exist"."""
    path = None if input is None or storage.is_s3(input) else storage.local_path_if_local(input)
    try:
        mode = os.stat(path).st_mode if path else None
    except OSError:
        return  # missing: the listing says so
    if mode is not None and not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        kind = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
                stat.S_IFSOCK: "a socket"}.get(stat.S_IFMT(mode), "not a regular file")
        raise ValueError(f"--input {input} is {kind}, not a folder, file or s3:// prefix")
