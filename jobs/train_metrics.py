"""Validation metrics and the operating threshold, from scores gathered over all workers.

The threshold is calibrated on the validation split for a target false-positive rate:
the smallest float32 ``t`` such that at most ``floor(fpr * n_real)`` real images have
``P(fake) >= t`` (the scan flags ``score >= threshold``). Ties at the boundary are all
left unflagged, so the achieved rate never exceeds the target.

    python -c "from jobs.train_metrics import calibrate_threshold as c; import numpy as np; print(c(np.r_[.1,.2,.9], .34))"
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from detector.model import FAKE, REAL


def calibrate_threshold(real_scores: np.ndarray, target_fpr: float) -> float:
    """Threshold on P(fake) that flags at most ``target_fpr`` of ``real_scores``."""
    scores = np.sort(np.asarray(real_scores, dtype=np.float32))[::-1]  # highest first
    allowed = math.floor(target_fpr * len(scores) + 1e-9)
    if allowed >= len(scores):
        return 0.0
    # Just above the highest real score that must stay unflagged.
    return float(np.nextafter(scores[allowed], np.float32(np.inf)))


def validation_metrics(prob_fake: np.ndarray, labels: np.ndarray, losses: np.ndarray,
                       *, target_fpr: float) -> dict[str, Any]:
    """Loss, accuracy (argmax, the original rule), AUC (fake positive), threshold and the
    rates it gives. Inputs are per image: P(fake), label index, cross-entropy."""
    prob_fake = np.asarray(prob_fake, dtype=np.float32)
    labels = np.asarray(labels)
    is_fake = labels == FAKE
    predicted_fake = prob_fake >= 0.5  # argmax of the two outputs (a tie goes to index 0, fake)
    both = is_fake.any() and (~is_fake).any()
    threshold = calibrate_threshold(prob_fake[labels == REAL], target_fpr)
    flagged = prob_fake >= threshold
    return {
        "val_loss": float(np.mean(losses)) if len(losses) else math.nan,
        "val_accuracy": float(np.mean(predicted_fake == is_fake)) if len(labels) else math.nan,
        "val_auc": float(roc_auc_score(is_fake, prob_fake)) if both else math.nan,
        "threshold": threshold,
        "val_fpr_at_threshold": float(flagged[~is_fake].mean()) if (~is_fake).any() else math.nan,
        "val_tpr_at_threshold": float(flagged[is_fake].mean()) if is_fake.any() else math.nan,
    }


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, recursively, so metrics.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
