"""The local half of jobs.storage: paths, folder walks, atomic writes, safe downloads.

Import jobs.storage, not this module; it takes plain paths where jobs.storage takes
URIs. Kept apart from the S3 half so that each stays small.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def local_path(uri: str | os.PathLike[str]) -> str:
    """The absolute path of a local path or ``file://`` URI; ValueError for other schemes."""
    path = os.fspath(uri)
    if path.startswith("file://"):
        path = path[len("file://"):]
    if "://" in path:
        raise ValueError(f"unsupported URI {path!r}: use s3://bucket/key or a local path")
    return os.path.abspath(path)


def read_file(path: str, max_bytes: int | None = None) -> bytes:
    """The content of the regular file ``path``: at most ``max_bytes`` bytes, else ValueError.

    Anything else (a FIFO, a device such as /dev/zero, a socket, a folder), directly or
    through a symlink, is refused with OSError before it is read: a FIFO would block the
    reader forever and a device never ends. The file is opened with O_NONBLOCK and checked
    again (fstat) in case it was swapped after the first look, and at most max_bytes + 1
    bytes are read, so a file that grows, or reports a size it does not have (/proc), is
    caught rather than read without end.
    """
    _require_regular(path, os.stat(path).st_mode)  # opens nothing: opening a device can act
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    with os.fdopen(os.open(path, flags), "rb") as file:
        info = os.fstat(file.fileno())
        _require_regular(path, info.st_mode)
        if max_bytes is None:
            return file.read()
        if info.st_size > max_bytes:
            raise ValueError(f"{path} is {info.st_size} bytes, more than max_bytes={max_bytes}; "
                             "raise the limit or leave the file out")
        data = file.read(max_bytes + 1)  # buffered: loops until that many bytes or the end
    if len(data) > max_bytes:
        raise ValueError(f"{path} holds more than max_bytes={max_bytes} bytes (it grew while it was read, "
                         f"or its size of {info.st_size} bytes was wrong); not read further")
    return data


def _require_regular(path: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise OSError(f"{path} is {_kind(mode)}, not a regular file; only regular files are read")


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a special file")


#: ``on_skip(path, reason, is_folder)``: told of each entry a walk leaves out, and why.
SkipHandler = Callable[[str, str, bool], None]


def walk(folder: str, on_skip: SkipHandler | None = None) -> Iterator[str]:
    """Paths of the regular files under ``folder``, depth-first in name order.

    Symlinks are followed only when they resolve inside ``folder``, and each real
    folder is entered once, so links out of the tree and link loops are harmless. The
    walk keeps its own stack (a tree of any depth, no RecursionError), and an entry it
    cannot list (an unreadable folder, a link loop or a dangling link, a FIFO or device,
    a link out of the tree) is passed to ``on_skip`` rather than ending the walk.
    """
    skip = on_skip or (lambda path, reason, is_folder: None)
    real_root = os.path.realpath(folder)
    seen = {real_root}
    stack = [(iter(_entries(folder, skip, root=True)), real_root)]
    while stack:
        entries, real_folder = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        kind = _kind_of(entry, real_root, skip)
        if kind == "dir":
            # a plain folder's real path extends its parent's (realpath would cost O(depth))
            real = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real_folder, entry.name)
            if real not in seen:  # entered once: a link back up the tree is not a loop
                seen.add(real)
                stack.append((iter(_entries(entry.path, skip)), real))
        elif kind == "file":
            yield entry.path


def _entries(folder: str, skip: SkipHandler, root: bool = False) -> list[os.DirEntry[str]]:
    """The entries of ``folder`` in name order; [] (and a skip) when it cannot be read."""
    try:
        with os.scandir(folder) as scan:
            return sorted(scan, key=lambda entry: entry.name)
    except OSError as e:
        if root:  # the folder asked for: the caller's error, not a skip
            raise
        skip(folder, f"folder not readable ({type(e).__name__}: {e.strerror or e})", True)
        return []


