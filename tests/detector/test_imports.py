"""detector/ is pure PyTorch: importing it must not load Ray, boto3 or pyarrow."""

import subprocess
import sys


def test_import_detector_loads_no_ray_boto3_or_pyarrow():
    code = (
        "import sys, detector, detector.inference, detector.explain, detector.checkpoint, detector.thumbnail; "
        "bad = [m for m in ('ray', 'boto3', 'botocore', 'pyarrow') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
