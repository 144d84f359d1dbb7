"""Fixtures for detector tests: small models and images made on the spot, no network."""


import pytest
import torch

from detector.model import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("none").eval()


