"""Checkpoint round trip, content hash, and refusal of anything that could run code."""

import os
import re
import pickle

import pytest
import torch

from detector.checkpoint import (
    CHECKPOINT_FILE,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from detector.errors import CheckpointError
from detector.model import build_model
from detector.presets import get_preset


def test_round_trip_gives_identical_outputs(model, tmp_path):
    preset = get_preset("native", image_size=64)
    version = save_checkpoint(tmp_path / "out", model, preset=preset, threshold=0.42, metrics={"val_accuracy": 0.9})
    assert (tmp_path / "out" / CHECKPOINT_FILE).is_file()
    ck = load_checkpoint(tmp_path / "out")
    assert ck.model_version == version and version.startswith("sha256-")
    assert ck.preset == preset and ck.threshold == pytest.approx(0.42)
    assert ck.meta["metrics"]["val_accuracy"] == 0.9 and ck.classes == ("fake", "real")
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ck.model(x), model(x), atol=0, rtol=0)


def test_version_changes_with_weights_and_threshold(model, tmp_path):
    preset = get_preset("baseline")
    v1 = save_checkpoint(tmp_path / "a", model, preset=preset, threshold=0.5)
    v2 = save_checkpoint(tmp_path / "b", model, preset=preset, threshold=0.6)
    other = build_model("none")
    v3 = save_checkpoint(tmp_path / "c", other, preset=preset, threshold=0.5)
    v4 = save_checkpoint(tmp_path / "d", model, preset=preset, threshold=0.5, metrics={"x": 1})
    assert len({v1, v2, v3}) == 3
    assert v4 == v1  # metrics do not change what a scan outputs


def test_a_tampered_checkpoint_is_refused(model, tmp_path):
    save_checkpoint(tmp_path, model, preset=get_preset("baseline"))
    f = tmp_path / CHECKPOINT_FILE
    data = bytearray(f.read_bytes())
    data[-100] ^= 0xFF  # flip bits inside the last tensor
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["model.safetensors", "weights.pt"])
def test_a_pickle_payload_is_refused_and_never_runs(tmp_path, name):
    marker = tmp_path / "pwned"
    evil = tmp_path / name
    torch.save({"fc.weight": torch.zeros(2, 512), "payload": _Exploit(marker)}, evil)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="never unpickles"):
        build_model(str(evil))
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(CheckpointError):
        build_model(str(raw))
    assert not marker.exists()


def test_a_safetensors_header_length_that_starts_like_a_pickle_still_loads(tmp_path):
    """A safetensors file begins with its header's length, little-endian: one whose low
    byte is 0x80 (pickle's first byte) once made jobs.train refuse its own checkpoint."""
    from safetensors.torch import save_file

    from detector.weights import read_state_dict

    f = tmp_path / "w.safetensors"
    for pad in range(512):
        save_file({"w": torch.arange(3.0)}, str(f), metadata={"pad": "x" * pad})
        if f.read_bytes()[:1] == b"\x80":
            break
    assert f.read_bytes()[:1] == b"\x80"
    assert torch.equal(read_state_dict(f)["w"], torch.arange(3.0))


def test_plain_state_dict_initialises_the_backbone(model, tmp_path):
    f = tmp_path / "resnet18.pt"
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    state["fc.weight"] = torch.zeros(1000, 512)  # an ImageNet head is dropped
    state["fc.bias"] = torch.zeros(1000)
    torch.save(state, f)
    m = build_model(str(f))
    torch.testing.assert_close(m.conv1.weight, model.conv1.weight)
    assert m.fc.out_features == 2


def test_missing_and_foreign_files_have_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        read_meta(junk)
    with pytest.raises(ValueError, match="none, imagenet or a local file"):
        build_model("resnet-from-the-moon")


def _nan_weights(state):
    state["fc.weight"][0, 0] = float("nan")


def _inf_weights(state):
    state["conv1.weight"].fill_(float("inf"))


@pytest.mark.parametrize("change, words", [
    ({"weights": _nan_weights}, "NaN or infinity"),
    ({"weights": _inf_weights}, "NaN or infinity"),
    ({"threshold": float("nan")}, "threshold nan"),
    ({"threshold": 2.0}, "threshold 2.0"),
    ({"threshold": -1}, "threshold -1"),
    ({"threshold": "0.5"}, "threshold '0.5'"),
    ({"classes": ["real", "fake"]}, "classes"),
    ({"classes": ["fake", "real", "other"]}, "classes"),
    ({"preset": {"name": "baseline", "image_size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.0, 0.2, 0.2]}}, "std"),
    ({"preset": {"name": "baseline", "image_size": 64, "mean": [float("nan"), 0.5, 0.5], "std": [0.2, 0.2, 0.2]}}, "mean"),
    ({"preset": {"name": "baseline", "image_size": 64, "mean": [0.5, 0.5, 0.5], "std": [float("inf"), 1, 1]}}, "std"),
    ({"preset": "baseline"}, "preset"),
])
def test_a_checkpoint_that_would_score_nan_or_flag_wrongly_is_refused(model, tmp_path, change, words):
    """NaN weights or std=0 gave every image a NaN score labelled "real"; a threshold of
    NaN or 2 flagged nothing and -1 everything. Each is refused at load, naming the file."""
    from tests.helpers import rewrite_checkpoint

    save_checkpoint(tmp_path, model, preset=get_preset("baseline", image_size=64), threshold=0.5)
    rewrite_checkpoint(tmp_path, **change)
    with pytest.raises(CheckpointError, match=re.escape(words)) as e:
        load_checkpoint(tmp_path)
    assert str(tmp_path) in str(e.value)
