"""Plots as PNG bytes, drawn with matplotlib's Agg backend (no display; safe in Ray
workers and CI): training curves (jobs.train), ROC curves and score histograms
(jobs.evaluate), the score histogram of one scan (jobs.report, the review page).

Bytes rather than files so that a job writes them wherever its output lives
(``jobs.storage.write_bytes`` to a folder or ``s3://``).

    python -c "from jobs.plots import training_curves_png as p; open('c.png','wb').write(p([{'epoch': 1, 'train_loss': 1, 'val_loss': 1, 'train_accuracy': .5, 'val_accuracy': .5}]))"
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # before pyplot is imported anywhere in this process
from matplotlib import pyplot as plt  # noqa: E402


def training_curves_png(history: Sequence[dict[str, Any]], *, title: str = "") -> bytes:
    """Loss and accuracy per epoch, train and validation, side by side.

    ``history``: one dict per epoch with ``epoch``, ``train_loss``, ``val_loss``,
    ``train_accuracy``, ``val_accuracy`` (None/NaN points are left out); ``val_auc``
    is drawn too when present.
    """
    if not history:
        raise ValueError("no epochs to plot: the history is empty")
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    try:
        for ax, metric, label in ((loss_ax, "loss", "loss"), (acc_ax, "accuracy", "accuracy")):
            for split, style in (("train", "o-"), ("val", "s-")):
                ax.plot(epochs, _values(history, f"{split}_{metric}"), style,
                        label="validation" if split == "val" else split)
            ax.set(xlabel="epoch", ylabel=label, title=label)
            ax.grid(alpha=0.3)
        if any(h.get("val_auc") is not None for h in history):
            acc_ax.plot(epochs, _values(history, "val_auc"), "^--", label="validation AUC")
        acc_ax.set_ylim(0, 1.02)
        for ax in (loss_ax, acc_ax):
            ax.legend()
            ax.xaxis.get_major_locator().set_params(integer=True)
        if title:
            fig.suptitle(title)
        return _png(fig)
    finally:
        plt.close(fig)


def roc_curve_png(scores: Sequence[float], is_fake: Sequence[bool], *, title: str = "") -> bytes:
    """ROC curve of P(fake) scores, fake the positive class, with its AUC."""
    from sklearn.metrics import roc_auc_score, roc_curve

    scores, is_fake = np.asarray(scores, dtype=np.float64), np.asarray(is_fake, dtype=bool)
    fig, ax = plt.subplots(figsize=(5, 5), constrained_layout=True)
    try:
        if is_fake.any() and (~is_fake).any():
            fpr, tpr, _ = roc_curve(is_fake, scores)
            ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(is_fake, scores):.4f}")
            ax.legend(loc="lower right")
        else:
            ax.text(0.5, 0.5, "needs real and fake images", ha="center", va="center")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(xlabel="false-positive rate (real flagged)", ylabel="true-positive rate (fake flagged)",
               xlim=(0, 1), ylim=(0, 1.01), title=title or f"ROC ({is_fake.sum()} fake, {(~is_fake).sum()} real)")
        ax.grid(alpha=0.3)
        return _png(fig)
    finally:
        plt.close(fig)


def score_histogram_png(scores: Sequence[float], is_fake: Sequence[bool], *,
                        threshold: float | None = None, title: str = "") -> bytes:
    """Histograms of P(fake) for real and fake images, with the operating threshold."""
    scores, is_fake = np.asarray(scores, dtype=np.float64), np.asarray(is_fake, dtype=bool)
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    try:
        bins = np.linspace(0, 1, 41)
        for mask, name in ((~is_fake, "real"), (is_fake, "fake")):
            ax.hist(scores[mask], bins=bins, alpha=0.6, label=f"{name} ({int(mask.sum())})")
        if threshold is not None:
            ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
        ax.set(xlabel="P(fake)", ylabel="images", title=title or "scores")
        ax.legend()
        return _png(fig)
    finally:
        plt.close(fig)


def scan_histogram_png(scores: Sequence[float], *, threshold: float | None = None, title: str = "") -> bytes:
    """Histogram of the P(fake) scores of one scan (no labels known), the part at or above
    ``threshold`` in its own colour; log count axis so that a few flagged images among
    many stay visible. Missing scores (error rows, NaN) are left out."""
    return scan_histograms_png([(title or "scores", scores, threshold)])


def scan_histograms_png(panels: Sequence[tuple[str, Sequence[float], float | None]]) -> bytes:
    """One ``scan_histogram_png`` panel per ``(title, scores, threshold)``, two columns."""
    if not panels:
        raise ValueError("no scans to plot")
    cols = 1 if len(panels) == 1 else 2
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.2 * rows), constrained_layout=True, squeeze=False)
    try:
        for ax, (title, scores, threshold) in zip(axes.flat, panels):
            _scan_histogram(ax, np.asarray(scores, dtype=np.float64), threshold, title)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_axis_off()
        return _png(fig)
    finally:
        plt.close(fig)


def _scan_histogram(ax: Any, scores: np.ndarray, threshold: float | None, title: str) -> None:
    scores = scores[np.isfinite(scores)]
    bins = np.linspace(0, 1, 51)
    if threshold is None:
        ax.hist(scores, bins=bins, color="tab:blue", label=f"scored ({scores.size})")
    else:
        above = scores >= threshold
        ax.hist(scores[~above], bins=bins, color="tab:blue", label=f"below ({int((~above).sum())})")
        ax.hist(scores[above], bins=bins, color="tab:red", label=f"flagged ({int(above.sum())})")
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3f}")
    if scores.size:
        ax.set_yscale("log")
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no scored images", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="P(fake)", ylabel="images", xlim=(0, 1), title=title)
    ax.grid(alpha=0.3)

def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _values(history: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [float("nan") if h.get(key) is None else float(h[key]) for h in history]
