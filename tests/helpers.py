"""Helpers shared by test modules (test modules never import each other): tiny models,
images and labelled folders made on the spot, and the S3 server plumbing.

The hostile-file corpus lives in tests/corpus.py.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from detector.checkpoint import save_checkpoint
from detector.model import build_model
from detector.presets import get_preset
from jobs.demo.s3_server import SeaweedS3Server
from jobs.report import store as report_store
from jobs.report.schema import FILE_SCHEMA
from tests.corpus import ERROR, SCORED, make_corpus

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SD_COCO = SHARED_DATA / "sd-coco-dev"
HTML_NAME = "<img src=x onerror=alert(1)>.jpg"


def save_model(folder: Path, image_size: int = 64) -> Path:
    torch.manual_seed(0)
    model = build_model("none")
    with torch.no_grad():  # fake-minus-real weights > 0 on the (ReLU'd) features: heat maps not all zero
        model.fc.weight[0].uniform_(0.5, 1.5)
        model.fc.weight[1].uniform_(-1.5, -0.5)
    save_checkpoint(folder, model, preset=get_preset("baseline", image_size=image_size), threshold=0.5)
    return folder


def make_input(folder: Path) -> dict[str, str]:
    """The hostile corpus plus real and fake photos (copied from the shared data set when
    present, else made up): {relative path: "scored" | "error"}."""
    expected = make_corpus(folder, include_big_photo=False)
    for label in ("real", "fake"):
        (folder / label).mkdir()
        sources = sorted((SD_COCO / label).glob("*.jpg"))[:2] if SD_COCO.is_dir() else []
        for i in range(2):
            name = f"{label}/{label}_{i}.jpg"
            if sources:
                shutil.copyfile(sources[i], folder / name)
            else:
                Image.new("RGB", (96, 80), (40 * i, 90, 200)).save(folder / name, quality=90)
            expected[name] = SCORED
    (folder / HTML_NAME).write_bytes((folder / "real/real_0.jpg").read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    expected |= {HTML_NAME: SCORED, "broken.jpg": ERROR}
    return expected


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def image_bytes(fake: bool, seed: int, size: int = 32) -> bytes:
    """A smooth random picture; ``fake`` ones carry bright horizontal stripes, which
    ResNet18 learns in an epoch or two."""
    rng = np.random.default_rng(seed * 2 + int(fake))
    small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    a = np.asarray(small.resize((size, size), Image.Resampling.BILINEAR)).astype(np.int16)
    if fake:
        a[::2] += 60
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_folders(root: Path, n: int = 10, *, split: bool = False, nested: bool = True) -> Path:
    """``root/{real,fake}/`` (half of them one or two folders deeper), or with ``split``
    ``root/{train,validation}/{real,fake}/`` with a quarter in validation."""
    for label in ("real", "fake"):
        for i in range(n):
            sub = ["a", "a/b"][i % 2] if nested and i % 3 else ""
            if split:
                sub = "validation" if i % 4 == 0 else "train"
                folder = root / sub / label
            else:
                folder = root / label / sub
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{label}{i}.png").write_bytes(image_bytes(label == "fake", i))
    return root


def terminate(process: subprocess.Popen, timeout_s: float = 10) -> None:
    """SIGTERM ``process``, then SIGKILL it if it is still there after ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets process ``pid`` listens on, read from /proc."""
    fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    inodes = {fd[len("socket:["):-1] for fd in fds if fd.startswith("socket:[")}
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()  # local address, ..., state (0A: LISTEN), ..., inode
            if fields[3] == "0A" and fields[9] in inodes:
                address, port = fields[1].split(":")
                if len(address) == 8:  # IPv4, little-endian hex
                    address = ".".join(str(int(address[i - 2:i], 16)) for i in (8, 6, 4, 2))
                found.add((address, int(port, 16)))
    return found


@contextmanager
def s3_server_before_ray(data_dir: Path, request: pytest.FixtureRequest, **server: Any) -> Iterator[SeaweedS3Server]:
    """A module's own S3 server (``server``: SeaweedS3Server options), its AWS_* set before
    the module's Ray starts so that Ray's workers inherit them, as a cluster's nodes would;
    unset and stopped afterwards. For modules that restart the server or need their own
    credentials; others share the session's ``s3_server``."""
    s3 = SeaweedS3Server(data_dir, **server).start()
    patch = pytest.MonkeyPatch()
    try:
        use_s3_server(s3, patch)
        request.getfixturevalue("ray_local")
        yield s3
    finally:
        patch.undo()
        s3.stop()


