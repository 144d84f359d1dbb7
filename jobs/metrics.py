"""Detection metrics (fake is the positive class) and the one threshold calibration, for
jobs.train's validation and jobs.evaluate.

The threshold is calibrated for a target false-positive rate: the smallest float32 ``t``
such that at most ``floor(fpr * n_real)`` real images have ``P(fake) >= t`` (the scan
flags ``score >= threshold``). Ties at the boundary are all left unflagged, so the
achieved rate never exceeds the target. At the edges: a target of 1 (or more real
images allowed than there are) gives 0.0, flagging everything; no real scores at all
give 0.5, the argmax rule, since there is nothing to calibrate on; a real image that must
stay unflagged but scored 1.0 (a saturated model) gives 1.0, the largest probability (a
checkpoint's threshold must lie in [0, 1]), and only scores of exactly 1.0 are flagged.

    python -c "from jobs.metrics import calibrate_threshold as c; import numpy as np; print(c(np.r_[.1,.2,.9], .34))"
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn import metrics as skm

from detector.model import FAKE, REAL


def calibrate_threshold(real_scores: np.ndarray, target_fpr: float) -> float:
    """Threshold on P(fake) that flags at most ``target_fpr`` of ``real_scores``."""
    scores = np.sort(np.asarray(real_scores, dtype=np.float32))[::-1]  # highest first
    if len(scores) == 0:
        return 0.5
    allowed = math.floor(target_fpr * len(scores) + 1e-9)
    if allowed >= len(scores):
        return 0.0
    # Just above the highest real score that must stay unflagged, and never above 1.
    return min(1.0, float(np.nextafter(scores[allowed], np.float32(np.inf))))


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
        "val_auc": float(skm.roc_auc_score(is_fake, prob_fake)) if both else math.nan,
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


def binary_metrics(scores: np.ndarray, is_fake: np.ndarray, threshold: float, *, curves: bool = True) -> dict[str, Any]:
    """scores: P(fake) (N,); is_fake: bool (N,). Metrics that need both classes are None
    when one is missing."""
    scores = np.asarray(scores, dtype=np.float64)
    is_fake = np.asarray(is_fake, dtype=bool)
    pred = scores >= threshold
    n_fake, n_real = int(is_fake.sum()), int((~is_fake).sum())
    both = n_fake > 0 and n_real > 0
    tp, fn = int((pred & is_fake).sum()), int((~pred & is_fake).sum())
    fp, tn = int((pred & ~is_fake).sum()), int((~pred & ~is_fake).sum())
    out: dict[str, Any] = {
        "n": int(len(scores)),
        "n_fake": n_fake,
        "n_real": n_real,
        "threshold": float(threshold),
        "accuracy": float((pred == is_fake).mean()) if len(scores) else None,
        "balanced_accuracy": float(skm.balanced_accuracy_score(is_fake, pred)) if both else None,
        "auc": float(skm.roc_auc_score(is_fake, scores)) if both else None,
        "average_precision": float(skm.average_precision_score(is_fake, scores)) if both else None,
        "tpr_at_1pct_fpr": tpr_at_fpr(scores, is_fake, 0.01) if both else None,
        "tpr_at_5pct_fpr": tpr_at_fpr(scores, is_fake, 0.05) if both else None,
        # rows: true fake, true real; columns: predicted fake, predicted real
        "confusion_matrix": [[tp, fn], [fp, tn]],
    }
    if not curves:
        for k in ("tpr_at_1pct_fpr", "tpr_at_5pct_fpr", "average_precision"):
            out.pop(k)
    return out


def tpr_at_fpr(scores: np.ndarray, is_fake: np.ndarray, fpr: float) -> float:
    """The largest true-positive rate reachable with a false-positive rate <= ``fpr``."""
    f, t, _ = skm.roc_curve(is_fake, scores)
    return _tpr_at(f, t, fpr)


def _tpr_at(f: np.ndarray, t: np.ndarray, fpr: float) -> float:
    ok = f <= fpr + 1e-12
    return float(t[ok].max()) if ok.any() else 0.0


BOOTSTRAP_RESAMPLES = 1000  # a 95% interval's ends then move by about 0.005 between seeds
INTERVAL_LEVEL = 0.95


class Bootstrap:
    """Resamples of one labelled set of images, for intervals of AUC and TPR that say how
    far a measurement on this many images can be trusted (160 held-out images: one image
    moves TPR by 0.0125).

    Each resample draws the images with replacement *within each class*, so every class
    keeps its count and AUC stays defined; it is held as each image's multiplicity and
    passed to scikit-learn as sample weights. Every score vector of the same images (after
    a transformation, or another model's) is measured on the *same* resamples, so the
    interval of a difference is paired: it leaves out the spread the two share.

        b = Bootstrap(is_fake); lo, hi = interval(b.curves(after)["auc"] - b.curves(before)["auc"])
    """

    def __init__(self, is_fake: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0):
        self.is_fake = np.asarray(is_fake, dtype=bool)
        if not (self.is_fake.any() and (~self.is_fake).any()):
            raise ValueError("a bootstrap of AUC needs images of both classes")
        rng = np.random.default_rng(seed)
        n = len(self.is_fake)
        self.weights = np.zeros((resamples, n), np.int64)
        rows = np.arange(resamples)[:, None] * n  # each resample's offset in the flattened weights
        for members in (np.flatnonzero(self.is_fake), np.flatnonzero(~self.is_fake)):
            picks = rng.integers(0, len(members), size=(resamples, len(members)))
            self.weights += np.bincount((rows + members[picks]).ravel(), minlength=resamples * n).reshape(resamples, n)

    def curves(self, scores: np.ndarray) -> dict[str, np.ndarray]:
        """Per resample: ``auc``, ``tpr_at_1pct_fpr`` and ``tpr_at_5pct_fpr`` of ``scores``."""
        scores = np.asarray(scores, dtype=np.float64)
        out = {k: np.empty(len(self.weights)) for k in ("auc", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr")}
        for i, w in enumerate(self.weights):
            f, t, _ = skm.roc_curve(self.is_fake, scores, sample_weight=w)
            out["auc"][i] = skm.auc(f, t)
            out["tpr_at_1pct_fpr"][i], out["tpr_at_5pct_fpr"][i] = _tpr_at(f, t, 0.01), _tpr_at(f, t, 0.05)
        return out


def interval(values: np.ndarray, level: float = INTERVAL_LEVEL) -> list[float]:
    """The central ``level`` percentile interval of bootstrap ``values``, rounded to 4 places."""
    tail = 100 * (1 - level) / 2
    return [round(float(v), 4) for v in np.percentile(values, [tail, 100 - tail])]
