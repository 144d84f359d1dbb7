"""Binary detection metrics with ``fake`` as the positive class (scikit-learn underneath).

    python -c "import numpy as np; from jobs.evaluate_metrics import binary_metrics as m; print(m(np.array([.9,.2]), np.array([True, False]), .5))"
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm


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
    ok = f <= fpr + 1e-12
    return float(t[ok].max()) if ok.any() else 0.0


def threshold_for_fpr(real_scores: np.ndarray, fpr: float) -> float:
    """The lowest threshold whose false-positive rate on ``real_scores`` is at most ``fpr``
    (flagged means score >= threshold)."""
    s = np.sort(np.asarray(real_scores, dtype=np.float64))[::-1]
    if len(s) == 0:
        return 0.5
    k = int(np.floor(fpr * len(s)))  # at most k real images may score >= threshold
    if k >= len(s):
        return float(s[-1])
    return float(np.nextafter(s[k], np.inf))
