"""The closed-form heat map equals pytorch-grad-cam's GradCAM on layer4."""

import numpy as np
import pytest
import torch

from detector.cam import score_batch
from detector.explain import explain
from detector.model import FAKE, REAL
from tests.helpers import upsample_cam


@pytest.mark.parametrize("class_index", [FAKE, REAL])
@pytest.mark.parametrize("target", ["log_odds", "class"])
@pytest.mark.parametrize("seed", [0, 1])
def test_closed_form_cam_equals_pytorch_grad_cam(model, class_index, target, seed):
    torch.manual_seed(seed)
    with torch.no_grad():  # random weights: make the fc weights differ strongly per class
        model.fc.weight.normal_(0, 1)
    x = torch.randn(3, 3, 96, 96)
    ours = score_batch(model, x, class_index=class_index, target=target)
    ours_full = upsample_cam(ours.cam, (96, 96)).numpy()
    reference = explain(model, x, method="gradcam", class_index=class_index, target=target)
    assert ours.cam.shape == (3, 3, 3)  # 96 px / 32
    assert reference.max() > 0.99  # the reference map is not degenerate
    np.testing.assert_allclose(ours_full, reference, atol=1e-4)


def test_scores_are_probabilities_that_follow_the_logits(model):
    x = torch.randn(5, 3, 64, 64)
    s = score_batch(model, x)
    assert s.prob_fake.shape == (5,) and s.logits.shape == (5, 2)
    expected = torch.softmax(model(x), dim=1)[:, FAKE]
    torch.testing.assert_close(s.prob_fake, expected.detach(), atol=1e-5, rtol=1e-5)
    assert float(s.cam.min()) >= 0 and float(s.cam.max()) <= 1


def test_channels_last_gives_the_same_scores(model):
    x = torch.randn(2, 3, 64, 64)
    a = score_batch(model, x)
    m2 = model.to(memory_format=torch.channels_last)
    b = score_batch(m2, x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(a.prob_fake, b.prob_fake, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.cam, b.cam, atol=1e-4, rtol=1e-3)


def test_score_batch_rejects_wrong_shapes(model):
    with pytest.raises(ValueError, match="expected a"):
        score_batch(model, torch.randn(3, 64, 64))


def test_other_methods_and_layers_through_the_library(model):
    x = torch.randn(2, 3, 64, 64)
    for method in ("gradcam++", "layercam"):
        maps = explain(model, x, method=method, layer="layer3")
        assert maps.shape == (2, 64, 64)
    with pytest.raises(ValueError, match="unknown method"):
        explain(model, x, method="nope")
    with pytest.raises(ValueError, match="no layer"):
        explain(model, x, layer="layer9")