def _kind_of(entry: os.DirEntry[str], real_root: str, skip: SkipHandler) -> str | None:
    """"dir", "file", or None for an entry that is left out (told to ``skip``)."""
    try:
        if entry.is_symlink() and not _under(os.path.realpath(entry.path), real_root):
            skip(entry.path, "symlink leads outside the folder", False)
            return None
        if entry.is_dir():  # the kind from the folder listing: no stat for plain entries
            return "dir"
        if entry.is_file():
            return "file"
        mode = entry.stat().st_mode
    except OSError as e:  # ELOOP (a link loop), ENOENT (a dangling link), EACCES, ...
        skip(entry.path, f"not listable ({type(e).__name__}: {e.strerror or e})", False)
        return None
    skip(entry.path, f"{_kind(mode)}, not a regular file", False)
    return None


def files_under(path: str, on_skip: SkipHandler | None = None) -> Iterator[str]:
    """``path`` itself when it is a file, else the files under the folder ``path``."""
    if os.path.isfile(path):
        yield path
    elif os.path.isdir(path):
        yield from walk(path, on_skip)
    else:
        raise FileNotFoundError(f"the folder {path} does not exist")


def file_fields(path: str) -> dict[str, Any]:
    """size, etag (``f"{mtime_ns:x}-{size:x}-{ctime_ns:x}"``) and UTC last_modified of a file.

    The etag holds the inode change time too: whoever swaps a file for another of the
    same size and sets its mtime back (``touch -d``) cannot set ctime, which any write,
    rename, chmod or utime moves to now, so an incremental scan scores the new content.
    (chmod, a hard link or a restore from backup then re-score a file: harmless work.)
    """
    info = os.stat(path)
    return {
        "size": info.st_size,
        "etag": f"{info.st_mtime_ns:x}-{info.st_size:x}-{info.st_ctime_ns:x}",
        "last_modified": datetime.fromtimestamp(info.st_mtime_ns / 1e9, tz=timezone.utc),
    }


def tree(root: str) -> list[tuple[str, str]]:
    """``(path, name relative to root with "/")`` of every file under the folder ``root``."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"the folder {root} does not exist")
    return [(path, os.path.relpath(path, root).replace(os.sep, "/")) for path in walk(root)]


def copy_files(files: list[tuple[str, str]], root: str) -> int:
    """Copy ``(path, relative name)`` pairs into the folder ``root``; returns how many."""
    for path, name in files:
        target = os.path.join(root, *name.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(path, target)
    return len(files)


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a hidden file beside ``path``, then rename it over ``path``.

    Readers see the old file or the new one, never a half-written one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def replace_dir(src: str, dst: str) -> None:
    """Move the folder ``src`` to ``dst`` with one rename; an existing ``dst`` is renamed
    aside (a hidden sibling, which readers of Hive folders skip) and then deleted."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    aside = None
    if os.path.lexists(dst):
        aside = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.{uuid.uuid4().hex}.replaced")
        os.rename(dst, aside)
    os.rename(src, dst)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def delete_tree(path: str) -> int:
    """Remove the folder ``path``, returning how many files it held; refuses ``/``."""
    if os.path.dirname(path) == path:
        raise ValueError(f"refusing to delete the file system root {path}")
    if not os.path.lexists(path):
        return 0
    if os.path.islink(path) or not os.path.isdir(path):
        raise NotADirectoryError(f"{path} is not a folder; delete_prefix deletes folders")
    count = sum(len(files) for _, _, files in os.walk(path))
    shutil.rmtree(path)
    return count


def path_inside(root: str, name: str, source: str) -> str:
    """``root/name``, or ValueError when ``name`` (from ``source``) would leave ``root``.

    Refuses ``..`` parts, absolute names, and names that resolve outside ``root``
    through a symlink already there.
    """
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    target = os.path.join(root, *parts)
    if (
        not parts
        or ".." in parts
        or name.startswith(("/", "\\"))
        or not _under(os.path.realpath(target), os.path.realpath(root))
    ):
        raise ValueError(f"refusing to download {source}: its name would land outside {root}")
    return target


def _under(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root
