"""Runtimes agree with torch, the reference: the scan's scores and heat maps must not
depend on which runtime ran the network (max |dP(fake)| <= 0.01, heat-map correlation
>= 0.99), for both architectures, tiled and whole pictures."""

import numpy as np
import pytest
import torch
from PIL import Image

from detector.backends import available, make_features, resolve
from detector.inference import score_images
from detector.model import build_model
from detector.presets import get_preset

pytestmark = pytest.mark.skipif("openvino" not in available(), reason="openvino is not installed")


def pictures(n: int) -> list:
    """Pictures that differ in texture and contrast, so a model's scores differ too."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        h, w = [(128, 128), (96, 200), (80, 64), (256, 256)][i % 4]
        smooth = np.kron(rng.integers(0, 256, (h // 8, w // 8, 3)), np.ones((8, 8, 1)))
        noise = rng.normal(0, 4 + 12 * i, (h, w, 3))
        out.append(np.clip(smooth + noise, 0, 255).astype(np.uint8))
    return out


def spread_scores(model, preset, images) -> None:
    """Scale and centre the head so P(fake) spreads over (0, 1) as a trained model's does
    (random weights score everything near one value)."""
    d = np.array([s.logits[0] - s.logits[1] for s in score_images(model, preset, images)])
    k = 2.0 / max(d.std(), 1e-6)
    with torch.no_grad():
        diff = float(model.fc.bias[0] - model.fc.bias[1])
        model.fc.weight.mul_(k)
        model.fc.bias.copy_(torch.tensor([-k * (d.mean() - diff), 0.0]))  # log-odds centred on 0


@pytest.mark.parametrize("arch", ["resnet18", "resnet18-npr"])
def test_openvino_matches_torch(arch):
    torch.manual_seed(0)
    model = build_model("none", arch=arch).eval()
    preset = get_preset("native", image_size=32, tile_size=128, max_tiles=4)
    images = []
    for a in pictures(12):
        tiles, boxes = preset.prepare(Image.fromarray(a))
        images.append((tiles, boxes, a.shape[1], a.shape[0]))
    spread_scores(model, preset, images)
    ref = score_images(model, preset, images)
    ov = score_images(model, preset, images, features=make_features("openvino", model, preset, num_threads=2))
    p_ref, p_ov = np.array([s.prob_fake for s in ref]), np.array([s.prob_fake for s in ov])
    assert p_ref.std() > 0.05  # scores spread out: the comparison means something
    assert np.abs(p_ref - p_ov).max() <= 0.01
    for a, b in zip(ref, ov):
        if a.cam.std() > 0 and b.cam.std() > 0:
            assert np.corrcoef(a.cam.ravel(), b.cam.ravel())[0, 1] >= 0.99


def test_runtime_choice():
    assert resolve("auto", use_gpu=False) == "openvino" and resolve("auto", use_gpu=True) == "torch"
    with pytest.raises(ValueError, match="runs on the CPU"):
        resolve("openvino", use_gpu=True)
    with pytest.raises(ValueError, match="--runtime must be one of"):
        resolve("tensorrt", use_gpu=False)


def test_converted_network_is_cached_per_model_version(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSCAN_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = build_model("none", arch="resnet18-npr").eval()
    preset = get_preset("native")
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    first = make_features("openvino", model, preset, num_threads=1, cache_key="sha256-test")(x)
    assert sorted(p.name for p in (tmp_path / "openvino").iterdir()) == ["sha256-test-g2.bin", "sha256-test-g2.xml"]
    with torch.no_grad():
        model.fc.weight.zero_()  # the trunk is what is cached; a second load must not convert again
        model.layer1[0].conv1.weight.zero_()
    again = make_features("openvino", model, preset, num_threads=1, cache_key="sha256-test")(x)
    changed = make_features("openvino", model, preset, num_threads=1)(x)  # the changed model, converted afresh
    # a network read back from the cache compiles to bf16 kernels whose rounding may differ
    # a little from the freshly converted one's; the changed model's output is far away
    for a, b, c in zip(first, again, changed):
        torch.testing.assert_close(b, a, atol=0.05, rtol=0)
        assert (c - a).abs().max() > 0.5


def test_openvino_streams_split_batches_and_serve_threads_at_once():
    """A batch split over the streams scores each tile as the whole batch on one stream
    does, and two threads calling at once (the FetchScorer's two calls) each get their own
    tiles' results back."""
    from concurrent.futures import ThreadPoolExecutor

    torch.manual_seed(0)
    model = build_model("none", arch="resnet18-npr").eval()
    preset = get_preset("native", image_size=32, tile_size=64, max_tiles=1)
    x = torch.from_numpy(np.stack([a[:64, :64].transpose(2, 0, 1) for a in pictures(12)]))
    one = make_features("openvino", model, preset, num_threads=1)
    two = make_features("openvino", model, preset, num_threads=2)
    assert two.streams == 2
    pooled_ref, cam_ref = one(x)
    pooled, cam = two(x)  # halves on two streams
    assert pooled.shape == pooled_ref.shape and cam.shape == cam_ref.shape
    torch.testing.assert_close(pooled, pooled_ref, rtol=0.02, atol=1e-3)
    batches = [x[i:i + 5] for i in range(0, 12, 2)]  # overlapping, different batches
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(two, batches * 4))
    for b, (p, c) in zip(batches * 4, results):
        p_ref, c_ref = one(b)
        torch.testing.assert_close(p, p_ref, rtol=0.02, atol=1e-3)
        torch.testing.assert_close(c, c_ref, rtol=0.02, atol=1e-2)
    assert len(two(x[:1])[0]) == 1  # fewer tiles than streams
    # the infer requests belong to the object, not to the threads that used them: at most
    # one set per call running at once is kept, and new threads reuse them
    kept = len(two._idle[(64, 64)])
    assert 1 <= kept <= 2
    for _ in range(3):
        with ThreadPoolExecutor(1) as pool:  # a new thread each time
            pool.submit(two, x).result()
    assert len(two._idle[(64, 64)]) == kept
