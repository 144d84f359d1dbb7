"""Do the model runtimes agree with torch on a trained model? Scores and heat maps of the
validation split of ``--data`` (the training run's ``--seed`` and ``--val-fraction``), each
image scored as a scan scores it (detector.inference, whole picture, tiles), once per
runtime: max |dP(fake)|, the lowest heat-map correlation, AUC per runtime and its change.

The bar (detector/backends.py, BENCHMARKS.md): max |dP(fake)| <= 0.01,
heat-map correlation >= 0.99, AUC change <= 0.002. Not a timing: run it any time.

    .venv/bin/python benchmarks/runtime_agreement.py --model /tmp/run --data ../shared/data/sd-coco-dev

Prints a table and one line of JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import json_line, model_quality_parser  # noqa: E402
from detector.backends import available  # noqa: E402
from detector.decode import decode_image  # noqa: E402
from detector.inference import Detector, ImageScore  # noqa: E402
from detector.model import FAKE  # noqa: E402
from jobs import storage  # noqa: E402
from jobs.metrics import binary_metrics  # noqa: E402
from jobs.storage.models import load_model  # noqa: E402
from jobs.train.data import list_labelled  # noqa: E402



def score_all(detector: Detector, images: list, batch: int = 16) -> list[ImageScore]:
    out: list[ImageScore] = []
    for i in range(0, len(images), batch):
        out += detector.score_tiles(images[i:i + batch])
    return out


def main(argv=None) -> None:
    p = model_quality_parser(__doc__)
    p.add_argument("--val-fraction", type=float, default=0.2)
    args = p.parse_args(argv)
    checkpoint = load_model(args.model)[1]
    samples = list_labelled(args.data, val_fraction=args.val_fraction, seed=args.seed).validation
    decoded = [decode_image(storage.read_bytes(s.uri)).image for s in samples]
    images = [(*checkpoint.preset.prepare(im), im.width, im.height) for im in decoded]
    labels = np.array([s.label == FAKE for s in samples])
    scores = {rt: score_all(Detector(checkpoint, runtime=rt), images) for rt in available()}
    ref = scores["torch"]
    p_ref = np.array([s.prob_fake for s in ref])
    auc_ref = binary_metrics(p_ref, labels, checkpoint.threshold, curves=False)["auc"]
    row: dict = {"model_version": checkpoint.model_version, "images": len(samples), "auc_torch": auc_ref}
    print(f"{len(samples)} validation images of {args.data} (seed {args.seed}); model {checkpoint.model_version}")
    print(f"{'runtime':<10}{'AUC':>8}{'dAUC':>9}{'max|dP|':>10}{'min cam r':>11}")
    print(f"{'torch':<10}{auc_ref:>8.4f}{'':>9}{'':>10}{'':>11}")
    for rt, got in scores.items():
        if rt == "torch":
            continue
        p_rt = np.array([s.prob_fake for s in got])
        auc = binary_metrics(p_rt, labels, checkpoint.threshold, curves=False)["auc"]
        corr = [np.corrcoef(a.cam.ravel(), b.cam.ravel())[0, 1] for a, b in zip(ref, got)
                if a.cam.size > 1 and a.cam.std() > 0 and b.cam.std() > 0]
        row.update({f"auc_{rt}": auc, f"auc_change_{rt}": auc - auc_ref,
                    f"max_abs_dp_{rt}": float(np.abs(p_rt - p_ref).max()), f"min_cam_corr_{rt}": float(min(corr))})
        print(f"{rt:<10}{auc:>8.4f}{auc - auc_ref:>+9.4f}{row[f'max_abs_dp_{rt}']:>10.4f}{min(corr):>11.4f}")
    print(json_line(row))


if __name__ == "__main__":
    main()
