"""URIs as jobs.storage reads them: ``s3://bucket/key``, or a local path (``file://``
accepted). Folders follow S3: ``s3://b/x`` and ``s3://b/x/`` both mean the keys under ``x/``.
"""

from __future__ import annotations

import os
from typing import Union

from jobs.storage import local as _local

Uri = Union[str, "os.PathLike[str]"]


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


def s3_folder(uri: str) -> tuple[str, str]:
    """``s3://b/x`` and ``s3://b/x/`` -> ``("b", "x/")``; ``s3://b`` -> ``("b", "")``."""
    bucket, key = split_s3_uri(uri)
    key = key.rstrip("/")
    return bucket, f"{key}/" if key else ""
