"""Bytes to scores and thumbnails through prepare() and the detector: tiles combine exactly
as one fully convolutional pass, and the heat map covers the whole picture."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from detector.checkpoint import save_checkpoint
from detector.errors import ImageDecodeError
from detector.inference import Detector, prepare, score_images
from detector.model import build_model
from detector.presets import get_preset
from detector.thumbnail import render_thumbnail
from tests.helpers import encode, make_image


@pytest.mark.parametrize("preset_name", ["baseline", "native"])
def test_bytes_to_scores_and_thumbnails(model, tmp_path, preset_name):
    preset = get_preset(preset_name, image_size=64)
    save_checkpoint(tmp_path, model, preset=preset, threshold=0.5)
    det = Detector.from_path(tmp_path)
    images = [prepare(encode(make_image(w, h, seed=w), "PNG"), preset, thumbnail_size=48) for w, h in [(80, 64), (64, 128)]]
    scores = det.score(images)
    for p, s in zip(images, scores):
        expected = torch.softmax(model(preset.normalize(p.tiles)).mean(0), 0)[0]  # one tile each here
        assert s.prob_fake == pytest.approx(float(expected), abs=1e-4)
        assert s.cam.min() >= 0 and s.cam.max() <= 1 and s.cam.ndim == 2
        assert max(p.view.shape[:2]) <= 48
        thumb = Image.open(io.BytesIO(render_thumbnail(p.view, s.cam)))
        assert thumb.format == "JPEG" and thumb.size == (p.view.shape[1], p.view.shape[0])


@pytest.mark.parametrize("arch", ["resnet18", "resnet18-npr"])
def test_tiles_combine_exactly_like_one_pass_over_the_picture(arch):
    """A picture in two tiles: its logits are the head applied to the mean of the tiles'
    pooled features (global average pooling is linear), and its heat map spans both."""
    torch.manual_seed(0)
    model = build_model("none", arch=arch).eval()
    preset = get_preset("native", image_size=32, tile_size=64, max_tiles=4)
    img = make_image(128, 64)
    tiles, boxes = preset.prepare(img)
    assert len(tiles) == 2
    [s] = score_images(model, preset, [(tiles, boxes, 128, 64)])
    with torch.no_grad():
        pooled = model.features(preset.normalize(tiles)).mean(dim=(2, 3)).mean(0)
        expected = torch.softmax(model.fc(pooled), 0)[0]
    assert s.prob_fake == pytest.approx(float(expected), abs=1e-5)
    stride = model.spec.stride
    assert s.cam.shape == (64 // stride, 128 // stride)  # the whole picture, one cell per stride


def test_small_pictures_are_scored_at_their_own_size(model):
    preset = get_preset("native", image_size=96)
    p = prepare(encode(make_image(40, 36), "PNG"), preset)
    assert p.tiles.shape == (1, 3, 36, 40)  # no padding to 96, no up-sampling
    [s] = score_images(model.eval(), preset, [(p.tiles, p.boxes, p.width, p.height)])
    assert 0 <= s.prob_fake <= 1


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
