"""Bytes to scores and thumbnails through Detector and prepare()."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from detector.checkpoint import save_checkpoint
from detector.errors import ImageDecodeError
from detector.inference import Detector, prepare
from detector.presets import get_preset
from detector.thumbnail import render_thumbnail
from tests.helpers import encode, make_image


@pytest.mark.parametrize("preset_name", ["baseline", "native"])
def test_bytes_to_scores_and_thumbnails(model, tmp_path, preset_name):
    preset = get_preset(preset_name, image_size=64)
    save_checkpoint(tmp_path, model, preset=preset, threshold=0.5)
    det = Detector.from_path(tmp_path)
    images = [prepare(encode(make_image(w, h, seed=w), "JPEG"), preset, thumbnail_size=48) for w, h in [(80, 60), (50, 120)]]
    pixels = torch.stack([p.pixels for p in images])
    s = det.score(pixels)
    expected = torch.softmax(model(preset.normalize(pixels)), 1)[:, 0]
    torch.testing.assert_close(s.prob_fake, expected.detach(), atol=1e-4, rtol=1e-4)
    assert s.cam.shape == (2, 2, 2)
    for p, cam in zip(images, s.cam):
        assert max(p.view.shape[:2]) <= 48
        thumb = Image.open(io.BytesIO(render_thumbnail(p.view, cam)))
        assert thumb.format == "JPEG" and thumb.size == (p.view.shape[1], p.view.shape[0])


def test_heat_map_colours_follow_the_map():
    view = np.full((32, 32, 3), 128, np.uint8)
    cam = np.zeros((2, 2), np.float32)
    cam[0, 0] = 1.0  # hot top-left, cold bottom-right
    out = np.asarray(Image.open(io.BytesIO(render_thumbnail(view, cam))).convert("RGB")).astype(int)
    top_left, bottom_right = out[2, 2], out[-3, -3]
    assert top_left[0] > top_left[2] + 40  # red (hot)
    assert bottom_right[2] > bottom_right[0] + 40  # blue (cold)


def test_prepare_raises_decode_errors():
    with pytest.raises(ImageDecodeError):
        prepare(b"\xff\xd8garbage", get_preset("baseline"))
