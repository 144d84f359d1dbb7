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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Union

from jobs.storage import local as _local
from jobs.storage import s3 as _s3

Uri = Union[str, "os.PathLike[str]"]

#: The suffixes ``list_objects`` keeps by default, compared lower-cased: the still and
#: animated formats that cameras, phones, the web and image generators produce and PIL
#: decodes. ``extensions=None`` lists everything; ``frozenset({"jpg"})`` only JPEGs.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

s3_client = _s3.client  # storage.s3_client(): the process's cached boto3 S3 client
s3_client_for = _s3.client_for  # storage.s3_client_for(AWS_* settings): a client for other settings


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object; ``etag`` changes with the content (locally: with mtime or size)."""

    uri: str
    size: int
    etag: str
    last_modified: datetime  # UTC


def is_s3(uri: Uri) -> bool:
    """Whether ``uri`` is an ``s3://`` URI (anything else is a local path)."""
    return isinstance(uri, str) and uri[:5].lower() == "s3://"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not is_s3(uri):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} has no bucket name; expected s3://bucket/key")
    return bucket, key


def local_path_if_local(uri: Uri) -> str | None:
    """The absolute path a local ``uri`` names, None for an s3:// URI."""
    return None if is_s3(uri) else _local.local_path(uri)


def join(uri: Uri, *parts: str) -> str:
    """``join("s3://b/x/", "y", "z.png") == "s3://b/x/y/z.png"``; a part never restarts the path."""
    names = [str(part).strip("/" + os.sep) for part in parts]
    names = [name for name in names if name]
    if is_s3(uri):
        return "/".join([str(uri).rstrip("/"), *names])
    return os.path.join(os.fspath(uri), *names)


def list_objects(
    uri: Uri, *, extensions: frozenset[str] | None = IMAGE_EXTENSIONS
) -> Iterator[ObjectInfo]:
    """Yield the objects under a folder or prefix whose suffix is in ``extensions``.

    S3 is read lazily one ListObjectsV2 page (1000 keys) at a time, in key order;
    folder markers (keys ending in "/") are skipped. Local folders are walked
    depth-first in name order, following symlinks only to places inside the folder.
    A URI naming one object or file yields it, whatever its suffix. A missing bucket
    or local folder raises FileNotFoundError.
    """
    wanted = None if extensions is None else frozenset(_dotted(e) for e in extensions)
    if not is_s3(uri):
        path = _local.local_path(uri)
        for file in _local.files_under(path):
            if file == path or _suffix_in(file, wanted):
                yield ObjectInfo(uri=file, **_local.file_fields(file))
        return
    bucket, key = split_s3_uri(str(uri))
    with _s3.errors_explained(str(uri), bucket):
        head = _s3.head_object(bucket, key) if key and not key.endswith("/") else None
        if head is not None:
            yield ObjectInfo(uri=str(uri), **_s3.object_fields(head))
            return
        for item in _s3.iter_objects(bucket, _s3_folder(str(uri))[1]):
            if _suffix_in(item["Key"], wanted):
                yield ObjectInfo(uri=f"s3://{bucket}/{item['Key']}", **_s3.object_fields(item))


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
    bucket, prefix = _s3_folder(str(uri))
    with _s3.errors_explained(str(uri), bucket):
        pages = _s3.iter_pages(bucket, prefix, Delimiter="/")
        found = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", ())]
    return sorted(f"s3://{bucket}/{p.rstrip('/')}" for p in found)


def read_bytes(uri: Uri, *, max_bytes: int | None = None) -> bytes:
    """The content of one object; ValueError, before reading it, when over ``max_bytes``."""
    if not is_s3(uri):
        with open(_local.local_path(uri), "rb") as file:
            _check_size(uri, os.fstat(file.fileno()).st_size, max_bytes)
            return file.read()
    bucket, key = split_s3_uri(str(uri))

    def get() -> bytes:
        answer = _s3.client().get_object(Bucket=bucket, Key=key)
        body = answer["Body"]  # its read() checks the length; `with body` would yield the raw stream
        try:
            _check_size(uri, answer["ContentLength"], max_bytes)
            return body.read()
        finally:
            body.close()  # closed unread, it drops one connection, no more

    with _s3.errors_explained(str(uri), bucket):
        return _s3.retried(get)


def write_bytes(uri: Uri, data: bytes) -> None:
    """Write one object; a local file is replaced atomically, its folders created."""
    if not is_s3(uri):
        _local.write_atomic(_local.local_path(uri), data)
        return
    bucket, key = split_s3_uri(str(uri))
    with _s3.errors_explained(str(uri), bucket):
        _s3.retried(_s3.client().put_object, Bucket=bucket, Key=key, Body=data)


def exists(uri: Uri) -> bool:
    """Whether ``uri`` names an object, a file, a folder, a bucket, or a prefix with objects."""
    if not is_s3(uri):
        return os.path.exists(_local.local_path(uri))
    bucket, key = split_s3_uri(str(uri))
    with _s3.errors_explained(str(uri), bucket):
        if not key:
            return _s3.bucket_exists(bucket)
        if not key.endswith("/") and _s3.head_object(bucket, key) is not None:
            return True
        return _s3.prefix_has_objects(bucket, _s3_folder(str(uri))[1])


