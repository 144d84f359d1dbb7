"""A decode corpus: every mode, orientation and breakage gives RGB or ImageDecodeError."""

import io
import os
import struct
import subprocess
import zlib

import numpy as np
import pytest
from PIL import Image

from detector.decode import ALLOWED_FORMATS, decode_image, open_image
from detector.errors import ImageDecodeError
from tests.corpus import foreign_formats, stand_in_program
from tests.helpers import encode, make_image

FOREIGN = foreign_formats()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one tiny IDAT: a decompression bomb shape."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _modes():
    base = make_image(40, 30)
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.new("L", base.size, 0))  # fully transparent: must come out white
    p_transparent = base.convert("P")
    p_transparent.info["transparency"] = 0
    i16 = Image.fromarray((np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50))
    return {
        "RGB-jpeg": encode(base, "JPEG"),
        "L": encode(base.convert("L"), "PNG"),
        "LA": encode(base.convert("LA"), "PNG"),
        "1-bit": encode(base.convert("1"), "PNG"),
        "P": encode(base.convert("P"), "PNG"),
        "P-transparency": encode(p_transparent, "PNG"),
        "RGBA": encode(rgba, "PNG"),
        "CMYK-jpeg": encode(base.convert("CMYK"), "JPEG"),
        "I;16-png": encode(i16, "PNG"),
        "I;16-tiff": encode(i16, "TIFF"),
        "webp": encode(base, "WEBP"),
        "bmp": encode(base, "BMP"),
        "gif": encode(base.convert("P"), "GIF"),
    }


@pytest.mark.parametrize("name,data", list(_modes().items()))
def test_every_mode_decodes_to_rgb(name, data):
    out = decode_image(data)
    assert out.image.mode == "RGB"
    assert (out.width, out.height) == (40, 30) == out.image.size
    assert out.format in {"JPEG", "PNG", "TIFF", "WEBP", "BMP", "GIF"}


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    out = decode_image(encode(rgba, "PNG")).image
    assert np.asarray(out).min() == 255  # fully transparent red -> white


def test_16_bit_grey_keeps_its_range():
    i16 = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert np.asarray(decode_image(encode(i16, "PNG")).image).min() == 255


def test_exif_orientation_is_applied():
    img = make_image(60, 20)  # landscape pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a portrait photo stored sideways
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert (out.width, out.height) == (20, 60)


def test_first_frame_of_animation():
    frames = [Image.new("RGB", (10, 10), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    px = np.asarray(decode_image(buf.getvalue()).image)[0, 0]
    assert px[0] > 200 and px[2] < 50  # red, the first frame


@pytest.mark.parametrize(
    "name,data,message",
    [
        ("empty", b"", "empty"),
        ("text", b"hello, I am not an image at all" * 10, "not a recognised image"),
        ("truncated-jpeg", encode(make_image(64, 64), "JPEG")[:300], "corrupt"),
        ("truncated-png", encode(make_image(64, 64), "PNG")[:200], "corrupt"),
        ("png-magic-only", b"\x89PNG\r\n\x1a\n", ""),
    ],
)
def test_broken_bytes_raise_decode_error(name, data, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data)


def test_oversized_header_is_refused_before_decoding():
    bomb = _png_header_only(60_000, 60_000)  # 3.6 gigapixels claimed by a ~100-byte file
    assert len(bomb) < 200
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image(bomb)


def test_pixel_limit_is_configurable():
    data = encode(make_image(100, 100), "PNG")
    assert decode_image(data, max_pixels=10_000).width == 100
    with pytest.raises(ImageDecodeError, match="max-pixels"):
        decode_image(data, max_pixels=9_999)


@pytest.mark.parametrize("size,orientation", [((1200, 500), 1), ((1200, 500), 6), ((1000, 999), 8)])
def test_jpeg_draft_decodes_smaller_but_reports_the_file_size(size, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(make_image(*size), "JPEG", exif=exif.tobytes())
    full = decode_image(data)
    drafted = decode_image(data, draft_size=200)
    assert (drafted.width, drafted.height) == (full.width, full.height)
    turned = orientation in (5, 6, 7, 8)
    assert (full.width, full.height) == ((size[1], size[0]) if turned else size)
    assert min(drafted.image.size) >= 200 and drafted.image.width < full.width
    # the picture is the same one, only smaller: same orientation, similar content
    assert (drafted.image.width > drafted.image.height) == (full.width > full.height) or size[0] - size[1] < 5


def test_draft_is_not_used_for_small_jpegs_or_other_formats():
    small = encode(make_image(300, 300), "JPEG")
    assert decode_image(small, draft_size=200).image.size == (300, 300)
    png = encode(make_image(1000, 800), "PNG")
    assert decode_image(png, draft_size=200).image.size == (1000, 800)


@pytest.fixture
def ghostscript_log(tmp_path, monkeypatch):
    """A stand-in ``gs`` first on PATH that logs each run; PIL's cached lookup reset."""
    from PIL import EpsImagePlugin

    log = tmp_path / "gs.log"
    stand_in_program(tmp_path / "bin", "gs", log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None, raising=False)
    monkeypatch.setattr(EpsImagePlugin, "gs_windows_binary", None, raising=False)
    return log


@pytest.mark.parametrize("fmt", sorted(FOREIGN))
def test_formats_outside_the_allow_list_are_refused_and_ghostscript_never_runs(fmt, ghostscript_log):
    with pytest.raises(ImageDecodeError, match="not a recognised image format"):
        decode_image(FOREIGN[fmt])
    with pytest.raises(ImageDecodeError):
        open_image(FOREIGN[fmt])
    assert not ghostscript_log.exists(), ghostscript_log.read_text()


def test_the_eps_probe_would_see_ghostscript_run(ghostscript_log):
    """The stand-in works: PIL unrestricted does run it on the same EPS bytes."""
    with pytest.raises(subprocess.CalledProcessError):  # the stand-in fails the conversion
        Image.open(io.BytesIO(FOREIGN["EPS"])).load()
    assert "gs " in ghostscript_log.read_text()


def test_every_allowed_format_and_mpo_still_decode():
    base = make_image(40, 30)
    mpo = io.BytesIO()
    base.save(mpo, format="MPO", save_all=True, append_images=[make_image(40, 30, seed=1)])
    data = {"MPO": mpo.getvalue(), **{f: encode(base, f) for f in ALLOWED_FORMATS if f != "MPO"}}
    assert {f: decode_image(b).format for f, b in data.items()} == {f: f for f in data}
