"""genscan's detector: pure PyTorch model work, no Ray, no storage clients.

Takes local paths, bytes and arrays; never ``s3://``. The jobs in ``jobs/`` build on it.

    python -c "import detector, sys; assert 'ray' not in sys.modules"
"""

from detector.errors import CheckpointError, DetectorError, ImageDecodeError
from detector.model import CLASSES, FAKE, REAL, build_model

__all__ = [
    "CLASSES",
    "FAKE",
    "REAL",
    "CheckpointError",
    "DetectorError",
    "ImageDecodeError",
    "build_model",
]
