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

import re
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from jobs import storage
from jobs.storage.manifest import Manifest

LISTING_SCHEMA = pa.schema([
    pa.field("uri", pa.string()),
    pa.field("etag", pa.string()),
    pa.field("size_bytes", pa.int64()),  # null when a manifest does not say
])
CHUNK_ROWS = 10_000


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
