"""The model card: what a trained detector is, what it was trained on, how well it did on
held-out data, and what it cannot be trusted with. Written by jobs.train next to
``model.safetensors`` as ``MODEL_CARD.md``, printed by jobs.evaluate, linked from the
review page, so whoever acts on a flag can see what raised it.

    python -c "from jobs.storage.models import read_card; print(read_card('OUT'))"
"""

from __future__ import annotations

from typing import Any

from detector.model import ARCHITECTURES, ModelSpec
from jobs.storage.models import CARD_FILE, card_uri, read_card  # noqa: F401 (re-exported)

_LAYERS = {
    "resnet18": "torchvision ResNet18 whole: 7x7 stride-2 stem, max pool, layer1-layer4 (512 channels), "
                "global average pool, linear head",
    "resnet18-npr": "ResNet18 on the neighbouring-pixel residual x - up(down(x)) (NPR): 3x3 stride-2 stem, "
                    "max pool, layer1 and layer2 (128 channels), global average pool, linear head",
}


def render_card(record: dict[str, Any], meta: dict[str, Any]) -> str:
    """Markdown for a published run: ``record`` is metrics.json's, ``meta`` the checkpoint's.
    Long because it is the card's template, read top to bottom as the card is."""
    config, best, data = record["config"], record["best"], record["data"]
    counts = data.get("counts", {})
    arch = config.get("arch") or "resnet18"
    spec = ModelSpec(**meta.get("model", {})) if meta.get("model") else ARCHITECTURES.get(arch, ModelSpec())
    aucs = [h.get("val_auc") for h in record["history"][-5:] if h.get("val_auc") is not None]

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [
        f"# Model card: {meta['model_version']}",
        "",
        "genscan real/fake image detector (P(fake) per image, with a Grad-CAM heat map).",
        "",
        "## Model",
        f"- architecture: `{arch}`: {_LAYERS.get(arch, str(spec))}",
        f"- preprocessing preset: `{meta['preset']}`",
        f"- initial weights: {'fine-tuned from ' + config['init_from'] if config.get('init_from') else config.get('weights')}",
        "",
        "## Training data",
        f"- source: `{data.get('source')}` ({data.get('layout')}, split given: {data.get('split_given')})",
        f"- images: train {counts.get('train')}, validation {counts.get('validation')}; "
        f"{data.get('skipped_count', 0)} files skipped as unreadable",
        "",
        "## Recipe",
        f"- preset `{config.get('preset')}`, {config.get('epochs')} epochs, batch {config.get('batch_size')}, "
        f"{config.get('optimizer')} lr {config.get('lr')} ({config.get('schedule')}), weight decay "
        f"{config.get('weight_decay')}, label smoothing {config.get('label_smoothing')}, "
        f"{config.get('crops_per_image')} crops per image, seed {config.get('seed')}",
        _averaging(config.get("ema_decay")),
        _augmentation(meta.get("preset") or {}),
        f"- published epoch: {record['best_epoch']} of {len(record['history'])}, chosen by `{config.get('select_by')}` "
        f"on the validation split",
        "",
        "## Held-out metrics (validation split; it also chose the epoch and the threshold, so they are optimistic)",
        f"- AUC {f(best.get('val_auc'))}, accuracy at argmax {f(best.get('val_accuracy'))}, loss {f(best.get('val_loss'))}",
        f"- operating threshold {f(record['threshold'])} on P(fake): calibrated for at most "
        f"{config.get('threshold_fpr', 0.05):.0%} false positives on the validation's real images "
        f"(achieved {f(best.get('val_fpr_at_threshold'))}, catching {f(best.get('val_tpr_at_threshold'))} of its fakes)",
        f"- validation AUC over the last {len(aucs)} epochs: "
        + (f"{min(aucs):.4f}-{max(aucs):.4f}" if aucs else "n/a"),
        "",
        "## Known limits",
        f"- trained on one source (`{data.get('source')}`): generators, cameras and post-processing it did not "
        "contain may be missed or over-flagged; measure on your own data with `python -m jobs.evaluate` before "
        "trusting the threshold (docs/QUALITY.md has the team's measurements across generators)",
        "- a held-out split of the same source overstates quality on other sources",
        "- heavy re-compression, resizing and screenshots erase much of the evidence at native resolution; "
        "up-scaling too: an up-scaled fake is missed more often than a down-scaled one (docs/QUALITY.md, round 6)",
        "- a score is evidence for a moderator, not a verdict: every flag should be reviewed by a person",
    ]
    warnings = (record.get("data_check") or {}).get("warnings") or []
    lines += [f"- dataset check: {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def _averaging(decay: Any) -> str:
    if not decay:
        return "- weight averaging: none (the published weights are those of the epoch's last step)"
    return (f"- weight averaging: yes, an exponential moving average of the weights (decay {decay} per step), "
            "BatchNorm statistics recomputed on training crops before each validation; the averaged weights "
            "are the ones validated and published")


def _augmentation(preset: dict[str, Any]) -> str:
    if "jpeg_prob" not in preset:
        return "- training augmentation: horizontal flips only"
    return (f"- training augmentation, both classes: JPEG re-compression p {preset['jpeg_prob']} (quality "
            f"{preset.get('jpeg_quality')}), resizing p {preset.get('resample_prob')} by "
            f"{preset.get('resample_scale')}, blur p {preset.get('blur_prob')}"
            + (f"; fakes only: processed like a real photo (resized from another size and aspect, JPEG twice) "
               f"p {preset['squash_fake_prob']}" if preset.get("squash_fake_prob") else ""))
