"""Manifests: the one reader of CSV/Parquet lists of objects, for scans and for training.

A manifest is a CSV (``.csv``, ``.csv.gz``) or Parquet file (``.parquet``, ``.pq``, or a
folder of Parquet files, as S3 Inventory delivers them), local or on S3, with one row per
object and either

- a ``uri`` column (``path`` or ``file`` also accepted): ``s3://bucket/key``, an absolute
  path, a ``file://`` URI, or a path relative to the manifest's folder (a manifest in a
  bucket names keys beside it); or
- ``bucket`` and ``key`` columns (S3 Inventory; CSV inventories URL-encode keys, so prefer
  the Parquet inventory format),

and optionally ``etag``/``e_tag``, ``size``/``size_bytes``, ``label`` and ``split`` (for
training). Column names are matched in any case. Rows of S3 Inventory's versioned format
that are not ``is_latest`` or are delete markers are left out.

``read_manifest`` yields Arrow tables of ``MANIFEST_SCHEMA`` with every ``uri`` resolved
to an absolute URI; rows it cannot use are not yielded but counted in ``Manifest.dropped``
(reason -> rows), so callers can say how many were left out and why.

    python -c "from jobs.storage.manifest import Manifest; m = Manifest('list.csv'); print(sum(t.num_rows for t in m.tables()), m.dropped)"
"""

from __future__ import annotations

import os
import posixpath
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jobs import storage

SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
MANIFEST_SCHEMA = pa.schema([
    pa.field("uri", pa.string()),
    pa.field("etag", pa.string()),
    pa.field("size_bytes", pa.int64()),  # null when the manifest does not say
    pa.field("label", pa.string()),  # as written (training checks the values)
    pa.field("split", pa.string()),
])
_ROLES = {"uri": ("uri", "path", "file"), "etag": ("etag", "e_tag"), "size": ("size_bytes", "size"),
          "label": ("label",), "split": ("split",)}


def is_manifest(uri: str) -> bool:
    """Whether ``uri`` names a manifest file (by its suffix) rather than a folder of images."""
    return uri.lower().rstrip("/").endswith(SUFFIXES) and (storage.is_s3(uri) or os.path.isfile(uri))


class Manifest:
    """One manifest, opened: its columns found, its rows read in Arrow batches."""

    def __init__(self, uri: str):
        import pyarrow.dataset as ds

        self.uri = uri
        self.dropped: Counter[str] = Counter()
        fs, path = storage.pyarrow_filesystem(uri)
        csv = uri.lower().endswith((".csv", ".csv.gz"))
        try:
            fmt = ds.CsvFileFormat(convert_options=_all_strings(fs, path)) if csv else "parquet"
            self._dataset = ds.dataset(path, filesystem=fs, format=fmt)
        except (FileNotFoundError, OSError, pa.ArrowInvalid) as e:
            raise FileNotFoundError(f"cannot read the manifest {uri}: {e}") from None
        names = {n.lower(): n for n in self._dataset.schema.names}
        self.columns: dict[str, str | None] = {
            role: next((names[c] for c in options if c in names), None) for role, options in _ROLES.items()}
        self._bucket_key = None
        if self.columns["uri"] is None:
            if not {"bucket", "key"} <= set(names):
                raise ValueError(
                    f"manifest {uri} has columns {self._dataset.schema.names}; it needs a 'uri' "
                    f"(or 'path'/'file') column, or 'bucket' and 'key' columns like an S3 Inventory")
            self._bucket_key = (names["bucket"], names["key"])
        self._filter = _current_versions(names)
        self._s3_base = posixpath.dirname(uri.rstrip("/")) if storage.is_s3(uri) else None
        self._local_base = None if self._s3_base else os.path.dirname(storage.local_path_if_local(uri))

    def tables(self) -> Iterator[pa.Table]:
        """The usable rows, as tables of ``MANIFEST_SCHEMA`` (one per Arrow batch read)."""
        wanted = [c for c in (*self.columns.values(), *(self._bucket_key or ())) if c]
        try:
            for batch in self._dataset.to_batches(columns=wanted, filter=self._filter):
                yield self._normalised(batch)
        except pa.ArrowInvalid as e:  # a malformed CSV line: say where, keep no partial silence
            raise ValueError(f"manifest {self.uri} is malformed: {e}") from None

    def _normalised(self, batch: pa.RecordBatch) -> pa.Table:
        n = batch.num_rows
        if self._bucket_key:
            pairs = zip(batch.column(self._bucket_key[0]).to_pylist(), batch.column(self._bucket_key[1]).to_pylist())
            raw = [f"s3://{b}/{k}" if b and k else None for b, k in pairs]
        else:
            raw = batch.column(self.columns["uri"]).cast(pa.string()).to_pylist()
        uris = [self.resolve(u) for u in raw]

        def column(role: str, type_: pa.DataType) -> pa.Array:
            name = self.columns[role]
            return batch.column(name).cast(type_) if name else pa.nulls(n, type_)

        table = pa.table([pa.array(uris, pa.string()), column("etag", pa.string()), column("size", pa.int64()),
                          column("label", pa.string()), column("split", pa.string())], schema=MANIFEST_SCHEMA)
        return table.filter(pc.is_valid(table["uri"]))

    def resolve(self, entry: Any) -> str | None:
        """An absolute URI for one manifest entry, or None (counted in ``dropped``)."""
        if entry is None or not str(entry).strip():
            self.dropped["empty uri"] += 1
            return None
        entry = str(entry).strip()
        if storage.is_s3(entry):
            return entry
        if "://" in entry and not entry.startswith("file://"):
            self.dropped[f"unsupported scheme {entry.split('://', 1)[0][:16]}://"] += 1
            return None
        if self._s3_base is not None:  # keys beside the manifest, in its bucket
            return storage.join(self._s3_base, posixpath.normpath(entry))
        entry = entry.removeprefix("file://")
        return os.path.normpath(os.path.join(self._local_base, entry))


def _all_strings(fs: Any, path: str) -> Any:
    """CSV conversion that keeps the text columns text (an etag or a key of digits stays
    a string); sizes and S3 Inventory's flags are inferred."""
    import pyarrow.csv as pacsv

    text = {c for role in ("uri", "etag", "label", "split") for c in _ROLES[role]} | {"bucket", "key"}
    with fs.open_input_stream(path) as f:
        first = pacsv.open_csv(f).schema.names
    return pacsv.ConvertOptions(column_types={name: pa.string() for name in first if name.lower() in text})


def _current_versions(names: dict[str, str]) -> Any:
    """S3 Inventory with versions: current versions only, no delete markers."""
    flt = None
    if "is_latest" in names:
        flt = pc.field(names["is_latest"]) == True  # noqa: E712 (an expression, not a test)
    if "is_delete_marker" in names:
        live = pc.field(names["is_delete_marker"]) != True  # noqa: E712
        flt = live if flt is None else flt & live
    return flt
