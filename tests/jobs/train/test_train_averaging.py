"""Weight averaging in jobs.train (``--ema-decay``, jobs/train/averaging.py): the averaged
weights, with BatchNorm statistics recomputed on training crops, are what is validated,
checkpointed, published and resumed from.

The end-to-end test uses a decay so close to 1 that the average barely leaves the weights
after the first optimizer step. Adam's first step moves every weight by at most the
learning rate (its update is m/sqrt(v) = sign(g) then), so the published weights lie
within one learning rate of the seed's initial weights, while the last step's have moved
several: that can only come from the average.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from detector.checkpoint import load_checkpoint
from detector.model import build_model
from detector.presets import get_preset
from jobs.train import TrainConfig, get_args_parser, run
from jobs.train.averaging import BN_CROPS, WeightAverage
from jobs.train.images import LabelledImages
from jobs.train.run_state import RUN_DIR, TRAINING_WEIGHTS_FILE, epoch_dir_name
from tests.helpers import make_folders

ARCH = "resnet18-npr"


def _largest_move(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in _weights(a))


def _weights(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items() if k.endswith("weight") and v.ndim > 1]


def _bn_stats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _initial_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # as jobs/train/loop.py seeds every worker
    return build_model("none", arch=ARCH).state_dict()


def test_recalibrate_recomputes_batchnorm_statistics_for_the_averaged_weights(tmp_path):
    root = make_folders(tmp_path / "data", n=6, nested=False)
    samples = [(str(p), int(p.parent.name == "fake")) for p in sorted(root.rglob("*.png"))]
    preset = get_preset("native", image_size=32)
    dataset = LabelledImages(samples, preset, max_pixels=1 << 20)
    torch.manual_seed(0)
    model = build_model("none", arch=ARCH)
    average = WeightAverage(model, decay=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    for _ in range(3):
        x = torch.stack([dataset[i][0] for i in range(4)])
        optimizer.zero_grad()
        model(preset.normalize(x))[:, 1].sum().backward()
        optimizer.step()
        average.update(model)
        steps.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    before = {k: v.clone() for k, v in _bn_stats(average.module.state_dict()).items()}

    used = average.recalibrate(dataset, preset.normalize, rank=0, world=1, batch_size=4, seed=0, epoch=1)

    after = _bn_stats(average.module.state_dict())
    batches = math.ceil(BN_CROPS / 4)
    assert used == batches * 4
    assert all(int(v) == batches for k, v in after.items() if k.endswith("num_batches_tracked"))
    assert all(not torch.equal(before[k], v) for k, v in after.items() if k.endswith("running_mean"))
    # decay 0.5: the first update copies, each later one halves the way
    expected = {k: 0.25 * steps[0][k] + 0.25 * steps[1][k] + 0.5 * steps[2][k] for k in _weights(steps[0])}
    assert _largest_move(expected, average.module.state_dict()) < 1e-5 < _largest_move(expected, steps[2])


def test_ema_flags_are_parsed_and_checked():
    args = get_args_parser().parse_args(["--data", "d", "--output", "o", "--ema-decay", "0.995",
                                         "--jpeg-prob", "0.9", "--resample-prob", "0.6", "--resample-scale", "0.4", "1"])
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k != "debug"})
    assert config.ema_decay == 0.995 and config.recipe["ema_decay"] == 0.995
    preset = config.make_preset()
    assert (preset.jpeg_prob, preset.resample_prob, preset.resample_scale) == (0.9, 0.6, (0.4, 1.0))
    for bad, message in [(dict(ema_decay=1.0), "--ema-decay"), (dict(ema_decay=-0.1), "--ema-decay"),
                         (dict(jpeg_prob=1.5), "jpeg_prob"), (dict(resample_scale=(0.05, 1.0)), "resample_scale"),
                         (dict(preset="baseline", resample_prob=0.5), "native only")]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(data="d", output="o", **bad)


@pytest.mark.slow
def test_averaged_weights_are_validated_published_and_resumed(ray_local, tmp_path):
    data = make_folders(tmp_path / "data", n=16)
    out = tmp_path / "out"
    cfg = dict(data=str(data), output=str(out), image_size=32, num_workers=2, batch_size=16, crops_per_image=2,
               ema_decay=0.9999)
    record = run(TrainConfig(epochs=2, **cfg))

    published = load_checkpoint(out).model.state_dict()
    last = out / RUN_DIR / epoch_dir_name(2)
    raw = load_file(str(last / TRAINING_WEIGHTS_FILE))
    initial = _initial_weights()
    lr = record["config"]["lr"]
    assert 0 < _largest_move(published, initial) <= 1.05 * lr  # about Adam's first step
    assert _largest_move(raw, initial) > 2 * lr  # the last step's weights went further
    # BatchNorm statistics recomputed on the averaged weights: as many batches as the
    # recalibration ran (the raw model counts its training steps), and not the initial zeros
    per_worker_batches = math.ceil(BN_CROPS / 16)
    for key, value in _bn_stats(published).items():
        if key.endswith("num_batches_tracked"):
            assert int(value) == per_worker_batches and int(raw[key]) != per_worker_batches
        elif key.endswith("running_mean"):
            assert value.abs().sum() > 0 and not torch.equal(value, raw[key])
    assert all(h["bn_recalibration_crops"] == per_worker_batches * 16 for h in record["history"])
    assert record["config"]["ema_decay"] == 0.9999
    assert load_checkpoint(out).meta["training"]["ema_decay"] == 0.9999
    assert "weight averaging: yes" in (out / "MODEL_CARD.md").read_text()

    # A re-run with more epochs resumes both: the average continues from the checkpoint's
    # (a fresh one would start from the raw weights, far from the initial ones).
    record = run(TrainConfig(epochs=3, **cfg))
    assert record["resumes"] and [h["epoch"] for h in record["history"]] == [1, 2, 3]
    published, raw = load_checkpoint(out).model.state_dict(), load_file(
        str(out / RUN_DIR / epoch_dir_name(3) / TRAINING_WEIGHTS_FILE))
    assert _largest_move(published, initial) <= 1.05 * lr < 2 * lr < _largest_move(raw, initial)


@pytest.mark.slow
def test_without_averaging_the_last_step_is_published(ray_local, tmp_path):
    data = make_folders(tmp_path / "data", n=8)
    out = tmp_path / "out"
    record = run(TrainConfig(data=str(data), output=str(out), image_size=32, num_workers=1, batch_size=8,
                             crops_per_image=1, epochs=1, ema_decay=0))
    assert not (out / RUN_DIR / epoch_dir_name(1) / TRAINING_WEIGHTS_FILE).exists()
    assert "bn_recalibration_crops" not in record["history"][0]
    assert "weight averaging: none" in (out / "MODEL_CARD.md").read_text()
    assert load_checkpoint(out).meta["training"]["ema_decay"] is None