def use_s3_server(server: SeaweedS3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the AWS_* variables at ``server`` (every other AWS_* removed). Set them before
    a module starts Ray and its worker processes inherit them, as a cluster's nodes would."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    env = server.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def make_image(width=64, height=48, mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return rgb if mode == "RGB" else rgb.convert(mode)


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def upsample_cam(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) maps -> (B, H, W), bilinear with half-pixel centres (as cv2.resize), then
    each map rescaled to [0, 1] again, as pytorch-grad-cam does after its resize."""
    up = F.interpolate(cam.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]
    up = up - up.flatten(1).min(dim=1).values.view(-1, 1, 1)
    return up / (up.flatten(1).max(dim=1).values.view(-1, 1, 1) + 1e-7)


def rewrite_checkpoint(path: Path, *, weights: Any = None, **meta: Any) -> Path:
    """Rewrite the checkpoint at ``path`` with metadata entries replaced (and, when given,
    ``weights(state)`` applied to its tensors), its model_version recomputed: a checkpoint
    that jobs.train never wrote but whose hash is right, as an attacker or a bug makes one."""
    import json

    from safetensors.torch import load_file, save_file

    from detector.checkpoint import model_version, read_meta

    file = path / "model.safetensors" if path.is_dir() else path
    record, state = read_meta(file), load_file(str(file))
    if weights is not None:
        weights(state)
    record.update(meta)
    record["model_version"] = model_version(state, record)
    save_file(state, str(file), metadata={"genscan": json.dumps(record)})
    return path


def small_images(folder: Path, n: int = 3, prefix: str = "img") -> list[Path]:
    """``n`` small JPEGs ``<prefix><i>.jpg`` in ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{prefix}{i}.jpg" for i in range(n)]
    for i, p in enumerate(paths):
        make_image(40, 32, seed=i).save(p, quality=90)
    return paths


def jpeg(color: tuple[int, int, int], size: int = 24) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, format="JPEG")
    return out.getvalue()


def publish_synthetic(output: str, scan_id: str, day: date, uris: list[str], *, seed: int,
                      errors: int = 1, threshold: float = 0.5, thumbnails: bool = True,
                      row_group_size: int | None = None) -> pa.Table:
    """Publish one scan of ``uris`` in the exact report schema; the last ``errors`` are error rows."""
    rng = np.random.default_rng(seed)
    n = len(uris)
    ok = np.arange(n) < n - errors
    score = np.where(ok, rng.random(n), np.nan).astype(np.float32)
    flagged = [bool(s >= threshold) if o else None for s, o in zip(score, ok)]
    thumb = jpeg((200, 40, 40)) if thumbnails else None
    table = pa.table({
        "uri": uris, "etag": [f"e{i}" for i in range(n)], "size_bytes": [1000 + i for i in range(n)],
        "width": [64 if o else None for o in ok], "height": [48 if o else None for o in ok],
        "format": ["JPEG" if o else None for o in ok],
        "label": [None if f is None else ("fake" if f else "real") for f in flagged],
        "score": [float(s) if o else None for s, o in zip(score, ok)], "flagged": flagged,
        "threshold": [threshold] * n, "thumbnail": [thumb if o else None for o in ok],
        "cam": [[0.0, 0.5, 1.0, 0.25] if o else None for o in ok],
        "cam_width": [2 if o else None for o in ok],
        "model_version": [f"sha256-{seed:016x}"] * n,
        "error": [None if o else ("decode: cannot identify image file" if i % 2 else "fetch: timed out")
                  for i, o in enumerate(ok)],
        "scanned_at": [datetime(day.year, day.month, day.day, 3, tzinfo=timezone.utc)] * n,
    }, schema=FILE_SCHEMA)
    loc = report_store.ScanLocation(output, scan_id, day)
    staged = Path(loc.staged_data_uri)
    staged.mkdir(parents=True)
    pq.write_table(table.slice(0, n // 2), staged / "part-00000.parquet", row_group_size=row_group_size)
    pq.write_table(table.slice(n // 2), staged / "part-00001.parquet", row_group_size=row_group_size)
    record = {"model_version": f"sha256-{seed:016x}", "threshold": threshold, "rows": n}
    report_store.publish(loc, ["part-00000.parquet", "part-00001.parquet"], record)
    return table
