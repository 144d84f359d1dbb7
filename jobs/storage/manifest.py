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

``Manifest.tables()`` yields Arrow tables of ``MANIFEST_SCHEMA`` with every ``uri``
resolved to an absolute URI (local paths normalised; S3 keys are data and kept as written),
whitespace around entries stripped, each URI once. Rows it cannot use are not yielded but
counted in ``Manifest.dropped`` (reason -> rows; ``dropped_text()`` says it in one line):
empty entries, schemes other than ``s3://`` and ``file://``, duplicates, CSV values that run
over several lines (a stray quote swallows the lines after it: each swallowed line counts),
and entries outside the allowed roots.

A manifest is data from someone else: its entries could name any file the job can read
or any bucket its credentials reach. ``allow_prefixes`` (``--allow-prefix``) confines them
to given folders and ``s3://bucket[/prefix]``s, matched on normalised paths (symlinks
resolved when the manifest is read) and whole path segments (``s3://bucket-evil`` is not
under ``s3://bucket``); ``"*"`` allows everything. Not given: the manifest's own bucket (an
``s3://`` manifest) or its own folder (a local one).

    python -c "from jobs.storage.manifest import Manifest; m = Manifest('list.csv'); print(sum(t.num_rows for t in m.tables()), m.dropped)"
"""

from __future__ import annotations

import os
import posixpath
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jobs import storage
from jobs.storage.allowed import AllowedRoots

SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
MANIFEST_SCHEMA = pa.schema([
    pa.field("uri", pa.string()),
    pa.field("etag", pa.string()),
    pa.field("size_bytes", pa.int64()),  # null when the manifest does not say
    pa.field("label", pa.string()),  # as written (training checks the values)
    pa.field("split", pa.string()),
])
STRAY_QUOTE = "a CSV value runs over several lines (a stray quote?)"
OUTSIDE = "outside the allowed prefixes (--allow-prefix)"
DUPLICATE = "duplicate (after normalisation)"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_ROLES = {"uri": ("uri", "path", "file"), "etag": ("etag", "e_tag"), "size": ("size_bytes", "size"),
          "label": ("label",), "split": ("split",)}


def is_manifest(uri: str) -> bool:
    """Whether ``uri`` names a manifest file (by its suffix) rather than a folder of images."""
    return uri.lower().rstrip("/").endswith(SUFFIXES) and (storage.is_s3(uri) or os.path.isfile(uri))


class Manifest:
    """One manifest, opened: its columns found, its rows read in Arrow batches.

    ``Manifest(m)`` of an opened Manifest is ``m`` itself, so one configured with
    ``allow_prefixes`` can be handed to code that opens manifests by URI.
    """

    def __init__(self, uri: Any, *, allow_prefixes: Sequence[str] | None = None, deduplicate: bool = True):
        import pyarrow.dataset as ds

        self.uri = uri
        self.dropped: Counter[str] = Counter()
        self.examples: dict[str, str] = {}  # reason -> the first entry dropped for it
        self.allowed = AllowedRoots(allow_prefixes) if allow_prefixes else AllowedRoots.beside(uri)
        self._seen: set[str] | None = set() if deduplicate else None
        fs, path = storage.pyarrow_filesystem(uri)
        self._csv = uri.lower().endswith((".csv", ".csv.gz"))
        try:
            fmt = ds.CsvFileFormat(convert_options=_all_strings(fs, path)) if self._csv else "parquet"
            self._dataset = ds.dataset(path, filesystem=fs, format=fmt)
        except (FileNotFoundError, OSError, pa.ArrowInvalid) as e:
            raise _read_error(uri, e) from None
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
        except OSError as e:
            raise _read_error(self.uri, e) from None

    def dropped_text(self) -> str:
        """``3 rows left out: 2 duplicate (...), e.g. 'a.jpg'; ...``, or "" when none were."""
        if not self.dropped:
            return ""
        parts = [f"{n} {why}, e.g. {_shown(self.examples[why])}" for why, n in self.dropped.most_common()]
        return f"{sum(self.dropped.values())} rows left out of {self.uri}: " + "; ".join(parts)

    def _normalised(self, batch: pa.RecordBatch) -> pa.Table:
        n = batch.num_rows
        if self._bucket_key:
            pairs = zip(batch.column(self._bucket_key[0]).to_pylist(), batch.column(self._bucket_key[1]).to_pylist())
            raw = [f"s3://{_text(b)}/{_text(k)}" if b and k else None for b, k in pairs]
        else:
            raw = [_text(v) for v in batch.column(self.columns["uri"]).to_pylist()]
        swallowed = _lines_swallowed(batch) if self._csv else [0] * n
        uris = [self._accepted(u, lines) for u, lines in zip(raw, swallowed)]

        def column(role: str, type_: pa.DataType) -> pa.Array:
            name = self.columns[role]
            if not name:
                return pa.nulls(n, type_)
            values = batch.column(name)
            if pa.types.is_binary(values.type):  # CSV text columns (see _all_strings)
                values = pa.array([None if v is None or v is _NOT_UTF8 else v
                                   for v in map(_text, values.to_pylist())], pa.string())
            return values.cast(type_)

        table = pa.table([pa.array(uris, pa.string()), column("etag", pa.string()), column("size", pa.int64()),
                          column("label", pa.string()), column("split", pa.string())], schema=MANIFEST_SCHEMA)
        return table.filter(pc.is_valid(table["uri"]))

    def _accepted(self, entry: Any, swallowed: int) -> str | None:
        """The URI of one row, or None with the reason counted in ``dropped``."""
        if swallowed:  # this row's value holds the lines after it: count each of them
            return self._drop(STRAY_QUOTE, entry, swallowed)
        if entry is _NOT_UTF8 or (isinstance(entry, str) and _NOT_UTF8 in entry):
            return self._drop("not valid UTF-8", "(undecodable bytes)")
        uri = self.resolve(entry)
        if uri is None:
            return None
        if not self.allowed.allows(uri):
            return self._drop(OUTSIDE, entry)
        if self._seen is not None:
            if uri in self._seen:
                return self._drop(DUPLICATE, entry)
            self._seen.add(uri)
        return uri

    def resolve(self, entry: Any) -> str | None:
        """An absolute URI for one manifest entry, or None (counted in ``dropped``)."""
        if entry is None or not str(entry).strip():
            return self._drop("empty uri", "")
        entry = str(entry).strip()
        scheme = _SCHEME.match(entry)
        if scheme and scheme.group(1).lower() == "s3" and entry[3:5] == "//":
            return "s3://" + entry[5:]  # S3 keys are data: kept as written
        if scheme and scheme.group(1).lower() == "file":
            entry = re.sub(r"^file:(//)?", "", entry, flags=re.IGNORECASE)
        elif scheme and len(scheme.group(1)) > 1:  # (one letter: a Windows drive, a local name)
            return self._drop(f"unsupported scheme {scheme.group(1).lower()[:16]}: (only s3:// and local paths)", entry)
        if self._s3_base is not None:  # keys beside the manifest, in its bucket
            return storage.join(self._s3_base, posixpath.normpath(entry))
        return os.path.normpath(os.path.join(self._local_base, entry))

    def _drop(self, reason: str, entry: Any, rows: int = 1) -> None:
        self.dropped[reason] += rows
        self.examples.setdefault(reason, str(entry))
        return None


_NOT_UTF8 = "\udcff<not utf-8>"  # stands for a value whose bytes are not UTF-8 (a surrogate: no real text has it)


def _text(value: Any) -> Any:
    """A CSV value read as bytes, as text; ``_NOT_UTF8`` when its bytes are not UTF-8."""
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return _NOT_UTF8


def _read_error(uri: str, e: Exception) -> Exception:
    """What pyarrow's failure to read a manifest means: missing (FileNotFoundError), S3
    unreachable (ConnectionError) or access denied (PermissionError), as jobs.storage says."""
    text = " ".join(str(e).split())
    if isinstance(e, PermissionError) or any(w in text for w in ("ACCESS_DENIED", "AccessDenied", "credentials",
                                                                    "INVALID_ACCESS_KEY", "SIGNATURE", "Forbidden")):
        return PermissionError(f"cannot read the manifest {uri}: access denied ({text}); check the AWS credentials")
    if isinstance(e, ConnectionError) or any(w in text for w in ("NETWORK_CONNECTION", "onnect", "timed out")):
        return ConnectionError(f"cannot read the manifest {uri}: S3 is not reachable ({text}); check AWS_ENDPOINT_URL")
    return FileNotFoundError(f"cannot read the manifest {uri}: {text}")


def _lines_swallowed(batch: pa.RecordBatch) -> list[int]:
    """Per row, how many manifest lines a value holds beyond its own (a CSV value that
    opens a quote it never closes runs to the next quote or the end of the file)."""
    counts = [0] * batch.num_rows
    for column in batch.columns:
        if not (pa.types.is_string(column.type) or pa.types.is_binary(column.type)):
            continue
        multi = pc.fill_null(pc.match_substring_regex(column, "[\r\n]"), False)
        for i in pc.indices_nonzero(multi).to_pylist():
            value = column[i].as_py()
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            lines = len(text.strip("\r\n").splitlines())
            counts[i] = max(counts[i], lines)
    return counts


def _shown(entry: str) -> str:
    """An entry as printed: escaped (control and bidi characters), at most 80 characters."""
    text = ascii(entry)
    return text if len(text) <= 80 else text[:77] + "..."


def _all_strings(fs: Any, path: str) -> Any:
    """CSV conversion that keeps the text columns text (an etag or a key of digits stays
    a string); sizes and S3 Inventory's flags are inferred."""
    import pyarrow.csv as pacsv

    text = {c for role in ("uri", "etag", "label", "split") for c in _ROLES[role]} | {"bucket", "key"}
    with fs.open_input_stream(path) as f:
        first = pacsv.open_csv(f).schema.names
    # binary, not string: one value that is not UTF-8 must drop its row, not fail the whole file
    return pacsv.ConvertOptions(column_types={name: pa.binary() for name in first if name.lower() in text})


def _current_versions(names: dict[str, str]) -> Any:
    """S3 Inventory with versions: current versions only, no delete markers."""
    flt = None
    if "is_latest" in names:
        flt = pc.field(names["is_latest"]) == True  # noqa: E712 (an expression, not a test)
    if "is_delete_marker" in names:
        live = pc.field(names["is_delete_marker"]) != True  # noqa: E712
        flt = live if flt is None else flt & live
    return flt
