"""jobs.evaluate: metrics that follow the scores, robustness re-runs, clear errors."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from detector.checkpoint import save_checkpoint
from detector.inference import Detector, score_images
from detector.model import build_model
from detector.presets import get_preset
from jobs import evaluate
from jobs.metrics import Bootstrap, binary_metrics, calibrate_threshold, interval, tpr_at_fpr
from jobs.train.data import DataError, list_labelled


def test_binary_metrics_on_known_scores():
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.2, 0.1])
    fake = np.array([True, True, True, False, False, False])
    m = binary_metrics(scores, fake, threshold=0.5)
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    # pairs (fake, real) ranked right: 0.9 and 0.8 beat all 3; 0.4 beats 0.2 and 0.1 -> 8/9
    assert m["auc"] == pytest.approx(8 / 9)
    assert m["tpr_at_1pct_fpr"] == pytest.approx(2 / 3)


def test_tpr_and_threshold_at_a_false_positive_rate():
    real = np.linspace(0, 0.99, 100)
    t = calibrate_threshold(real, 0.05)
    assert (real >= t).sum() == 5
    # the one documented behaviour at the edges: nothing to calibrate on -> the argmax rule
    assert calibrate_threshold(np.zeros(0), 0.05) == 0.5
    assert calibrate_threshold(real, 1.0) == 0.0  # every real image may be flagged
    assert calibrate_threshold(np.ones(4, np.float32), 0.05) == 1.0  # saturated: still a probability
    fake = np.ones(10)
    assert tpr_at_fpr(np.concatenate([fake, real]), np.r_[np.ones(10, bool), np.zeros(100, bool)], 0.0) == 1.0


def test_one_class_gives_none_not_a_crash():
    m = binary_metrics(np.array([0.3, 0.6]), np.array([True, True]), 0.5)
    assert m["auc"] is None and m["accuracy"] == 0.5


def _separable(n: int, gap: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    fake = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    return rng.normal(size=2 * n) + gap * fake, fake


def test_bootstrap_intervals_hold_the_estimate_and_narrow_with_more_images():
    scores, fake = _separable(40, 1.5)
    b = Bootstrap(fake, resamples=400)
    assert b.weights.shape == (400, 80)
    # each resample keeps each class's count: AUC stays defined
    assert (b.weights[:, fake].sum(1) == 40).all() and (b.weights[:, ~fake].sum(1) == 40).all()
    m, c = binary_metrics(scores, fake, 0.5), b.curves(scores)
    lo, hi = interval(c["auc"])
    assert lo < m["auc"] < hi and hi - lo > 0.05  # 80 images cannot pin AUC to 0.05
    lo5, hi5 = interval(c["tpr_at_5pct_fpr"])
    assert lo5 <= m["tpr_at_5pct_fpr"] <= hi5
    big_scores, big_fake = _separable(1000, 1.5)
    big_lo, big_hi = interval(Bootstrap(big_fake, resamples=400).curves(big_scores)["auc"])
    assert big_hi - big_lo < (hi - lo) / 3  # 25x the images: about a fifth of the width
    # the same resamples every time (seeded), and no spread where nothing can vary
    assert np.array_equal(Bootstrap(fake, resamples=400).weights, b.weights)
    assert interval(b.curves(np.where(fake, 1.0, 0.0))["auc"]) == [1.0, 1.0]


def test_a_paired_interval_leaves_out_the_spread_two_scorings_share():
    scores, fake = _separable(80, 1.0)
    b = Bootstrap(fake, resamples=400)
    before = b.curves(scores)["auc"]
    rng = np.random.default_rng(1)
    after = b.curves(scores + rng.normal(scale=0.1, size=len(scores)))["auc"]  # a small, real change
    paired = interval(after - before)
    unpaired = interval(after - rng.permutation(before))
    assert paired[1] - paired[0] < (unpaired[1] - unpaired[0]) / 2
    assert interval(b.curves(scores)["auc"] - before) == [0.0, 0.0]
    with pytest.raises(ValueError, match="both classes"):
        Bootstrap(np.ones(5, bool))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(0)
    for label, shift in (("real", 0), ("fake", 60)):
        for sub in ("a", "b"):
            folder = root / label / sub
            folder.mkdir(parents=True)
            for i in range(6):
                arr = np.clip(rng.integers(0, 196, (40, 40, 3)) + shift, 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(folder / f"{i}.png")
    (root / "real" / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    torch.manual_seed(0)
    model_dir = root.parent / (root.name + "-model")
    save_checkpoint(model_dir, build_model("none"), preset=get_preset("baseline", image_size=32), threshold=0.5)
    return root, model_dir


def test_evaluate_reports_metrics_consistent_with_the_scores(labelled, tmp_path):
    root, model_dir = labelled
    out = tmp_path / "eval.json"
    assert 0 == evaluate.main(["--data", str(root), "--model", str(model_dir), "--json", str(out),
                                 "--plots", str(tmp_path / "plots"), "--robustness", "jpeg75,crop"])
    result = json.loads(out.read_text())
    assert result["n"] == 24 and result["n_fake"] == 12
    assert list(result["skipped"]) == [str(root / "real" / "a" / "broken.jpg")]
    assert sum(map(sum, result["confusion_matrix"])) == 24
    assert set(result["by_subfolder"]) == {"fake/a", "fake/b", "real/a", "real/b"}
    assert set(result["robustness"]) == {"jpeg75", "crop"}
    lo, hi = result["intervals"]["auc"]
    assert lo <= result["auc"] <= hi
    for r in result["robustness"].values():
        lo, hi = r["auc_change_interval"]
        assert lo <= r["auc_change"] + 1e-4 and r["auc_change"] - 1e-4 <= hi
    for name in ("roc.png", "scores.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Recompute independently: the reported AUC follows the detector's own scores.
    det = Detector.from_path(model_dir)
    files = sorted(p for p in root.rglob("*.png"))
    images = [(*det.preset.prepare(im), im.width, im.height) for im in (Image.open(f).convert("RGB") for f in files)]
    scores = np.array([s.prob_fake for s in score_images(det.model, det.preset, images)])
    expected = binary_metrics(scores, np.array(["/fake/" in str(f) for f in files]), 0.5)
    assert result["auc"] == pytest.approx(expected["auc"], abs=1e-6)


def test_validation_split_is_the_training_split(labelled, tmp_path, capsys):
    root, model_dir = labelled
    r = evaluate.run(evaluate.EvaluateConfig(data=str(root), model=str(model_dir), split="validation", val_fraction=0.25))
    # round(25% of 13 real) + round(25% of 12 fake) listed; an undecodable one is counted apart
    assert r["n"] + len(r["skipped"]) == 6 and r["n_fake"] == 3
    # a model records which images its run held out (jobs.train: data.validation_digest)
    held_out = list_labelled(str(root), val_fraction=0.25, seed=3)
    trained = tmp_path / "trained"
    torch.manual_seed(0)
    save_checkpoint(trained, build_model("none"), preset=get_preset("baseline", image_size=32), data=held_out.summary())
    again = evaluate.run(evaluate.EvaluateConfig(data=str(root), model=str(trained), split="validation",
                                                 val_fraction=0.25, seed=3))
    assert again["n"] + len(again["skipped"]) == len(held_out.validation)
    # the same files under another path hash to another split: refused, not scored as unseen
    moved = tmp_path / "elsewhere"
    moved.symlink_to(root, target_is_directory=True)
    assert list_labelled(str(moved), val_fraction=0.25, seed=3).validation_digest() != held_out.validation_digest()
    with pytest.raises(DataError, match="not the images this model held out"):
        evaluate.run(evaluate.EvaluateConfig(data=str(moved), model=str(trained), split="validation",
                                             val_fraction=0.25, seed=3))
    with pytest.raises(DataError, match="not the images this model held out"):  # another seed: another split
        evaluate.run(evaluate.EvaluateConfig(data=str(root), model=str(trained), split="validation", val_fraction=0.25))
    # the record is the checkpoint's metadata, so hostile: not a dict is no record (a note),
    # a long digest is quoted short
    capsys.readouterr()  # what the runs above printed
    for record in (["x"], "text", None):
        held_out.check_held_out(record)
    assert capsys.readouterr().err.count("records no digest") == 3
    with pytest.raises(DataError) as refused:
        held_out.check_held_out({"validation_digest": "a" * 10_000, "source": "b" * 10_000})
    assert len(str(refused.value)) < 800
    # the whole set ("all") is not a held-out claim: no check
    assert evaluate.run(evaluate.EvaluateConfig(data=str(moved), model=str(trained), split="all"))["n"] == 24


def test_bad_flags_fail_with_a_message(labelled, capsys):
    root, model_dir = labelled
    with pytest.raises(SystemExit):
        evaluate.main(["--data", str(root), "--model", str(model_dir), "--robustness", "jpeg12"])
    assert "unknown ['jpeg12']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["--data", str(root), "--modle", str(model_dir)])


def test_an_s3_model_fetches_only_its_checkpoint_file(labelled, monkeypatch):
    # The training output also holds ray-train/ with every kept checkpoint; only
    # OUT/model.safetensors is needed.
    root, model_dir = labelled
    fetched = []

    def read_bytes(uri, **kw):
        fetched.append(uri)
        if uri == "s3://models/run-1/model.safetensors":
            return (model_dir / "model.safetensors").read_bytes()
        raise FileNotFoundError(uri)

    monkeypatch.setattr(evaluate.storage, "read_bytes", read_bytes)
    monkeypatch.setattr(evaluate.storage, "download_dir", lambda *a, **k: pytest.fail("downloaded a prefix"))
    det = evaluate._load("s3://models/run-1/")
    assert fetched == ["s3://models/run-1/model.safetensors"]
    assert det.model_version == Detector.from_path(model_dir).model_version
    with pytest.raises(FileNotFoundError, match="no checkpoint at s3://models/run-2/model.safetensors"):
        evaluate._load("s3://models/run-2")


def test_two_models_compared_on_the_same_images(labelled, tmp_path):
    """benchmarks/compare_models.py: paired differences, zero against itself."""
    from benchmarks.compare_models import compare, fuse

    root, model_dir = labelled
    torch.manual_seed(1)
    other = tmp_path / "other"
    save_checkpoint(other, build_model("none"), preset=get_preset("baseline", image_size=32), threshold=0.5)
    config = dict(data=str(root), robustness=("jpeg75",))
    a = evaluate.run(evaluate.EvaluateConfig(model=str(model_dir), **config), keep_scores=True)
    b = evaluate.run(evaluate.EvaluateConfig(model=str(other), **config), keep_scores=True)
    assert a["per_image"]["uri"] == b["per_image"]["uri"] and len(a["per_image"]["clean"]) == a["n"] == 24
    assert a["auc"] == pytest.approx(binary_metrics(a["per_image"]["clean"], a["per_image"]["is_fake"], 0.5)["auc"])
    same = compare(a, a, resamples=200)
    assert {(r["set"], r["measure"]) for r in same} >= {("clean", "auc"), ("jpeg75", "auc"), ("jpeg75", "auc_change")}
    assert all(r["b_minus_a"] == 0 and r["interval"] == [0.0, 0.0] for r in same)
    rows = {(r["set"], r["measure"]): r for r in compare(a, b, resamples=200)}
    auc = rows[("clean", "auc")]
    assert auc["a"] == pytest.approx(a["auc"], abs=1e-4) and auc["b"] == pytest.approx(b["auc"], abs=1e-4)
    assert auc["interval"][0] <= auc["b_minus_a"] + 1e-4 and auc["b_minus_a"] - 1e-4 <= auc["interval"][1]
    # --fuse: the sum of the two models' logits, image by image; a model fused with itself ranks as it does
    both = fuse(a, b)["per_image"]
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    i = 3
    for name in ("clean", "jpeg75"):
        assert logit(both[name][i]) == pytest.approx(logit(a["per_image"][name][i]) + logit(b["per_image"][name][i]), abs=1e-6)
    assert binary_metrics(fuse(a, a)["per_image"]["clean"], a["per_image"]["is_fake"], 0.5)["auc"] == pytest.approx(a["auc"])
    b["per_image"]["uri"] = b["per_image"]["uri"][::-1]
    with pytest.raises(SystemExit, match="same images"):
        compare(a, b)
    with pytest.raises(SystemExit, match="same images"):
        fuse(a, b)
