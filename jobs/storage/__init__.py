"""Every read, write and listing of the jobs, for local paths and ``s3://bucket/key`` URIs.

S3 is configured by the standard AWS variables only, e.g. for a local server::

    python -m jobs.demo.s3_server --dir /tmp/genscan-s3 --bucket uploads   # prints the exports
    export AWS_ENDPOINT_URL=http://127.0.0.1:PORT AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...
    python -c "from jobs import storage; print(*storage.list_objects('s3://uploads/'))"

A URI that is not ``s3://`` is a local path (``file://`` accepted). Folders follow
S3: ``s3://b/photos`` and ``s3://b/photos/`` both mean the keys under ``photos/``, and
a URI naming one object or file stands for that object alone. The S3 and local halves
live in jobs/storage/s3.py and jobs/storage/local.py; code outside jobs/storage imports
this module only. Manifests are read by jobs/storage/manifest.py, checkpoints fetched by
jobs/storage/models.py. Tests: ``pytest tests/jobs/storage``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jobs.storage import local as _local
from jobs.storage import s3 as _s3
from jobs.storage import s3_errors as _s3_errors
from jobs.storage.redaction import redact
from jobs.storage.skips import ListingSkipWarning, ListingStats
from jobs.storage.transfer import copy_prefix, delete_prefix, download_dir, replace_folder, upload_dir
from jobs.storage.uri import Uri, is_s3, join, local_path_if_local, s3_folder, split_s3_uri

__all__ = ["IMAGE_EXTENSIONS", "ListingSkipWarning", "ListingStats", "ObjectInfo", "Uri", "copy_prefix", "delete_object", "delete_prefix", "download_dir",
           "exists", "is_s3", "join", "list_objects", "list_prefixes", "local_path_if_local", "pyarrow_filesystem",
           "read_bytes", "redact", "replace_folder", "s3_client", "s3_client_for", "split_s3_uri", "upload_dir", "write_bytes"]

#: The suffixes ``list_objects`` keeps by default, compared lower-cased: the still and
#: animated formats that cameras, phones, the web and image generators produce and PIL
#: decodes. ``extensions=None`` lists everything; ``frozenset({"jpg"})`` only JPEGs.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

s3_client = _s3.client  # storage.s3_client(): the process's cached boto3 S3 client
s3_client_for = _s3.client_for  # storage.s3_client_for(AWS_* settings): a client for other settings


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object; ``etag`` changes with the content (locally: with mtime, size or ctime)."""

    uri: str
    size: int
    etag: str
    last_modified: datetime  # UTC


def list_objects(
    uri: Uri, *, extensions: frozenset[str] | None = IMAGE_EXTENSIONS, stats: ListingStats | None = None
) -> Iterator[ObjectInfo]:
    """Yield the objects under a folder or prefix whose suffix is in ``extensions``.

    S3 is read lazily one ListObjectsV2 page (1000 keys) at a time, in key order;
    folder markers (keys ending in "/") are skipped. Local folders are walked
    depth-first in name order, following symlinks only to places inside the folder.
    A URI naming one object or file yields it, whatever its suffix. A missing bucket
    or local folder raises FileNotFoundError.

    Local entries that cannot be listed (with a wanted suffix: a link loop or a dangling
    link, a link out of the folder, a FIFO or device, a name that is not UTF-8; and any
    unreadable subfolder) are counted in ``stats``, or, without ``stats``, given in one
    ListingSkipWarning at the end: never lost silently, never the end of the listing.
    """
    wanted = None if extensions is None else frozenset(_dotted(e) for e in extensions)
    if not is_s3(uri):
        yield from _list_local(_local.local_path(uri), wanted, stats)
        return
    bucket, key = split_s3_uri(str(uri))
    with _s3_errors.errors_explained(str(uri), bucket):
        head = _s3.head_object(bucket, key) if key and not key.endswith("/") else None
        if head is not None:
            yield ObjectInfo(uri=str(uri), **_s3.object_fields(head))
            return
        for item in _s3.iter_objects(bucket, s3_folder(str(uri))[1]):
            if _suffix_in(item["Key"], wanted):
                yield ObjectInfo(uri=f"s3://{bucket}/{item['Key']}", **_s3.object_fields(item))


def _list_local(path: str, wanted: frozenset[str] | None, stats: ListingStats | None) -> Iterator[ObjectInfo]:
    counted = stats if stats is not None else ListingStats()

    def on_skip(name: str, reason: str, is_folder: bool) -> None:
        if is_folder or _suffix_in(name, wanted):  # a .txt that cannot be read is no loss
            counted.skip(reason, name)

    for file in _local.files_under(path, on_skip):
        if file != path and not _suffix_in(file, wanted):
            continue
        if not _is_utf8(file):  # Arrow and Parquet hold UTF-8 only; a lossy name could alias another file
            on_skip(file, "name is not valid UTF-8", False)
            continue
        try:
            fields = _local.file_fields(file)
        except OSError as e:  # gone or swapped since it was listed
            on_skip(file, f"not listable ({type(e).__name__}: {e.strerror or e})", False)
            continue
        yield ObjectInfo(uri=file, **fields)
    if stats is None and counted.total:
        warnings.warn(ListingSkipWarning(f"listing {path}: {counted.summary()}"), stacklevel=3)


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")  # os.scandir gives undecodable bytes as lone surrogates
        return True
    except UnicodeEncodeError:
        return False


