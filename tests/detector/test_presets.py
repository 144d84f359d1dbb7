"""Presets reproduce the original recipe exactly and survive a round trip through JSON."""

import json

import pytest
import torch
from torchvision import transforms

from detector.presets import PRESETS, get_preset, preset_from_dict
from tests.helpers import make_image


def test_baseline_eval_is_the_original_transform():
    original = transforms.Compose([
        transforms.Resize((224, 224)),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    img = make_image(300, 170)
    torch.testing.assert_close(get_preset("baseline").eval_transform(img), original(img), atol=1e-6, rtol=0)


def test_baseline_train_is_the_original_transform_up_to_the_flip():
    original = transforms.Compose([
        transforms.Resize((224, 224)),
        transforms.RandomHorizontalFlip(p=1.0),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    img = make_image(120, 90)
    flipped = get_preset("baseline", hflip_prob=1.0).train_transform(img)
    torch.testing.assert_close(flipped, original(img), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    p = get_preset(name, image_size=32)
    assert preset_from_dict(json.loads(json.dumps(p.to_dict()))) == p


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("size", [(20, 10), (64, 64), (300, 90)])
def test_every_image_size_gives_the_model_size(name, size):
    p = get_preset(name, image_size=32)
    img = make_image(*size)
    assert p.prepare(img).shape == (3, 32, 32) and p.prepare(img).dtype == torch.uint8
    assert p.train_transform(img).shape == (3, 32, 32)
    left, top, right, bottom = p.view_box(*size)
    assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]


def test_native_crop_keeps_pixels_unresampled():
    img = make_image(100, 80)
    x = get_preset("native", image_size=32).prepare(img)
    left, top = (100 - 32) // 2, (80 - 32) // 2
    expected = torch.from_numpy(__import__("numpy").asarray(img)[top:top + 32, left:left + 32]).permute(2, 0, 1)
    assert torch.equal(x, expected)


def test_unknown_preset_and_parameter_fail_clearly():
    with pytest.raises(ValueError, match="unknown preset 'fancy'; choose one of"):
        get_preset("fancy")
    with pytest.raises(ValueError, match="has no parameter"):
        get_preset("baseline", crop=3)


def test_native_scores_a_larger_centre_crop_than_it_trains_on():
    p = get_preset("native", image_size=32, eval_size=64)
    assert p.input_size == 64 and get_preset("native", image_size=32).input_size == 32
    img = make_image(100, 80)
    assert p.train_transform(img).shape == (3, 32, 32)
    x = p.prepare(img)
    left, top, right, bottom = p.view_box(100, 80)
    assert (left, top, right, bottom) == (18, 8, 82, 72)
    expected = torch.from_numpy(__import__("numpy").array(img)[top:bottom, left:right]).permute(2, 0, 1)
    assert torch.equal(x, expected)
    # smaller than eval_size: padded, and the view box stays inside the picture
    assert p.prepare(make_image(40, 20)).shape == (3, 64, 64) and p.view_box(40, 20) == (0, 0, 40, 20)
    assert preset_from_dict(json.loads(json.dumps(p.to_dict()))) == p
