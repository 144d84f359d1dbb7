"""Decode untrusted image bytes into an RGB picture, or fail with ImageDecodeError.

Bytes come from buckets and are hostile until proven otherwise: the pixel count is
checked from the header before any pixel is decoded (decompression bombs), EXIF
orientation is applied (phones store portraits sideways), every PIL mode becomes 8-bit
RGB (transparency composited on white), animations give their first frame. Only the
formats the listing counts are parsed at all (``ALLOWED_FORMATS``): PIL would otherwise try
its ~43 plugins, among them EPS, which hands the bytes to Ghostscript (an external
program with a long record of sandbox escapes). Every opening of untrusted bytes in the
project goes through ``open_image``.

    python -c "from detector.decode import decode_image; print(decode_image(open('x.jpg','rb').read()))"
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detector.errors import ImageDecodeError

#: The PIL formats that may be parsed: those of jobs.storage.IMAGE_EXTENSIONS, and MPO
#: (the JPEG multi-picture files of phones, which PIL's JPEG opener returns as "MPO").
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_OPENERS = tuple(f for f in ALLOWED_FORMATS if f != "MPO")  # PIL has no MPO opener of its own
# 100 megapixels: a 48 MP phone photo passes; a 50,000 x 50,000 "bomb" does not.
DEFAULT_MAX_PIXELS = 100_000_000
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # mode "RGB", EXIF orientation applied
    format: str  # PIL's format name: JPEG, PNG, WEBP, GIF, TIFF, BMP, ...
    width: int  # after EXIF orientation
    height: int


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> DecodedImage:
    """Decode ``data`` to RGB. Raises ImageDecodeError saying what was wrong. (Long: one
    ``try`` must cover every PIL call, whose plugins raise a zoo of exception types.)

    ``draft_size``: for a JPEG at least twice as large on both sides, let the decoder
    scale it down by 1/2, 1/4 or 1/8 in the DCT (PIL ``Image.draft``), keeping both sides
    at least ``draft_size``: several times less decoding for a caller that shrinks the
    picture anyway. ``image`` is then smaller than ``width`` x ``height``, which stay the
    file's own size."""
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL warns (DecompressionBombWarning) and errors at its own global limit;
            # our own bound below is the one that applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = open_image(data)
            fmt = img.format or "UNKNOWN"
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageDecodeError(f"{fmt} header has an empty size {width}x{height}")
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"{fmt} image is {width}x{height} = {width * height:,} pixels, over the "
                    f"limit of {max_pixels:,} (possible decompression bomb; raise "
                    f"--max-pixels to accept it)"
                )
            img.seek(0)  # first frame of animated GIF/WebP/APNG/multi-page TIFF
            drafted = (draft_size is not None and fmt == "JPEG"
                       and min(width, height) >= 2 * draft_size
                       and img.draft(None, (draft_size, draft_size)) is not None)
            stored = img.size  # after draft(): the reduced size the decoder will produce
            orientation = img.getexif().get(0x0112, 1) if drafted else 1
            img.load()
            img = _apply_orientation(img)
            rgb = _to_rgb(img)
            size = rgb.size
            if drafted:  # report the file's own size, turned as the picture was turned
                # (a draft can round a near-square picture to a square: ask EXIF then)
                turned = orientation in (5, 6, 7, 8) if stored[0] == stored[1] else rgb.size != stored
                size = (height, width) if turned else (width, height)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        # PIL's own guard (2x Image.MAX_IMAGE_PIXELS) fired before ours could.
        raise ImageDecodeError(f"image is over the limit of pixels PIL accepts, a possible decompression bomb: {e}") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError,
            TypeError, ZeroDivisionError, MemoryError, RuntimeError, struct.error) as e:
        # PIL's plugins raise a zoo of types for corrupt data ("image file is truncated",
        # "broken data stream", "cannot identify", struct.error, ...).
        raise ImageDecodeError(f"corrupt or unsupported image data: {type(e).__name__}: {e}") from None
    return DecodedImage(image=rgb, format=fmt, width=size[0], height=size[1])


def open_image(data: bytes) -> Image.Image:
    """``Image.open`` of ``data`` (lazy: the header is read, no pixels), restricted to
    ``ALLOWED_FORMATS``; ImageDecodeError for anything else (EPS, PDF, PSD, ICO, ...)."""
    try:
        img = Image.open(io.BytesIO(data), formats=_OPENERS)
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not a recognised image format (only {', '.join(ALLOWED_FORMATS)} are decoded)") from None
    if img.format not in ALLOWED_FORMATS:  # a plugin's factory could hand back another class
        img.close()
        raise ImageDecodeError(f"{img.format} images are not decoded (only {', '.join(ALLOWED_FORMATS)})")
    return img


def _apply_orientation(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img) or img
    except Exception:  # a malformed EXIF block must not lose the picture itself
        return img


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img))).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in img.info
    ) or (mode in ("L", "RGB") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """16/32-bit integer or float grey levels to 0..255."""
    a = a.astype(np.float64)
    if a.size == 0:
        return a.astype(np.uint8)
    hi = float(a.max())
    if hi <= 1.0:
        scale = 255.0  # float images in [0, 1]
    elif hi <= 255.0:
        scale = 1.0
    else:
        scale = 255.0 / 65535.0  # 16-bit range (PNG/TIFF 16-bit grey decode to I;16 or I)
    return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
