"""Errors raised by the detector package: one type per thing that can go wrong."""


class DetectorError(Exception):
    """Base class of every error the detector raises on purpose."""


class ImageDecodeError(DetectorError):
    """The bytes are not an image genscan can score (empty, truncated, unknown format,
    too many pixels, ...). The message says which."""


class CheckpointError(DetectorError):
    """A checkpoint is missing, malformed, or unsafe to load (e.g. it carries code)."""
