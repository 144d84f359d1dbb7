"""Where a manifest's entries may point: the folders and ``s3://bucket[/prefix]``s given
with ``--allow-prefix`` (jobs/storage/manifest.py uses it for every manifest).

Matching is on whole path segments of normalised paths: local paths with symlinks
resolved (``os.path.realpath``) at the time of the check, S3 keys both as written and with
``.``/``..`` segments resolved (a server or proxy that resolves them must not reach a key
outside the prefix either); ``s3://bucket-evil`` is not under ``s3://bucket``.

    python -c "from jobs.storage.allowed import AllowedRoots; print(AllowedRoots(['s3://b/x']).allows('s3://b/x/y.jpg'))"
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from jobs import storage

ALLOW_ALL = "*"


class AllowedRoots:
    """The folders and ``s3://bucket[/prefix]``s a manifest's entries may name."""

    def __init__(self, prefixes: Sequence[str]):
        self.everything = ALLOW_ALL in prefixes
        self.s3: list[tuple[str, str]] = []  # (bucket, "" or "prefix/")
        self.local: list[str] = []  # real paths
        for p in (str(p).strip() for p in prefixes if p != ALLOW_ALL):
            if not p:
                raise ValueError("--allow-prefix is empty; give a folder, s3://bucket[/prefix], or '*' for anything")
            if storage.is_s3(p):
                try:
                    bucket, key = storage.split_s3_uri("s3://" + p[5:])
                except ValueError:
                    bucket, key = "", ""
                folder = _dot_free(key.strip("/"))
                if not bucket or folder is None:
                    raise ValueError(f"--allow-prefix {p!r} names no bucket, or climbs out of it")
                self.s3.append((bucket, folder + "/" if folder else ""))
            else:
                self.local.append(os.path.realpath(storage.local_path_if_local(p)))

    @classmethod
    def beside(cls, manifest: str) -> AllowedRoots:
        """The default: the manifest's own bucket, or its own folder."""
        if storage.is_s3(manifest):
            return cls([f"s3://{storage.split_s3_uri('s3://' + manifest[5:])[0]}"])
        return cls([os.path.dirname(storage.local_path_if_local(manifest).rstrip(os.sep)) or os.sep])

    def allows(self, uri: str) -> bool:
        if self.everything:
            return True
        if storage.is_s3(uri):
            bucket, key = storage.split_s3_uri(uri)
            clean = _dot_free(key)  # what a server that resolves dot segments would read
            return clean is not None and any(
                bucket == b and key.startswith(p) and clean.startswith(p) for b, p in self.s3)
        real = os.path.realpath(uri)  # symlinks resolved now, when the manifest is read
        return any(os.path.commonpath([real, root]) == root for root in self.local)

    def __str__(self) -> str:
        if self.everything:
            return ALLOW_ALL
        return ", ".join([*(f"s3://{b}/{p}" for b, p in self.s3), *self.local])


def _dot_free(key: str) -> str | None:
    """``key`` with ``.``/``..`` segments resolved (backslashes read as slashes too), or
    None when it climbs above its bucket."""
    parts: list[str] = []
    for part in key.replace("\\", "/").split("/"):
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)
