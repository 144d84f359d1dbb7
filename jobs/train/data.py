"""Labelled training data: find it, read its labels, split it into train and validation.

Three layouts, told apart by what is there (local folder or ``s3://`` prefix):

- ``<root>/real/**`` and ``<root>/fake/**`` at any depth: split here;
- ``<root>/train/{real,fake}/**`` and ``<root>/validation/{real,fake}/**`` (the original
  project's layout): split given;
- a manifest (``uri,label[,split]``, CSV or Parquet, read by jobs/storage/manifest.py;
  relative entries are relative to the manifest's folder, so
  ``../shared/data/cifake-4k/manifest.csv`` works as it is).

Labels are ``real``/``fake`` and splits ``train``/``validation``, in any case. The split
made here is stratified and deterministic: within each class, images are ordered by a
hash of ``(seed, uri)`` and the first ``round(n * val_fraction)`` go to validation, so the
split does not depend on listing order, and adding images moves few others.

Files that do not decode are found later, by the training workers, which count and
report them (jobs/train/loop.py): listing reads no image.

    python -c "from jobs.train.data import list_labelled; print(list_labelled('../shared/data/cifake-4k').summary())"
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from detector.model import CLASSES
from jobs import storage
from jobs.storage.manifest import MANIFEST_SCHEMA, Manifest, is_manifest

SPLITS = ("train", "validation")


class DataError(ValueError):
    """The labelled data cannot be used as it is; the message says what to change."""


@dataclass(frozen=True)
class Sample:
    uri: str
    label: int  # index into detector.model.CLASSES (FAKE=0, REAL=1)


@dataclass(frozen=True)
class LabelledData:
    source: str
    layout: str  # "folders" | "split-folders" | "manifest"
    split_given: bool
    train: tuple[Sample, ...]
    validation: tuple[Sample, ...]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"train": {"fake": n, "real": n}, "validation": {...}}``"""
        return {
            split: {name: sum(s.label == i for s in samples) for i, name in enumerate(CLASSES)}
            for split, samples in (("train", self.train), ("validation", self.validation))
        }

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "layout": self.layout, "split_given": self.split_given,
                "counts": self.counts(), "validation_digest": self.validation_digest()}

    def validation_digest(self) -> str:
        """A hash of which images (uri and label) were held out. The split hashes each image's
        whole uri, so the same files listed from another path (a copy, a symlink, a bucket)
        split differently; jobs.evaluate compares this digest with the model's to refuse
        "validation" numbers that would include the model's own training images."""
        listed = "\n".join(sorted(f"{s.label}:{s.uri}" for s in self.validation))
        return "sha256-" + hashlib.sha256(listed.encode()).hexdigest()[:16]

    def check_held_out(self, trained_on: dict[str, Any] | None) -> None:
        """DataError unless ``validation`` is what the model with data record ``trained_on``
        (its checkpoint's ``data``) held out; a note when the model records no digest. The
        record is the checkpoint's metadata, so untrusted: anything but a dict is no record,
        and what is quoted back is cut short."""
        record = trained_on if isinstance(trained_on, dict) else {}
        recorded, source = record.get("validation_digest"), str(record.get("source"))[:200]
        if recorded and recorded != self.validation_digest():
            raise DataError(
                f"--split validation: these are not the images this model held out (digest {self.validation_digest()}, "
                f"the model's {str(recorded)[:40]}), so its own training images would be scored as unseen. Evaluate with the "
                f"training run's --data path ({source}), --seed and --val-fraction: the split hashes "
                f"each image's whole path, so a copy or symlink of the data elsewhere splits differently")
        if not recorded:
            print(f"note: this model records no digest of its held-out images (trained before they were recorded); "
                  f"the split is its own only with the training run's --data path ({source}), "
                  f"--seed and --val-fraction", file=sys.stderr)


def list_labelled(uri: str, *, val_fraction: float = 0.2, seed: int = 0,
                  allow_prefixes: tuple[str, ...] | None = None) -> LabelledData:
    """The labelled images under ``uri`` (folder, prefix or manifest), split. A manifest's
    entries must lie under ``allow_prefixes`` (default: its own bucket or folder;
    jobs/storage/allowed.py); the others are left out with a warning."""
    if is_manifest(uri):
        rows, layout = _read_manifest(uri, allow_prefixes), "manifest"
    else:
        rows, layout = _read_folders(uri)
    _check_unique(rows, uri)
    split_given = any(split is not None for _, _, split in rows)
    if split_given:
        train = [Sample(u, lab) for u, lab, split in rows if split == "train"]
        val = [Sample(u, lab) for u, lab, split in rows if split == "validation"]
    else:
        train, val = split_stratified([Sample(u, lab) for u, lab, _ in rows], val_fraction, seed)
    data = LabelledData(uri, layout, split_given, tuple(train), tuple(val))
    _check_classes(data)
    return data