def delete_prefix(uri: Uri) -> int:
    """Delete a local folder, or every object under an S3 prefix; returns how many files.

    Only that folder: refuses a whole bucket and ``/``. A missing folder is no error.
    """
    if not is_s3(uri):
        return _local.delete_tree(_local.local_path(uri))
    bucket, prefix = _s3_folder(str(uri))
    if not prefix:
        raise ValueError(f"refusing to delete the whole bucket {uri}; name a prefix")
    with _s3.errors_explained(str(uri), bucket):
        return _s3.delete_prefix(bucket, prefix)


def delete_object(uri: Uri) -> None:
    """Delete one object or file; a missing one is no error."""
    if not is_s3(uri):
        path = _local.local_path(uri)
        if os.path.lexists(path):
            os.unlink(path)
        return
    bucket, key = split_s3_uri(str(uri))
    with _s3.errors_explained(str(uri), bucket):
        _s3.retried(_s3.client().delete_object, Bucket=bucket, Key=key)


def replace_folder(src_uri: Uri, dst_uri: Uri) -> None:
    """Put the folder ``src_uri`` where ``dst_uri`` is, replacing what was there.

    Locally one rename (readers see the old folder or the new one, never half); on S3
    the old objects are deleted and the new ones copied server-side.
    """
    if not is_s3(src_uri) and not is_s3(dst_uri):
        _local.replace_dir(_local.local_path(src_uri), _local.local_path(dst_uri))
        return
    delete_prefix(dst_uri)
    copy_prefix(src_uri, dst_uri)
    delete_prefix(src_uri)


def upload_dir(local_dir: Uri, uri: Uri) -> int:
    """Copy every file under ``local_dir`` to the same names under ``uri``; returns how many."""
    files = _local.tree(_local.local_path(local_dir))
    if not is_s3(uri):
        return _local.copy_files(files, _local.local_path(uri))
    bucket, prefix = _s3_folder(str(uri))
    with _s3.errors_explained(str(uri), bucket):
        _s3.in_parallel(lambda f: _s3.client().upload_file(f[0], bucket, prefix + f[1]), files)
    return len(files)


def download_dir(uri: Uri, local_dir: Uri) -> int:
    """Copy every object under ``uri`` into ``local_dir``; returns how many.

    Keys that would land outside ``local_dir`` (``..``, absolute names) are refused
    before anything is written. An S3 prefix without objects is a FileNotFoundError.
    """
    root = _local.local_path(local_dir)
    if not is_s3(uri):
        return _local.copy_files(_local.tree(_local.local_path(uri)), root)
    bucket, prefix = _s3_folder(str(uri))
    with _s3.errors_explained(str(uri), bucket):
        keys = [item["Key"] for item in _s3.iter_objects(bucket, prefix)]
        if not keys:
            raise FileNotFoundError(f"there are no objects under {uri}")
        targets = [
            (key, _local.path_inside(root, key[len(prefix):], f"s3://{bucket}/{key}"))
            for key in keys
        ]

        def fetch(target: tuple[str, str]) -> None:
            os.makedirs(os.path.dirname(target[1]), exist_ok=True)
            _s3.client().download_file(bucket, target[0], target[1])

        _s3.in_parallel(fetch, targets)
    return len(targets)


def copy_prefix(src_uri: Uri, dst_uri: Uri) -> int:
    """Copy every object under ``src_uri`` to the same names under ``dst_uri``.

    S3 to S3 copies server-side (CopyObject), e.g. to publish a scan's files from a
    temporary prefix; other pairs upload, download or copy files. Returns how many.
    """
    if not is_s3(src_uri):
        return upload_dir(src_uri, dst_uri)
    if not is_s3(dst_uri):
        return download_dir(src_uri, dst_uri)
    src_bucket, src_prefix = _s3_folder(str(src_uri))
    dst_bucket, dst_prefix = _s3_folder(str(dst_uri))
    buckets = src_bucket if src_bucket == dst_bucket else f"{src_bucket} or {dst_bucket}"
    with _s3.errors_explained(f"{src_uri} -> {dst_uri}", buckets):
        items = list(_s3.iter_objects(src_bucket, src_prefix))
        _s3.in_parallel(
            lambda item: _s3.copy_object(
                (src_bucket, item["Key"]),
                (dst_bucket, dst_prefix + item["Key"][len(src_prefix):]),
                item["Size"],
            ),
            items,
        )
    return len(items)


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


def _s3_folder(uri: str) -> tuple[str, str]:
    """``s3://b/x`` and ``s3://b/x/`` -> ``("b", "x/")``; ``s3://b`` -> ``("b", "")``."""
    bucket, key = split_s3_uri(uri)
    key = key.rstrip("/")
    return bucket, f"{key}/" if key else ""


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