def list_prefixes(uri: Uri) -> list[str]:
    """The immediate subfolders of ``uri``, sorted, as URIs without a trailing slash.

    As on S3, a local folder that does not exist has none.
    """
    if not is_s3(uri):
        path = _local.local_path(uri)
        if not os.path.isdir(path):
            return []
        with os.scandir(path) as entries:
            return sorted(e.path for e in entries if e.is_dir(follow_symlinks=False))
    bucket, prefix = s3_folder(str(uri))
    with _s3_errors.errors_explained(str(uri), bucket):
        pages = _s3.iter_pages(bucket, prefix, Delimiter="/")
        found = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", ())]
    return sorted(f"s3://{bucket}/{p.rstrip('/')}" for p in found)


def read_bytes(uri: Uri, *, max_bytes: int | None = None) -> bytes:
    """The content of one object; ValueError when over ``max_bytes`` (decided from its
    size before reading, and by reading at most max_bytes + 1 bytes). Locally only
    regular files are read (a FIFO, a device, a folder: OSError, without blocking)."""
    if not is_s3(uri):
        return _local.read_file(_local.local_path(uri), max_bytes)
    bucket, key = split_s3_uri(str(uri))

    def get() -> bytes:
        answer = _s3.client().get_object(Bucket=bucket, Key=key)
        body = answer["Body"]  # its read() checks the length; `with body` would yield the raw stream
        try:
            _check_size(uri, answer.get("ContentLength", 0), max_bytes)
            return _s3.read_body(body, max_bytes, str(uri))
        finally:
            body.close()  # closed unread, it drops one connection, no more

    with _s3_errors.errors_explained(str(uri), bucket):
        return _s3.retried(get)


def write_bytes(uri: Uri, data: bytes) -> None:
    """Write one object; a local file is replaced atomically, its folders created."""
    if not is_s3(uri):
        _local.write_atomic(_local.local_path(uri), data)
        return
    bucket, key = split_s3_uri(str(uri))
    with _s3_errors.errors_explained(str(uri), bucket):
        _s3.retried(_s3.client().put_object, Bucket=bucket, Key=key, Body=data)


def exists(uri: Uri) -> bool:
    """Whether ``uri`` names an object, a file, a folder, a bucket, or a prefix with objects."""
    if not is_s3(uri):
        return os.path.exists(_local.local_path(uri))
    bucket, key = split_s3_uri(str(uri))
    with _s3_errors.errors_explained(str(uri), bucket):
        if not key:
            return _s3.bucket_exists(bucket)
        if not key.endswith("/") and _s3.head_object(bucket, key) is not None:
            return True
        return _s3.prefix_has_objects(bucket, s3_folder(str(uri))[1])


def delete_object(uri: Uri) -> None:
    """Delete one object or file; a missing one is no error."""
    if not is_s3(uri):
        path = _local.local_path(uri)
        if os.path.lexists(path):
            os.unlink(path)
        return
    bucket, key = split_s3_uri(str(uri))
    with _s3_errors.errors_explained(str(uri), bucket):
        _s3.retried(_s3.client().delete_object, Bucket=bucket, Key=key)


def pyarrow_filesystem(uri: Uri) -> tuple[Any, str]:
    """``(pyarrow.fs.FileSystem, path)`` for pyarrow, Ray Data and Ray Train.

    ``s3://b/k`` -> an S3FileSystem configured like ``s3_client()``, endpoint included
    (pyarrow ignores AWS_ENDPOINT_URL), and ``"b/k"``; a local path -> a
    LocalFileSystem and the absolute path.
    """
    if is_s3(uri):
        bucket, key = split_s3_uri(str(uri))
        return _s3.pyarrow_s3(bucket), f"{bucket}/{key}".rstrip("/")
    from pyarrow import fs as pafs  # here so that importing this module stays light

    return pafs.LocalFileSystem(), _local.local_path(uri)


def _suffix_in(name: str, wanted: frozenset[str] | None) -> bool:
    return wanted is None or os.path.splitext(name)[1].lower() in wanted


def _dotted(extension: str) -> str:
    extension = extension.lower()
    return extension if extension.startswith(".") else f".{extension}"


def _check_size(uri: Uri, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise ValueError(
            f"{uri} is {size} bytes, more than max_bytes={max_bytes}; "
            "raise the limit or leave the object out"
        )