def split_stratified(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Per class, the first ``round(n * val_fraction)`` by ``sha256(seed:uri)`` go to validation
    (at least one, and at least one left for training)."""
    train: list[Sample] = []
    val: list[Sample] = []
    for label in range(len(CLASSES)):
        members = sorted((s for s in samples if s.label == label), key=lambda s: _rank(seed, s.uri))
        if len(members) == 1:
            raise DataError(
                f"class {CLASSES[label]!r} has 1 image; it needs at least 2 to give both "
                f"train and validation one"
            )
        n_val = min(max(1, round(len(members) * val_fraction)), len(members) - 1) if members else 0
        val += members[:n_val]
        train += members[n_val:]
    return train, val


def _rank(seed: int, uri: str) -> bytes:
    return hashlib.sha256(f"{seed}:{uri}".encode()).digest()


def _read_folders(uri: str) -> tuple[list[tuple[str, int, str | None]], str]:
    """Rows ``(uri, label, split or None)`` from a folder layout."""
    root = uri if storage.is_s3(uri) else storage.local_path_if_local(uri)
    try:
        objects = [o.uri for o in storage.list_objects(root)]
    except FileNotFoundError as e:
        raise DataError(f"--data {uri}: {e}") from None
    if not objects:
        raise DataError(f"--data {uri} holds no images ({', '.join(sorted(storage.IMAGE_EXTENSIONS))})")
    parts = [_relative_parts(o, root) for o in objects]
    split_layout = any(p[0].lower() in SPLITS for p in parts if len(p) > 2)
    rows, outside = [], Counter()
    for obj, p in zip(objects, parts):
        if split_layout and len(p) > 2 and p[0].lower() in SPLITS and p[1].lower() in CLASSES:
            rows.append((obj, CLASSES.index(p[1].lower()), p[0].lower()))
        elif not split_layout and len(p) > 1 and p[0].lower() in CLASSES:
            rows.append((obj, CLASSES.index(p[0].lower()), None))
        else:
            outside["/".join(p[:-1][:2]) or "(top level)"] += 1
    if outside:
        where = ", ".join(f"{folder}/ ({n})" for folder, n in outside.most_common(5))
        expected = ("train/{real,fake}/ and validation/{real,fake}/" if split_layout
                    else "real/ and fake/")
        raise DataError(
            f"--data {uri}: {sum(outside.values())} images are outside {expected}, in {where}. "
            f"Move them, or list the images you want in a manifest (uri,label[,split])."
        )
    return rows, "split-folders" if split_layout else "folders"


def _relative_parts(obj: str, root: str) -> list[str]:
    if storage.is_s3(obj):
        rel = obj[len(root.rstrip("/")) + 1:]
        return rel.split("/")
    return os.path.relpath(obj, root).split(os.sep)


def _read_manifest(uri: str, allow_prefixes: tuple[str, ...] | None = None) -> list[tuple[str, int, str | None]]:
    need = "a training manifest needs a column uri (or path, file) and a column label"
    try:  # duplicates stay, for _check_unique to refuse (a training set must not repeat an image)
        reader = Manifest(uri, allow_prefixes=allow_prefixes, deduplicate=False)
        if reader.columns["label"] is None:
            raise ValueError("it has no column label")
        table = pa.concat_tables([*reader.tables(), MANIFEST_SCHEMA.empty_table()])
    except FileNotFoundError as e:
        raise DataError(f"--data {uri}: {e}") from None
    except ValueError as e:
        raise DataError(f"--data {uri}: {need}: {e}") from None
    if reader.dropped:
        print(f"warning: --data {uri}: {reader.dropped_text()} (allowed: {reader.allowed})", flush=True)
    labels = _column(table["label"].to_pylist(), CLASSES, "label", uri)
    splits = (_column(table["split"].to_pylist(), SPLITS, "split", uri) if reader.columns["split"]
              else [None] * table.num_rows)
    return [(u, CLASSES.index(lab), split) for u, lab, split in zip(table["uri"].to_pylist(), labels, splits)]


def _column(values: Any, allowed: tuple[str, ...], name: str, uri: str) -> list[str]:
    found = [str(v or '').strip().lower() for v in values]
    bad = Counter(v for v in found if v not in allowed)
    if bad:
        shown = ", ".join(f"{v!r} ({n} rows)" for v, n in bad.most_common(5))
        raise DataError(f"--data {uri}: unknown {name} values {shown}; a {name} is one of {', '.join(allowed)}")
    return found


def _check_unique(rows: list[tuple[str, int, str | None]], uri: str) -> None:
    repeated = [u for u, n in Counter(u for u, _, _ in rows).items() if n > 1]
    if repeated:
        raise DataError(f"--data {uri}: {len(repeated)} images are listed more than once, e.g. {repeated[0]}")


def _check_classes(data: LabelledData) -> None:
    for split, counts in data.counts().items():
        empty = [name for name, n in counts.items() if n == 0]
        if empty:
            how = {
                "folders": " and ".join(f"{e}/" for e in empty),
                "split-folders": " and ".join(f"{split}/{e}/" for e in empty),
                "manifest": " and ".join(f"rows labelled {e}" for e in empty)
                + (f" with split {split}" if data.split_given else ""),
            }[data.layout]
            raise DataError(
                f"--data {data.source}: the {split} split has no {' and no '.join(empty)} images "
                f"(counts {data.counts()}); add images: {how}"
            )
