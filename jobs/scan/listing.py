"""What a scan covers: every image under a folder or bucket prefix, or the rows of a manifest.

An object counts as an image when its name ends in one of ``jobs.storage.IMAGE_EXTENSIONS``
(``.jpg .jpeg .png .webp .gif .bmp .tif .tiff``, compared lower-cased), for folders,
prefixes and manifests alike. Listing yields Arrow tables of ``LISTING_SCHEMA`` in
chunks, so the driver never holds a Python object per listed image.

A manifest is a CSV (``.csv``, ``.csv.gz``) or Parquet file (or a folder of Parquet
files, as S3 Inventory delivers them) with one row per object and either

- a ``uri`` column (``path`` or ``file`` also accepted): ``s3://bucket/key``, an absolute
  path, or a path relative to the manifest's folder; or
- ``bucket`` and ``key`` columns (S3 Inventory; CSV inventories URL-encode keys, so
  prefer the Parquet inventory format),

and optionally ``etag``/``e_tag`` and ``size``/``size_bytes``. Rows of S3 Inventory's
versioned format that are not ``is_latest`` or are delete markers are left out. S3
objects without an etag are scored in every incremental scan.

    python -c "from jobs.scan.listing import list_input; print(*list_input(input='tests'), sep='\\n')"
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jobs import storage

LISTING_SCHEMA = pa.schema([
    pa.field("uri", pa.string()),
    pa.field("etag", pa.string()),
    pa.field("size_bytes", pa.int64()),  # null when a manifest does not say
])
CHUNK_ROWS = 10_000

_URI_COLUMNS = ("uri", "path", "file")
_ETAG_COLUMNS = ("etag", "e_tag")
_SIZE_COLUMNS = ("size_bytes", "size")


def list_input(
    *,
    input: str | None = None,
    manifest: str | None = None,
    extensions: frozenset[str] = storage.IMAGE_EXTENSIONS,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[pa.Table]:
    """Tables of ``LISTING_SCHEMA``, at most ``chunk_rows`` rows each, for ``input`` (a
    folder or ``s3://`` prefix) or ``manifest``. Exactly one of the two must be given."""
    if (input is None) == (manifest is None):
        raise ValueError("give exactly one of input (a folder or s3:// prefix) and manifest")
    if input is not None:
        yield from _chunks(storage.list_objects(input, extensions=extensions), chunk_rows)
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


def _manifest_chunks(manifest: str, extensions: frozenset[str], chunk_rows: int) -> Iterator[pa.Table]:
    dataset, cols, flt = _open_manifest(manifest)
    s3_base = posixpath.dirname(manifest.rstrip("/")) if storage.is_s3(manifest) else None
    local_path = None if s3_base is not None else storage.local_path_if_local(manifest)
    pending: list[pa.Table] = []
    for batch in dataset.to_batches(columns=[c for c in cols.values() if c], filter=flt):
        if cols["uri"]:
            uris = [_resolve(u, s3_base, local_path) for u in batch.column(cols["uri"]).to_pylist()]
        else:
            pairs = zip(batch.column(cols["bucket"]).to_pylist(), batch.column(cols["key"]).to_pylist())
            uris = [f"s3://{b}/{k}" if b and k else None for b, k in pairs]
        n = len(uris)
        etags = batch.column(cols["etag"]).cast(pa.string()) if cols["etag"] else pa.nulls(n, pa.string())
        sizes = batch.column(cols["size"]).cast(pa.int64()) if cols["size"] else pa.nulls(n, pa.int64())
        table = pa.table([pa.array(uris, pa.string()), etags, sizes], schema=LISTING_SCHEMA)
        table = table.filter(_is_image(table["uri"], extensions))
        if table.num_rows:
            pending.append(_local_fields(table))
        if sum(t.num_rows for t in pending) >= chunk_rows:
            yield from _rechunk(pending, chunk_rows, final=False)
    yield from _rechunk(pending, chunk_rows, final=True)


def _open_manifest(manifest: str) -> tuple[Any, dict[str, str | None], Any]:
    """(pyarrow dataset, {role: column name or None}, row filter) of a manifest."""
    import pyarrow.dataset as ds

    fs, path = storage.pyarrow_filesystem(manifest)
    fmt = "csv" if manifest.lower().endswith((".csv", ".csv.gz")) else "parquet"
    try:
        dataset = ds.dataset(path, filesystem=fs, format=fmt)
    except (FileNotFoundError, OSError) as e:
        raise FileNotFoundError(f"cannot read the manifest {manifest}: {e}") from None
    names = {n.lower(): n for n in dataset.schema.names}

    def first(options: tuple[str, ...]) -> str | None:
        return next((names[c] for c in options if c in names), None)

    cols = {"uri": first(_URI_COLUMNS), "bucket": None, "key": None,
            "etag": first(_ETAG_COLUMNS), "size": first(_SIZE_COLUMNS)}
    if cols["uri"] is None:
        if not {"bucket", "key"} <= set(names):
            raise ValueError(
                f"manifest {manifest} has columns {dataset.schema.names}; it needs a 'uri' "
                f"(or 'path'/'file') column, or 'bucket' and 'key' columns like an S3 Inventory"
            )
        cols |= {"bucket": names["bucket"], "key": names["key"]}
    flt = None  # S3 Inventory with versions: current versions only
    if "is_latest" in names:
        flt = pc.field(names["is_latest"]) == True  # noqa: E712 (an expression, not a test)
    if "is_delete_marker" in names:
        live = pc.field(names["is_delete_marker"]) != True  # noqa: E712
        flt = live if flt is None else flt & live
    return dataset, cols, flt


def _resolve(uri: str | None, s3_base: str | None, manifest_path: str | None) -> str | None:
    """An absolute URI for a manifest entry; relative ones are relative to the manifest."""
    if not uri:
        return None
    if storage.is_s3(uri):
        return uri
    if s3_base is not None:  # a manifest in a bucket names keys beside it
        return storage.join(s3_base, uri)
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if posixpath.isabs(uri):
        return uri
    return posixpath.normpath(posixpath.join(posixpath.dirname(manifest_path or ""), uri))


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
            info = next(storage.list_objects(uris[i], extensions=None))
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
