"""Detection quality of one trained model across the shared sets: one row of the table in
docs/QUALITY.md.

- the held-out validation split of ``--data`` (the training run's ``--seed`` and
  ``--val-fraction``): AUC, TPR at 1% and 5% FPR, and the AUC change when the same images
  are re-saved as JPEG q90/q75/q50, down-scaled by 0.5 or 0.8 or up-scaled by 1.5
  (``jobs.evaluate``, ``jobs.robustness``), each with
  its 95% bootstrap interval (the changes paired: the same resampled images before and after);
- ``multigen-probe`` (fakes of 9 generators, never trained on): the share of each
  generator's images flagged at the model's own calibrated threshold (its 5%-FPR
  threshold on real validation photos), scored exactly as a scan scores them, and each
  generator's AUC against those real validation photos (no threshold);
- ``cifake-4k`` (32 px, another generator): AUC on 500 + 500 images.

    .venv/bin/python benchmarks/detection_quality.py --model /tmp/run --data ../shared/data/sd-coco-dev

Prints a table and one line of JSON.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import SHARED_DATA, json_line, model_quality_parser  # noqa: E402
from detector.decode import decode_image  # noqa: E402
from detector.inference import Detector  # noqa: E402
from jobs import evaluate  # noqa: E402
from jobs.storage.models import load_model  # noqa: E402

SHARED = SHARED_DATA


def by_generator(detector: Detector, folder: Path, reals: np.ndarray, batch: int = 16) -> tuple[dict, dict]:
    """Each generator's (file prefix before ``__``) share of images with score >= threshold,
    and its AUC against ``reals`` (scores of real photos): the same comparison without the
    threshold, which rests on a few real images (5% of 80). Both with an ``all`` entry."""
    files = sorted(folder.glob("*.jpg"))
    scores: dict[str, list[float]] = defaultdict(list)
    for i in range(0, len(files), batch):
        chunk = files[i:i + batch]
        images = []
        for f in chunk:
            image = decode_image(f.read_bytes()).image
            images.append((*detector.preset.prepare(image), image.width, image.height))
        for f, s in zip(chunk, detector.score_tiles(images)):
            scores[f.name.split("__")[0]].append(s.prob_fake)
    groups = {g: np.asarray(v) for g, v in sorted(scores.items())}
    groups["all"] = np.concatenate(list(groups.values()))
    flagged = {g: float(np.mean(v >= detector.threshold)) for g, v in groups.items()}
    auc = {g: float(roc_auc_score(np.r_[np.zeros(len(reals)), np.ones(len(v))], np.r_[reals, v]))
           for g, v in groups.items()}
    return flagged, auc


def _span(v: list[float], fmt: str = ".3f") -> str:
    return f"[{v[0]:{fmt}}, {v[1]:{fmt}}]"


def main(argv=None) -> None:
    p = model_quality_parser(__doc__)
    p.add_argument("--runtime", default="torch", help="torch (the reference) or openvino")
    args = p.parse_args(argv)
    val = evaluate.run(evaluate.EvaluateConfig(data=args.data, model=args.model, split="validation", seed=args.seed,
                                               robustness=("jpeg90", "jpeg75", "jpeg50", "downscale0.5",
                                                           "downscale0.8", "upscale1.5")), keep_scores=True)
    detector = Detector(load_model(args.model)[1], runtime=args.runtime)
    per_image = val.pop("per_image")
    reals = np.asarray(per_image["clean"])[~np.asarray(per_image["is_fake"]).astype(bool)]
    multigen, multigen_auc = by_generator(detector, SHARED / "multigen-probe" / "fake", reals)
    cifake = evaluate.run(evaluate.EvaluateConfig(data=str(SHARED / "cifake-4k"), model=args.model, max_images=500))
    row = {
        "model_version": detector.model_version, "threshold": detector.threshold,
        "val_auc": val["auc"], "val_tpr_at_1pct_fpr": val["tpr_at_1pct_fpr"], "val_tpr_at_5pct_fpr": val["tpr_at_5pct_fpr"],
        **{f"auc_change_{k}": v["auc_change"] for k, v in val["robustness"].items()},
        # 95% bootstrap intervals over the held-out images (jobs.metrics.Bootstrap; changes paired)
        "val_auc_interval": val["intervals"]["auc"], "val_tpr_at_5pct_fpr_interval": val["intervals"]["tpr_at_5pct_fpr"],
        **{f"auc_change_{k}_interval": v["auc_change_interval"] for k, v in val["robustness"].items()},
        "multigen_flagged": multigen, "multigen_auc_vs_val_reals": multigen_auc, "cifake_auc": cifake["auc"],
    }
    iv = val["intervals"]
    print(f"validation ({val['n']} images): AUC {val['auc']:.4f} {_span(iv['auc'])}, TPR@1% {val['tpr_at_1pct_fpr']:.3f}, "
          f"TPR@5% {val['tpr_at_5pct_fpr']:.3f} {_span(iv['tpr_at_5pct_fpr'])}   (95% intervals, resampling the images)")
    for k, v in val["robustness"].items():
        print(f"  {k}: AUC {v['auc']:.4f} ({v['auc_change']:+.4f} {_span(v['auc_change_interval'], '+.3f')})")
    print("multigen-probe flagged at the model's threshold: " + ", ".join(f"{g} {v:.0%}" for g, v in multigen.items()))
    print(f"multigen-probe AUC against the {len(reals)} real validation photos (no threshold): "
          + ", ".join(f"{g} {v:.3f}" for g, v in multigen_auc.items()))
    print(f"cifake-4k ({cifake['n']} images): AUC {cifake['auc']:.4f}")
    print(json_line(row))


if __name__ == "__main__":
    main()
