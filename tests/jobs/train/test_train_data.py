"""jobs.train without Ray: data layouts and splits, flags, threshold calibration, plots.

The image helpers here are also used by test_train.py and test_train_submit.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from detector.model import FAKE, REAL
from jobs.metrics import calibrate_threshold, json_safe, validation_metrics
from jobs.plots import roc_curve_png, score_histogram_png, training_curves_png
from jobs.train import TrainConfig, get_args_parser, main
from jobs.train.data import DataError, Sample, list_labelled, split_stratified
from tests.helpers import PNG_MAGIC, image_bytes, make_folders

# -- layouts ---------------------------------------------------------------------------

def test_folders_any_depth_split_stratified_and_deterministic(tmp_path):
    root = make_folders(tmp_path / "d", n=10)
    data = list_labelled(str(root), val_fraction=0.2, seed=0)
    assert data.layout == "folders" and not data.split_given
    assert data.counts() == {"train": {"fake": 8, "real": 8}, "validation": {"fake": 2, "real": 2}}
    uris = {s.uri for s in data.train + data.validation}
    assert len(uris) == 20 and all(Path(u).is_file() for u in uris)
    assert any("/a/b/" in u for u in uris)
    labels = {Path(s.uri).name[:4]: s.label for s in data.train + data.validation}
    assert labels == {"real": REAL, "fake": FAKE}
    again = list_labelled(str(root), val_fraction=0.2, seed=0)
    assert again.validation == data.validation
    other = [list_labelled(str(root), val_fraction=0.2, seed=s).validation for s in range(1, 6)]
    assert any(set(v) != set(data.validation) for v in other)


def test_split_independent_of_order_and_keeps_one_of_each():
    samples = [Sample(f"/x/{i}.png", i % 2) for i in range(40)]
    train, val = split_stratified(samples, 0.25, seed=3)
    train_r, val_r = split_stratified(samples[::-1], 0.25, seed=3)
    assert set(val) == set(val_r) and len(val) == 10 and len(train) == 30
    train, val = split_stratified(samples[:4], 0.01, seed=0)  # 2 per class: 1 + 1
    assert len(val) == 2 and len(train) == 2


def test_original_train_validation_folders(tmp_path):
    root = make_folders(tmp_path / "d", n=8, split=True)
    data = list_labelled(str(root), val_fraction=0.5, seed=0)  # val_fraction: not used
    assert data.layout == "split-folders" and data.split_given
    assert data.counts() == {"train": {"fake": 6, "real": 6}, "validation": {"fake": 2, "real": 2}}
    assert all("/validation/" in s.uri for s in data.validation)


def test_manifest_csv_relative_paths_any_case(tmp_path):
    root = make_folders(tmp_path / "d", n=6, nested=False)
    rows = [{"file": f"d/{lab}/{lab}{i}.png", "label": lab.upper() if i % 2 else lab}
            for lab in ("real", "fake") for i in range(6)]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    data = list_labelled(str(tmp_path / "m.csv"), val_fraction=0.34, seed=0)
    assert data.layout == "manifest" and not data.split_given
    assert data.counts() == {"train": {"fake": 4, "real": 4}, "validation": {"fake": 2, "real": 2}}
    assert {s.uri for s in data.train + data.validation} == {str(p) for p in root.rglob("*.png")}


def test_manifest_parquet_with_split(tmp_path):
    root = make_folders(tmp_path / "d", n=4, nested=False)
    rows = [{"uri": str(root / lab / f"{lab}{i}.png"), "label": lab, "split": "validation" if i == 0 else "train"}
            for lab in ("real", "fake") for i in range(4)]
    pd.DataFrame(rows).to_parquet(tmp_path / "m.parquet")
    data = list_labelled(str(tmp_path / "m.parquet"))
    assert data.split_given
    assert data.counts() == {"train": {"fake": 3, "real": 3}, "validation": {"fake": 1, "real": 1}}


@pytest.mark.parametrize("case, words", [
    ("unknown_label", ["'ai'", "one of fake, real"]),
    ("outside", ["other/", "real/ and fake/"]),
    ("no_fake", ["no fake images", "fake/"]),
    ("empty", ["holds no images"]),
    ("missing", ["does not exist"]),
    ("one_image", ["1 image", "at least 2"]),
    ("no_columns", ["column uri", "label"]),
    ("duplicate", ["more than once"]),
])
def test_clear_errors(tmp_path, case, words):
    root = tmp_path / "d"
    if case in ("outside", "no_fake", "one_image"):
        make_folders(root, n=4)
    if case == "outside":
        (root / "other").mkdir()
        (root / "other" / "x.png").write_bytes(image_bytes(False, 0))
    elif case == "no_fake":
        for p in (root / "fake").rglob("*.png"):
            p.unlink()
    elif case == "one_image":
        for p in list((root / "fake").rglob("*.png"))[1:]:
            p.unlink()
    elif case == "empty":
        root.mkdir()
        (root / "notes.txt").write_text("no images here")
    elif case in ("unknown_label", "no_columns", "duplicate"):
        root.mkdir()
        table = {"unknown_label": "uri,label\na.png,real\nb.png,ai\n",
                 "no_columns": "image,class\na.png,real\n",
                 "duplicate": "uri,label\na.png,real\na.png,fake\n"}[case]
        (root / "m.csv").write_text(table)
        root = root / "m.csv"
    with pytest.raises(DataError) as e:
        list_labelled(str(root))
    for word in words:
        assert word in str(e.value)


# -- flags -----------------------------------------------------------------------------

def test_defaults_are_the_native_recipe_and_baseline_is_the_original():
    parse = get_args_parser().parse_args
    config = TrainConfig(**{k.replace("-", "_"): v for k, v in vars(parse(["--data", "d", "--output", "o"])).items()})
    assert (config.preset, config.image_size, config.select_by, config.num_workers, config.weights) == (
        "native", 96, "val_auc", 1, "none")
    original = TrainConfig(**{k.replace("-", "_"): v for k, v in
                              vars(parse(["--data", "d", "--output", "o", "--preset", "baseline"])).items()})
    assert (original.lr, original.optimizer, original.batch_size, original.epochs, original.image_size,
            original.schedule, original.label_smoothing, original.crops_per_image, original.select_by) == (
        0.003, "adam", 32, 10, 224, "constant", 0.0, 1, "val_accuracy")


@pytest.mark.parametrize("argv, message", [
    (["--epoch", "3"], "unrecognized arguments: --epoch"),
    (["--image_size", "32"], "unrecognized arguments: --image_size"),
    (["--batch-size", "33", "--num-workers", "2"], "multiple of --num-workers"),
    (["--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
    (["--weights", "/no/such/file.pt"], "--weights must be none or imagenet"),
    (["--threshold-fpr", "5"], "--threshold-fpr is a rate"),
    (["--preset", "fancy"], "invalid choice: 'fancy'"),
])
def test_bad_flags_fail_before_ray(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(["--data", str(tmp_path / "d"), "--output", str(tmp_path / "o"), *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_output_inside_data_is_refused(tmp_path):
    with pytest.raises(ValueError, match="must not be inside --data"):
        TrainConfig(data=str(tmp_path), output=str(tmp_path / "out"))


# -- threshold and metrics -------------------------------------------------------------

@pytest.mark.parametrize("target", [0.0, 0.05, 0.1, 0.5])
def test_threshold_keeps_false_positives_at_or_below_target(target):
    real = np.random.default_rng(0).random(200).astype(np.float32)
    t = calibrate_threshold(real, target)
    flagged = (real >= np.float32(t)).mean()
    assert flagged <= target
    assert flagged >= target - 1 / 200  # and not needlessly lower


def test_threshold_with_ties_never_exceeds_target():
    real = np.array([0.9, 0.9, 0.9, 0.1], dtype=np.float32)
    t = calibrate_threshold(real, 0.5)  # 2 allowed, but 3 tie at 0.9: flag none of them
    assert (real >= t).sum() == 0 and t > 0.9
    assert calibrate_threshold(real, 1.0) == 0.0


def test_validation_metrics():
    prob = np.array([0.9, 0.8, 0.3, 0.2, 0.6])
    labels = np.array([FAKE, FAKE, FAKE, REAL, REAL])
    m = validation_metrics(prob, labels, np.ones(5), target_fpr=0.5)
    assert m["val_accuracy"] == pytest.approx(3 / 5)
    assert m["val_auc"] == pytest.approx(5 / 6)  # 5 of 6 (fake, real) pairs ordered
    assert m["val_fpr_at_threshold"] <= 0.5
    one_class = json_safe(validation_metrics(prob[:3], labels[:3], np.ones(3), target_fpr=0.05))
    assert one_class["val_auc"] is None and json.dumps(one_class)


# -- plots -----------------------------------------------------------------------------

def test_plots_are_png():
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_accuracy": 0.5 + e / 10,
                "val_accuracy": 0.5 + e / 20, "val_auc": None} for e in (1, 2, 3)]
    assert training_curves_png(history).startswith(PNG_MAGIC)
    scores, is_fake = np.linspace(0, 1, 20), np.arange(20) % 2 == 0
    assert roc_curve_png(scores, is_fake).startswith(PNG_MAGIC)
    assert score_histogram_png(scores, is_fake, threshold=0.5).startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="empty"):
        training_curves_png([])


# -- what workers read -----------------------------------------------------------------

def test_unreadable_files_become_weightless_samples_with_a_reason(tmp_path):
    from detector.presets import get_preset
    from jobs.train.images import LabelledImages

    good, broken = tmp_path / "good.png", tmp_path / "broken.jpg"
    good.write_bytes(image_bytes(True, 0))
    broken.write_bytes(b"\xff\xd8\xff truncated")
    preset = get_preset("baseline", image_size=32)
    samples = [(str(good), FAKE), (str(broken), REAL), (str(tmp_path / "gone.png"), REAL)]
    images = LabelledImages(samples, preset, max_pixels=10_000)
    x, label, index, error = images[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and label == FAKE and index == 0 and error == ""
    assert images[1][3].startswith("ImageDecodeError") and images[1][0].sum() == 0
    assert images[2][3].startswith("FileNotFoundError")
    big = tmp_path / "big.png"
    big.write_bytes(image_bytes(False, 1, size=128))  # 16,384 pixels > max_pixels
    assert "limit" in LabelledImages([(str(big), REAL)], preset, 10_000)[0][3]
    (tiles, boxes, w, h), *_ = LabelledImages(samples, preset, 10_000, train=False)[0]  # validation: the scan's cut
    assert tiles.shape == (1, 3, 32, 32) and boxes.tolist() == [[0, 0, 32, 32]] and (w, h) == (32, 32)


def test_crops_per_image_draws_each_sample_that_many_times_with_its_own_index(tmp_path):
    from detector.presets import get_preset
    from jobs.train.images import LabelledImages

    paths = [tmp_path / f"{i}.png" for i in range(2)]
    for i, p in enumerate(paths):
        p.write_bytes(image_bytes(bool(i), i, size=64))
    preset = get_preset("native", image_size=16)
    images = LabelledImages([(str(p), i) for i, p in enumerate(paths)], preset, max_pixels=10_000, repeats=3)
    drawn = [images[i] for i in range(len(images))]
    assert len(images) == 6
    assert [(label, index) for _, label, index, _ in drawn] == [(0, 0), (1, 1)] * 3
    crops = [x for x, label, _, _ in drawn if label == 0]  # random 16 px crops of one 64 px image
    assert not all(torch.equal(crops[0], c) for c in crops[1:])


def test_training_batches_of_mixed_sizes_are_cropped_never_padded():
    from jobs.train.images import collate_crops

    big, small = torch.randint(0, 255, (3, 96, 96), dtype=torch.uint8), torch.randint(0, 255, (3, 32, 40), dtype=torch.uint8)
    x, y, index, errors = collate_crops([(big, 0, 0, ""), (small, 1, 1, "")])
    assert x.shape == (2, 3, 32, 40) and torch.equal(x[0], big[:, :32, :40]) and torch.equal(x[1], small)


def test_each_preset_brings_its_recipe_and_flags_override_it():
    parse = get_args_parser().parse_args
    native = TrainConfig(**{k.replace("-", "_"): v for k, v in
                            vars(parse(["--data", "d", "--output", "o", "--preset", "native"])).items()})
    assert (native.optimizer, native.schedule, native.image_size) == ("adamw", "cosine", 96)
    assert native.arch == "resnet18-npr" and native.label_smoothing > 0 and native.crops_per_image > 1
    assert native.make_preset().tile_size > native.image_size
    tuned = TrainConfig(**{k.replace("-", "_"): v for k, v in vars(parse(
        ["--data", "d", "--output", "o", "--preset", "baseline", "--lr", "0.01", "--optimizer", "adamw"])).items()})
    assert (tuned.lr, tuned.optimizer, tuned.epochs, tuned.image_size, tuned.crops_per_image) == (
        0.01, "adamw", 10, 224, 1)
    assert tuned.arch == "resnet18"  # the original model
    with pytest.raises(ValueError, match="--tile-size, --max-tiles, .* are for --preset native only"):
        TrainConfig(data="d", output="o", preset="baseline", max_tiles=2)
    for bad in ({"max_tiles": 0}, {"tile_size": 10**6}):  # the preset's bounds, checked before any work
        with pytest.raises(ValueError, match="tile_size must be 32-4096 and max_tiles 1-64"):
            TrainConfig(data="d", output="o", **bad)


def test_cosine_schedule_warms_up_then_decays_to_zero_and_resumes_on_the_same_curve():
    from jobs.train.loop import _lr_schedule

    cfg = TrainConfig(data="d", output="o", lr=0.002, schedule="cosine")
    whole = _lr_schedule(cfg, first_step=0, steps=100)
    curve = [whole(i) for i in range(100)]
    assert curve[0] == pytest.approx(0.002 / 10) and max(curve) == pytest.approx(0.002)
    assert curve[9] == curve[10] == pytest.approx(0.002) and curve[-1] < 0.002 * 0.01
    assert all(a <= b for a, b in zip(curve[:9], curve[1:10])) and all(a >= b for a, b in zip(curve[10:], curve[11:]))
    later = _lr_schedule(cfg, first_step=40, steps=100)  # e.g. epoch 3 of 5, or after a resume
    assert [later(i) for i in range(20)] == curve[40:60]
    assert _lr_schedule(TrainConfig(data="d", output="o", lr=0.003, schedule="constant"), 0, 100)(57) == 0.003
