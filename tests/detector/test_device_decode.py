"""Decoding on the scoring device (detector.device_decode) cuts the same tiles as the CPU
path (detector.inference.prepare), and hands back to the CPU whatever it cannot decode
the same way. Run with device="cpu" (libjpeg-turbo through torchvision): no test needs a
GPU; on a GPU the same code runs nvJPEG."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from detector.device_decode import decode_on_device
from detector.inference import prepare
from detector.presets import get_preset

PRESET = get_preset("native", image_size=32, tile_size=64, max_tiles=4)


def picture(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    smooth = np.kron(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)), np.ones((8, 8, 1)))[:h, :w]
    return Image.fromarray(np.clip(smooth + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown turned 90 degrees clockwise
    return encode(picture(96, 40, 9), exif=exif.tobytes())


def test_jpegs_give_the_cpu_paths_tiles_and_sizes():
    blobs = [encode(picture(w, h, i), quality=q) for i, (w, h, q) in
             enumerate([(40, 30, 90), (64, 64, 75), (150, 97, 95), (300, 200, 60)])]
    blobs += [encode(picture(80, 60, 7).convert("L")), rotated_jpeg()]
    got = decode_on_device(blobs, PRESET, "cpu", max_pixels=10**6)
    for data, d in zip(blobs, got):
        assert d is not None
        tiles, boxes, view, width, height = d
        ref = prepare(data, PRESET)
        assert (width, height) == (ref.width, ref.height)
        np.testing.assert_array_equal(boxes, ref.boxes)
        assert tiles.dtype == torch.uint8 and torch.equal(tiles, ref.tiles)  # the model sees the same pixels
        assert view.shape == ref.view.shape and view.dtype == np.uint8
        assert np.abs(view.astype(int) - ref.view.astype(int)).mean() < 4  # the thumbnail base: close
    assert got[-1][3:] == (40, 96)  # EXIF orientation applied: 96 x 40 stored, 40 x 96 shown
    assert len(got[2][1]) > 1  # larger than a tile: several tiles


def test_what_the_device_cannot_decode_goes_back_to_the_cpu():
    cmyk = encode(picture(40, 30, 1).convert("CMYK"))
    garbage = b"\xff\xd8\xff\xe0" + bytes(200)
    whole = encode(picture(150, 97, 4))
    truncated = whole[: len(whole) // 2]  # libjpeg would fill the rest grey; PIL refuses it: so must we
    blobs = [encode(picture(40, 30, 2), "PNG"), cmyk, garbage, encode(picture(64, 64, 3)), b"%!PS-Adobe-3.0 EPSF",
             truncated]
    got = decode_on_device(blobs, PRESET, "cpu", max_pixels=10**6)
    assert [g is None for g in got] == [True, True, True, False, True, True]
    assert decode_on_device(blobs[3:4], PRESET, "cpu", max_pixels=64 * 64 - 1) == [None]  # over the bound
    assert decode_on_device(blobs[3:4], get_preset("baseline", image_size=32), "cpu", max_pixels=10**6) == [None]


def test_fetch_stage_on_device_matches_the_cpu_stage(tmp_path):
    from jobs.scan.fetch import fetch_and_prepare

    names = {"a.jpg": encode(picture(150, 97, 4)), "b.png": encode(picture(40, 30, 5), "PNG"),
             "c.jpg": b"\xff\xd8\xff\xe0" + bytes(50), "d.jpg": rotated_jpeg()}
    for n, b in names.items():
        (tmp_path / n).write_bytes(b)
    uris = [str(tmp_path / n) for n in names] + [str(tmp_path / "missing.jpg")]
    batch = {"uri": np.array(uris, dtype=object), "etag": np.array([None] * 5, dtype=object),
             "size_bytes": np.array([None] * 5, dtype=object)}
    args = {"preset": PRESET.to_dict(), "max_pixels": 10**6, "max_bytes": 10**6, "keep_view": True}
    cpu, dev = fetch_and_prepare(batch, **args), fetch_and_prepare(batch, **args, device="cpu")
    for k in ("width", "height", "format", "tiles_shape", "boxes", "size_bytes"):
        assert list(map(str, cpu[k])) == list(map(str, dev[k])), k
    assert [e.split(":")[0] for e in cpu["error"]] == [e.split(":")[0] for e in dev["error"]] == ["", "", "decode", "", "fetch"]
    assert isinstance(dev["tiles"][0], torch.Tensor) and isinstance(dev["tiles"][1], bytes)  # the PNG: CPU
    assert bytes(dev["tiles"][0].numpy().tobytes()) == cpu["tiles"][0]
