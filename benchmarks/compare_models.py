"""Two trained models on the same held-out images, side by side: is B better than A, or
within what this many images can tell apart?

Both are scored on the validation split of ``--data`` (the runs' shared ``--seed``), clean
and under each ``--robustness`` transformation (``jobs.evaluate``). Every difference B - A
comes with a paired 95% bootstrap interval: the same resampled images for both models and
both scorings (jobs.metrics.Bootstrap), so an interval that holds 0 is a difference these
images cannot show. Different seeds mean different held-out images: compare runs of one
seed here, and look across seeds for the spread of a recipe.

    .venv/bin/python benchmarks/compare_models.py --model /tmp/default --model-b /tmp/variant --seed 0

``--fuse`` compares A with the two models together instead of with B alone: each image's
score is the sum of the two models' logits (a product of experts, equal weights, nothing
fitted on these images), what one network with both as branches would give. It measures
whether a second expert (e.g. one trained on down-scaled crops) adds what A lacks.

Prints a table and one line of JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import json_line, model_quality_parser  # noqa: E402
from jobs import evaluate  # noqa: E402
from jobs.metrics import Bootstrap, binary_metrics, interval  # noqa: E402

MEASURES = ("auc", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr")


def compare(a: dict, b: dict, *, resamples: int = 1000) -> list[dict]:
    """Rows (set, measure, A, B, B - A and its interval; ``auc_change`` rows compare the AUC
    each model loses to a transformation) from two ``evaluate.run(..., keep_scores=True)``."""
    pa, pb = _same_images(a, b)
    is_fake, sets = pa["is_fake"], [k for k in pa if k not in ("uri", "is_fake")]
    boot = Bootstrap(is_fake, resamples=resamples)
    curves = {(m, name): boot.curves(p[name]) for m, p in (("a", pa), ("b", pb)) for name in sets}
    point = {(m, name): binary_metrics(p[name], is_fake, 0.5) for m, p in (("a", pa), ("b", pb)) for name in sets}

    def row(name, measure, va, vb, spread_a, spread_b):
        return {"set": name, "measure": measure, "a": round(va, 4), "b": round(vb, 4), "b_minus_a": round(vb - va, 4),
                "interval": interval(spread_b - spread_a)}

    rows = []
    for name in sets:
        for measure in MEASURES:
            rows.append(row(name, measure, point[("a", name)][measure], point[("b", name)][measure],
                            curves[("a", name)][measure], curves[("b", name)][measure]))
        if name != "clean":
            change = {m: (point[(m, name)]["auc"] - point[(m, "clean")]["auc"],
                          curves[(m, name)]["auc"] - curves[(m, "clean")]["auc"]) for m in ("a", "b")}
            rows.append(row(name, "auc_change", change["a"][0], change["b"][0], change["a"][1], change["b"][1]))
    return rows


def fuse(a: dict, b: dict) -> dict:
    """The pair as one model: scores sigmoid(logit(P_a) + logit(P_b)), image by image (only
    what ``compare`` and the table read: B's own metrics would not be the pair's)."""
    pa, pb = _same_images(a, b)

    def logit(p):
        p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
        return np.log(p) - np.log1p(-p)

    sets = [k for k in pa if k not in ("uri", "is_fake")]
    per_image = {"uri": pa["uri"], "is_fake": pa["is_fake"]}
    per_image.update({k: 1 / (1 + np.exp(-(logit(pa[k]) + logit(pb[k])))) for k in sets})
    return {"model_version": f"{a['model_version']}+{b['model_version']}", "n": a["n"], "per_image": per_image}


def _same_images(a: dict, b: dict) -> tuple[dict, dict]:
    pa, pb = a["per_image"], b["per_image"]
    if pa["uri"] != pb["uri"]:
        raise SystemExit("the two models were not scored on the same images (another --data or --seed, or a decode error)")
    return pa, pb


def main(argv=None) -> None:
    p = model_quality_parser(__doc__)
    p.add_argument("--model-b", required=True, help="the jobs.train output to compare with --model")
    p.add_argument("--robustness", default="jpeg75,downscale0.5", help="transformations (jobs.evaluate --robustness)")
    p.add_argument("--fuse", action="store_true", help="B is A and --model-b together (sum of logits), not --model-b alone")
    args = p.parse_args(argv)
    results = [evaluate.run(evaluate.EvaluateConfig(data=args.data, model=m, split="validation", seed=args.seed,
                                                    robustness=args.robustness), keep_scores=True)
               for m in (args.model, args.model_b)]
    if args.fuse:
        results[1] = fuse(*results)
    rows = compare(*results)
    n = results[0]["n"]
    print(f"A {results[0]['model_version']} ({args.model}) vs B {results[1]['model_version']} ({args.model_b}): "
          f"{n} held-out images of seed {args.seed}; intervals: paired 95% bootstrap of B - A")
    print(f"{'set':<14}{'measure':<18}{'A':>8}{'B':>8}{'B - A':>9}  interval")
    for r in rows:
        lo, hi = r["interval"]
        verdict = "B better" if lo > 0 else "A better" if hi < 0 else "not told apart"
        print(f"{r['set']:<14}{r['measure']:<18}{r['a']:>8.3f}{r['b']:>8.3f}{r['b_minus_a']:>+9.3f}  "
              f"[{lo:+.3f}, {hi:+.3f}] {verdict}")
    print(json_line({"model_a": results[0]["model_version"], "model_b": results[1]["model_version"], "seed": args.seed,
                     "fused": args.fuse, "images": n, "rows": rows}))


if __name__ == "__main__":
    main()
