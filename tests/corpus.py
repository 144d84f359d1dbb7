"""A corpus of hostile and odd image files, made on the spot, for scan tests.

``make_corpus(folder)`` writes one file per kind and returns ``{relative path: expected}``
where expected is ``"scored"`` (a valid image the scan must score) or ``"error"`` (the
scan must give an error row that says why). Every file must get exactly one row.

    python -c "from tests.corpus import make_corpus; print(make_corpus(__import__('pathlib').Path('/tmp/corpus')))"
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SCORED, ERROR = "scored", "error"


def _rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, h // 4), max(1, w // 4), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG header claiming width x height pixels, in about 100 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def big_photo(megapixels: int = 48) -> bytes:
    """A JPEG of about ``megapixels`` MP (8000 x 6000 for 48), smooth so it stays small."""
    w = int((megapixels * 1e6 * 4 / 3) ** 0.5) // 16 * 16
    h = w * 3 // 4
    return _bytes(_rgb(w // 16, h // 16).resize((w, h), Image.Resampling.BILINEAR), "JPEG", quality=70)


def make_corpus(folder: Path, *, include_big_photo: bool = True) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    base = _rgb(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    p_transparent = base.convert("P")
    p_transparent.info["transparency"] = 0
    frames = [_rgb(32, 32, s) for s in range(3)]
    anim = io.BytesIO()
    frames[0].save(anim, format="GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    i16 = Image.fromarray((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21))
    jpeg = _bytes(base, "JPEG", quality=90)
    files: dict[str, tuple[bytes, str]] = {
        "ok/plain.jpg": (jpeg, SCORED),
        "ok/progressive.jpg": (_bytes(base, "JPEG", progressive=True, quality=85), SCORED),
        "ok/cmyk.jpg": (_bytes(base.convert("CMYK"), "JPEG"), SCORED),
        "ok/grey16.png": (_bytes(i16, "PNG"), SCORED),
        "ok/one-bit.png": (_bytes(base.convert("1"), "PNG"), SCORED),
        "ok/palette-transparent.png": (_bytes(p_transparent, "PNG"), SCORED),
        "ok/alpha.png": (_bytes(rgba, "PNG"), SCORED),
        "ok/grey-alpha.png": (_bytes(base.convert("LA"), "PNG"), SCORED),
        "ok/one-pixel.png": (_bytes(_rgb(1, 1), "PNG"), SCORED),
        "ok/tall-1x900.png": (_bytes(_rgb(1, 900), "PNG"), SCORED),
        "ok/wide-2000x2.png": (_bytes(_rgb(2000, 2), "PNG"), SCORED),
        "ok/animated.gif": (anim.getvalue(), SCORED),
        "ok/image.webp": (_bytes(base, "WEBP"), SCORED),
        "ok/image.bmp": (_bytes(base, "BMP"), SCORED),
        "ok/image.tiff": (_bytes(base, "TIFF"), SCORED),
        "ok/exif-rotated.jpg": (_bytes(base, "JPEG", exif=exif.tobytes()), SCORED),
        "ok/UPPER.JPG": (jpeg, SCORED),
        "ok/Mixed.JpEg": (jpeg, SCORED),
        "names/ünïcødé ✓ 图片.jpg": (jpeg, SCORED),
        "names/with spaces and 'quotes' \"too\".jpg": (jpeg, SCORED),
        "names/<img src=x onerror=alert(1)>.jpg": (jpeg, SCORED),
        "names/..dots..jpg": (jpeg, SCORED),
        "deep/" + "/".join(f"level{i}" for i in range(12)) + "/deep.png": (_bytes(base, "PNG"), SCORED),
        "bad/zero-bytes.jpg": (b"", ERROR),
        "bad/truncated.jpg": (jpeg[: len(jpeg) // 3], ERROR),
        "bad/truncated-progressive.jpg": (_bytes(base, "JPEG", progressive=True)[:400], ERROR),
        "bad/not-an-image.png": (b"<html><body>this is not a PNG</body></html>" * 20, ERROR),
        "bad/random-bytes.webp": (np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes(), ERROR),
        "bad/decompression-bomb.png": (png_bomb(), ERROR),
        "bad/png-header-only.png": (b"\x89PNG\r\n\x1a\n", ERROR),
    }
    if include_big_photo:
        files["ok/camera-48mp.jpg"] = (big_photo(48), SCORED)
    for rel, (data, _) in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    # Not images by extension: must not be listed at all.
    (folder / "notes.txt").write_text("not an image")
    (folder / "ok" / "README").write_text("no extension")
    return {rel: expected for rel, (_, expected) in files.items()}


def foreign_formats() -> dict[str, bytes]:
    """``{format: bytes}`` of formats PIL reads but the scan must never parse, each to be
    stored under an image name (the listing goes by names; uploaders choose them): EPS
    (PIL hands it to Ghostscript), PDF, PSD, ICO, and every other PIL format that can be
    written here."""
    base = _rgb(16, 16)
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n"
           b"%%EndComments\n0 0 moveto 16 16 lineto stroke showpage\n%%EOF\n")
    # The DOS EPS binary header: magic, PostScript offset/length, no WMF/TIFF preview.
    eps_binary = b"\xc5\xd0\xd3\xc6" + struct.pack("<IIIIIIH", 30, len(eps), 0, 0, 0, 0, 0xFFFF) + eps
    # A 16x16 RGB Photoshop file: header, empty colour mode/resources/layers, raw data.
    psd = (b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 16, 16, 8, 3) + struct.pack(">III", 0, 0, 0)
           + struct.pack(">H", 0) + bytes(3 * 16 * 16))
    out = {"EPS": eps, "EPS-binary": eps_binary, "PSD": psd,
           "SVG": b'<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16"/>'}
    for fmt in ("PDF", "ICO", "PCX", "PPM", "TGA", "SGI", "IM", "DDS", "QOI", "BLP", "ICNS",
                "SPIDER", "MSP", "XBM", "JPEG2000", "DIB", "EPS-written"):
        image = base.convert("1") if fmt in ("MSP", "XBM") else base.convert("F") if fmt == "SPIDER" else base
        try:
            out[fmt] = _bytes(image, fmt.removesuffix("-written"))
        except (KeyError, OSError, ValueError):  # a codec this PIL lacks: nothing to test
            continue
    return out


def stand_in_program(bin_dir: Path, name: str, log: Path) -> Path:
    """An executable ``bin_dir/name`` that appends its arguments to ``log``, answers
    ``--version`` (as PIL asks Ghostscript first) and fails otherwise: put ``bin_dir``
    first on PATH to prove that ``name`` (e.g. Ghostscript's ``gs``) is never run."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    program = bin_dir / name
    program.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n'
                       '[ "$1" = --version ] && { echo 10.02.1; exit 0; }\nexit 1\n')
    program.chmod(0o755)
    return program
