"""Moving whole folders: deleting, replacing, uploading, downloading and copying every
object under a prefix (S3 to S3 server-side). Import jobs.storage, which re-exports these.
"""

from __future__ import annotations

import os

from jobs.storage import local as _local
from jobs.storage import s3 as _s3
from jobs.storage import s3_errors as _s3_errors
from jobs.storage.uri import Uri, is_s3, s3_folder


def delete_prefix(uri: Uri) -> int:
    """Delete a local folder, or every object under an S3 prefix; returns how many files.

    Only that folder: refuses a whole bucket and ``/``. A missing folder is no error.
    """
    if not is_s3(uri):
        return _local.delete_tree(_local.local_path(uri))
    bucket, prefix = s3_folder(str(uri))
    if not prefix:
        raise ValueError(f"refusing to delete the whole bucket {uri}; name a prefix")
    with _s3_errors.errors_explained(str(uri), bucket):
        return _s3.delete_prefix(bucket, prefix)


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
    bucket, prefix = s3_folder(str(uri))
    with _s3_errors.errors_explained(str(uri), bucket):
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
    bucket, prefix = s3_folder(str(uri))
    with _s3_errors.errors_explained(str(uri), bucket):
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
    src_bucket, src_prefix = s3_folder(str(src_uri))
    dst_bucket, dst_prefix = s3_folder(str(dst_uri))
    buckets = src_bucket if src_bucket == dst_bucket else f"{src_bucket} or {dst_bucket}"
    with _s3_errors.errors_explained(f"{src_uri} -> {dst_uri}", buckets):
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
