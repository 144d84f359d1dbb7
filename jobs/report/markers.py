"""Scan markers (``_scans/<id>.json``): their shape, and reading the published ones.

A marker is data on a shared bucket: anyone who can write there can craft one. So the
folders and files it names are used only when they have exactly the shapes
jobs.report.store.publish writes (``scan_date=YYYY-MM-DD/scan_id=<id>/part-*.parquet``);
other markers are ignored with a warning.

    python -c "from jobs.report.markers import published_scans; print(len(published_scans('reports')))"
"""

from __future__ import annotations

import json
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from typing import Any

from jobs import storage

SCANS_DIR = "_scans"
MARKER_FORMAT = 1
SCAN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PART = re.compile(r"^part-[A-Za-z0-9_-]{1,64}\.parquet$")


def is_report_dir(relative: Any, scan_id: str) -> bool:
    """Whether ``relative`` is exactly ``scan_date=<a real date>/scan_id=<scan_id>``: the
    only shape a folder read from a marker or intent file may have to be deleted or read."""
    match = isinstance(relative, str) and re.fullmatch(r"scan_date=(\d{4}-\d{2}-\d{2})/scan_id=(.+)", relative)
    if not match or match.group(2) != scan_id:
        return False
    try:
        date.fromisoformat(match.group(1))
    except ValueError:
        return False
    return True


def _well_formed(marker: Any) -> bool:
    """A marker whose report folder and files have the shapes publish() writes (a
    crafted one could name files outside the report root)."""
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        return False
    scan_id, report, files = marker.get("scan_id"), marker.get("report"), marker.get("files")
    return (isinstance(scan_id, str) and bool(SCAN_ID_PATTERN.match(scan_id)) and is_report_dir(report, scan_id)
            and report == f"scan_date={marker.get('scan_date')}/scan_id={scan_id}" and isinstance(files, list)
            and all(isinstance(f, str) and f.startswith(report + "/") and _PART.match(f[len(report) + 1:])
                    for f in files))


def published_scans(output: str) -> list[dict[str, Any]]:
    """The markers of every published scan under ``output``, oldest scan date first."""
    try:
        uris = [i.uri for i in storage.list_objects(storage.join(output, SCANS_DIR), extensions=frozenset({".json"}))]
    except FileNotFoundError:
        return []
    if not uris:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(uris))) as pool:
        markers = list(pool.map(_read_marker, uris))
    bad = [u for u, m in zip(uris, markers) if m is not None and not _well_formed(m)]
    if bad:
        warnings.warn(f"{len(bad)} scan markers are malformed and were ignored, e.g. {bad[0]}", stacklevel=2)
    return sorted((m for m in markers if m is not None and _well_formed(m)), key=lambda m: (m["scan_date"], m["scan_id"]))


def _read_marker(uri: str) -> Any:
    try:
        return json.loads(storage.read_bytes(uri))
    except ValueError:  # not JSON (or not UTF-8): reported as malformed
        return {}
