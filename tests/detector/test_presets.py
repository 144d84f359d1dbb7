"""Presets reproduce the original recipe exactly, never pad, cover the picture, bound their
parameters, and survive a round trip through JSON."""

import json
import random

import numpy as np
import pytest
import torch
from torchvision import transforms

from detector.presets import PRESETS, get_preset, preset_from_dict, squash_like_a_photo
from tests.helpers import make_image

ORIGINAL_NORMALIZE = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def test_baseline_eval_is_the_original_transform():
    original = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(), ORIGINAL_NORMALIZE])
    img = make_image(300, 170)
    p = get_preset("baseline")
    tiles, boxes = p.prepare(img)
    assert tiles.shape == (1, 3, 224, 224) and boxes.tolist() == [[0, 0, 300, 170]]
    torch.testing.assert_close(p.normalize(tiles)[0], original(img), atol=1e-6, rtol=0)


def test_baseline_train_is_the_original_transform_up_to_the_flip():
    original = transforms.Compose([transforms.Resize((224, 224)), transforms.RandomHorizontalFlip(p=1.0),
                                   transforms.ToTensor(), ORIGINAL_NORMALIZE])
    img = make_image(120, 90)
    p = get_preset("baseline", hflip_prob=1.0)
    torch.testing.assert_close(p.normalize(p.train_crop(img)[None])[0], original(img), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    p = get_preset(name, image_size=32)
    assert preset_from_dict(json.loads(json.dumps(p.to_dict()))) == p


@pytest.mark.parametrize("size", [(20, 10), (32, 32), (300, 90), (513, 400), (1024, 1024), (3000, 2000)])
def test_native_scores_the_picture_at_native_resolution_without_padding(size):
    p = get_preset("native", image_size=32, tile_size=512, max_tiles=4)
    img = make_image(*size)
    pixels = torch.from_numpy(np.asarray(img)).permute(2, 0, 1)
    tiles, boxes = p.prepare(img)
    assert tiles.shape[1:] == (3, min(512, size[1]), min(512, size[0])) and len(tiles) <= 4
    for tile, (left, top, right, bottom) in zip(tiles, boxes.tolist()):
        assert left % 8 == 0 and top % 8 == 0 and right <= size[0] and bottom <= size[1]
        assert torch.equal(tile, pixels[:, top:bottom, left:right])  # the picture's own pixels: no pad, no resample
    covered = np.zeros(size[::-1], bool)
    for left, top, right, bottom in boxes.tolist():
        covered[top:bottom, left:right] = True
    if size[0] <= 1024 and size[1] <= 1024:  # what 4 tiles of 512 can cover, they cover (up to 7 px of rounding)
        assert covered[: size[1] - 7, : size[0] - 7].all()
    else:  # larger: tiles spread over the picture, corners included
        assert covered[0, 0] and covered[-1 - 7, -1 - 7]


def test_native_training_crops_are_bounded_by_the_picture_not_padded():
    p = get_preset("native", image_size=96, jpeg_prob=0.0, blur_prob=0.0, hflip_prob=0.0)
    rng = random.Random(0)
    assert p.train_crop(make_image(32, 32), rng).shape == (3, 32, 32)  # CIFAR-sized: the whole picture
    assert p.train_crop(make_image(300, 200), rng).shape == (3, 96, 96)
    img = make_image(300, 200)
    pixels = np.asarray(img).transpose(2, 0, 1)
    crop = p.train_crop(img, rng).numpy()
    found = [(y, x) for y in range(0, 200 - 95) for x in range(0, 300 - 95)
             if (pixels[:, y:y + 96, x:x + 96] == crop).all()]
    assert found and all(y % 2 == 0 and x % 2 == 0 for y, x in found)  # unresampled, on NPR's 2x2 grid


def test_resample_scale_above_one_up_scales_the_region():
    img = make_image(300, 200)
    off = dict(image_size=96, jpeg_prob=0.0, blur_prob=0.0, hflip_prob=0.0, resample_prob=1.0)

    def roughness(scale: float) -> float:  # mean neighbouring-pixel difference: interpolation smooths it
        crop = get_preset("native", resample_scale=(scale, scale), **off).train_crop(img, random.Random(0))
        assert crop.shape == (3, 96, 96)
        return float((crop[:, :, 1:].float() - crop[:, :, :-1].float()).abs().mean())

    assert roughness(2.0) < roughness(1.5) < 0.8 * roughness(1.0)
    with pytest.raises(ValueError, match="resample_scale"):
        get_preset("native", resample_scale=(0.5, 2.5))


def test_squash_fake_prob_processes_fake_crops_only_and_keeps_the_jpeg_grid():
    img = make_image(300, 200)
    pixels = np.asarray(img).transpose(2, 0, 1)
    off = dict(image_size=96, jpeg_prob=0.0, blur_prob=0.0, hflip_prob=0.0, resample_prob=0.0)
    on = get_preset("native", squash_fake_prob=1.0, **off)

    def unresampled(crop):
        return any((pixels[:, y:y + 96, x:x + 96] == crop).all() for y in range(0, 105, 2) for x in range(0, 205, 2))

    real = on.train_crop(img, random.Random(0), fake=False).numpy()
    assert unresampled(real)  # reals are never squashed
    fake = on.train_crop(img, random.Random(0), fake=True).numpy()
    assert fake.shape == (3, 96, 96) and not unresampled(fake)
    # probability 0 takes the same random draws as a preset without the option: old recipes reproduce
    plain = get_preset("native", **off)
    for fake_label in (False, True):
        a = plain.train_crop(img, random.Random(3), fake=fake_label)
        torch.testing.assert_close(a, get_preset("native", squash_fake_prob=0.0, **off).train_crop(
            img, random.Random(3), fake=fake_label))


def test_squash_like_a_photo_keeps_the_size_and_is_reproducible():
    region = make_image(112, 112)
    out = squash_like_a_photo(region, random.Random(1))
    assert out.size == region.size and out.mode == "RGB"
    assert np.abs(np.asarray(out, np.int16) - np.asarray(region, np.int16)).mean() > 1  # it did process
    assert out.tobytes() == squash_like_a_photo(region, random.Random(1)).tobytes()  # the seed decides it


@pytest.mark.parametrize("params, words", [
    ({"image_size": 16000}, "image_size"), ({"tile_size": 10**6}, "tile_size"), ({"max_tiles": 0}, "max_tiles"),
    ({"std": [0.0, 1.0, 1.0]}, "std"), ({"mean": [float("nan"), 0, 0]}, "mean"), ({"jpeg_prob": 2.0}, "probability"),
    ({"jpeg_quality": [90, 10]}, "jpeg_quality"), ({"image_size": "big"}, "preset"),
])
def test_parameters_out_of_bounds_are_refused(params, words):
    with pytest.raises(ValueError, match=words):
        preset_from_dict({"name": "native", **params})


def test_unknown_preset_and_parameter_fail_clearly():
    with pytest.raises(ValueError, match="unknown preset 'fancy'; choose one of"):
        get_preset("fancy")
    with pytest.raises(ValueError, match="has no parameter"):
        get_preset("baseline", crop=3)
    assert preset_from_dict({"name": "native", "image_size": 96, "eval_size": 320}) == get_preset("native")
