"""The model card's account of the training augmentation (jobs/train/card.py)."""

from detector.presets import get_preset
from jobs.train.card import _augmentation


def test_the_card_names_fake_only_processing_when_it_was_used():
    plain = _augmentation(get_preset("native").to_dict())
    assert "both classes" in plain and "fakes only" not in plain
    squashed = _augmentation(get_preset("native", squash_fake_prob=0.5).to_dict())
    assert "fakes only: processed like a real photo" in squashed and "p 0.5" in squashed
    assert _augmentation(get_preset("baseline").to_dict()) == "- training augmentation: horizontal flips only"
