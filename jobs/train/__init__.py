"""Train the real/fake detector with Ray Train (data-parallel, fault tolerant).

    # the original recipe (ResNet18, Adam 0.003, global batch 32, 10 epochs, 224 px), embedded Ray
    python -m jobs.train --data ../shared/data/cifake-4k --output /tmp/detector
    # native resolution: 96 px random crops, 320 px eval crop, JPEG/blur augmentation on
    # both classes, AdamW + warm-up/cosine, label smoothing (docs/QUALITY.md); any
    # recipe value can be overridden, e.g. --epochs 60 --lr 0.001
    python -m jobs.train --data ../shared/data/sd-coco-dev --output /tmp/detector --preset native
    # small images, two CPU workers, three epochs
    python -m jobs.train --data ../shared/data/cifake-4k/manifest.csv --output /tmp/detector \\
        --image-size 32 --num-workers 2 --epochs 3
    # fine-tune an earlier model on the moderators' decisions (jobs.review export): its
    # architecture and preset are kept (jobs/train/init_from.py)
    python -m jobs.train --data labels.csv --init-from s3://models/detector-v1 \\
        --output s3://models/detector-v2 --allow-prefix s3://uploads --epochs 2
    # a cluster: S3 in and out, GPU workers
    ray job submit --working-dir . -- python -m jobs.train --data s3://labelled/ \\
        --output s3://models/detector-v3 --num-workers 8 --use-gpu --max-failures 3

``--preset`` picks the preprocessing and the recipe defaults (``RECIPES``: epochs, batch
size, learning rate, optimizer, weight decay, schedule, label smoothing, sizes); flags
given explicitly override single values. Before training, jobs/train/datacheck.py compares the
classes' file formats, sizes and JPEG qualities on a sample and warns when they differ.

``--data`` is a folder or ``s3://`` prefix with ``real/`` and ``fake/`` (any depth), or
``train/{real,fake}`` + ``validation/{real,fake}``, or a CSV/Parquet manifest
``uri,label[,split]`` (see jobs/train/data.py). ``--output`` (folder or ``s3://``) receives:

- ``model.safetensors``: the epoch with the best validation accuracy (of equal ones, the
  later, as Ray Train keeps them), with the threshold calibrated on validation for
  ``--threshold-fpr``; ``detector.checkpoint.load_checkpoint(OUT)``
  and ``python -m jobs.scan --model OUT`` read it;
- ``metrics.json``: ``history`` (one entry per epoch), best epoch, threshold, data
  summary with the skipped files and why, the dataset check (``data_check``: per class
  file format, size and JPEG quality on a sample, and warnings when the classes differ;
  jobs/train/datacheck.py), the configuration; written last;
- ``training_curves.png``;
- ``ray-train/``: Ray Train's run folder with the best and the latest checkpoints. A
  re-run with the same ``--output`` (after a crash, or with more ``--epochs``) resumes
  from the latest one; with other data or settings it is refused.

Workers read their own shard (jobs/train/loop.py). S3 settings and credentials come from
each Ray process's own environment (jobs.storage ships no secrets): an embedded Ray
inherits the driver's AWS_* variables; on a cluster, give the nodes an IAM role (instance
profile, IRSA), or set the AWS_* variables on every node's processes (a Kubernetes Secret
mounted as env vars, ``envFrom: secretRef``, on the RayCluster's pods, or the environment
of ``ray start``). Never pass secrets with ``ray job submit --runtime-env-json``: Ray keeps
the runtime env in its job records, readable on the dashboard and through the job API.

A manifest's entries must lie under ``--allow-prefix`` (default: the manifest's own bucket
or folder; ``'*'``: anything). Failures print one ``train failed: ...`` line with the exit
code of their kind (jobs/cli.py); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any

import ray
from ray.train import (
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer

from detector.model import ARCHITECTURES, build_model
from detector.presets import PRESETS
from jobs import cli, observe, storage
from jobs.runtime import ensure_ray
from jobs.train import init_from
from jobs.train.config import OPTIMIZERS, RECIPES, SCHEDULES, SELECT_BY, TrainConfig
from jobs.train.data import LabelledData, list_labelled
from jobs.train.loop import train_loop
from jobs.train.output import publish
from jobs.train.run_state import RUN_DIR, RunConflictError, claim_run_dir

__all__ = ["RECIPES", "RUN_DIR", "RunConflictError", "TrainConfig", "get_args_parser", "main", "run"]


def get_args_parser() -> argparse.ArgumentParser:
    """One flag per TrainConfig field (long: it is the list of flags)."""
    d = TrainConfig.__dataclass_fields__
    p = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                allow_abbrev=False)  # --epoch must fail, not mean --epochs
    p.add_argument("--data", required=True, help="labelled images: folder, s3:// prefix, or CSV/Parquet manifest")
    p.add_argument("--output", required=True, help="folder or s3:// prefix for the checkpoint, metrics and curves")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help=f"preprocessing preset (default: {d['preset'].default}, or --init-from's); it also picks "
                        "the recipe defaults below (None = the preset's: "
                        + "; ".join(f"{k}: {v}" for k, v in RECIPES.items()) + ")")
    p.add_argument("--epochs", type=int, default=None, help="epochs to train (in total, when resuming)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size")
    p.add_argument("--lr", type=float, default=None, help="learning rate (the peak, with --schedule cosine)")
    p.add_argument("--optimizer", default=None, choices=OPTIMIZERS, help="optimizer")
    p.add_argument("--weight-decay", type=float, default=None, help="weight decay (decoupled with adamw)")
    p.add_argument("--schedule", default=None, choices=SCHEDULES,
                   help="learning rate per step: constant, or linear warm-up (first 10%%) then cosine to 0")
    p.add_argument("--label-smoothing", type=float, default=None, help="cross-entropy label smoothing")
    p.add_argument("--image-size", type=int, default=None, help="model input size in pixels (native: the train crop)")
    p.add_argument("--tile-size", type=int, default=None,
                   help="native preset: pictures up to this size are scored whole, larger ones in tiles of it "
                        "(validation and scans; default 512)")
    p.add_argument("--max-tiles", type=int, default=None,
                   help="native preset: most tiles scored per picture, the cost bound (default 4: 1024 x 1024 whole)")
    p.add_argument("--arch", default=None, choices=sorted(ARCHITECTURES),
                   help="the network: resnet18 (torchvision's, whole) or resnet18-npr (NPR input, stem + layer1-2)")
    p.add_argument("--crops-per-image", type=int, default=None,
                   help="training samples drawn from each image per epoch (native: a new random crop each)")
    p.add_argument("--select-by", default=None, choices=SELECT_BY,
                   help="validation metric that picks the epoch published (the original: val_accuracy)")
    p.add_argument("--ema-decay", type=float, default=None,
                   help="weight averaging: validate and publish an exponential moving average of the weights "
                        "(decay per step, e.g. 0.995), BatchNorm statistics recomputed on training crops before "
                        "each validation; 0: off")
    p.add_argument("--jpeg-prob", type=float, default=None,
                   help="native preset: share of training crops re-compressed as JPEG, both classes (default 0.7)")
    p.add_argument("--resample-prob", type=float, default=None,
                   help="native preset: share of training crops down-scaled first, both classes (default 0.3)")
    p.add_argument("--resample-scale", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="native preset: the resizing factor's range, 0.1-2 (default 0.5 1.0: down-scaling only)")
    p.add_argument("--squash-fake-prob", type=float, default=None,
                   help="native preset: share of fake training crops first processed like a real photo "
                        "(resized from another size and aspect, JPEG twice; detector/presets.py); default 0")
    p.add_argument("--weights", default=d["weights"].default,
                   help="initial weights: none (random), imagenet (torchvision's, needs the internet once) or a local file")
    p.add_argument("--init-from", default=None, metavar="MODEL",
                   help="fine-tune this genscan model (a training output or its model.safetensors, local or s3://); "
                        "its architecture and preset are kept")
    p.add_argument("--num-workers", type=int, default=d["num_workers"].default, help="Ray Train workers (data-parallel)")
    p.add_argument("--cpus-per-worker", type=int, default=d["cpus_per_worker"].default,
                   help="CPUs reserved per worker, also its torch threads (default: an equal share of the "
                        "cluster's CPUs, at most one node's)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker (NCCL); default: CPU (gloo)")
    p.add_argument("--val-fraction", type=float, default=d["val_fraction"].default,
                   help="validation share per class when the data gives no split")
    p.add_argument("--seed", type=int, default=d["seed"].default, help="seed for the split, init and shuffling")
    p.add_argument("--max-failures", type=int, default=d["max_failures"].default,
                   help="worker-group restarts from the latest checkpoint before the run fails (-1: no limit)")
    p.add_argument("--threshold-fpr", type=float, default=d["threshold_fpr"].default,
                   help="target false-positive rate on real validation images for the operating threshold")
    p.add_argument("--max-pixels", type=int, default=d["max_pixels"].default,
                   help="larger images are skipped as possible decompression bombs")
    cli.add_allow_prefix_flag(p, "a --data")
    observe.add_flags(p, metrics_file=False, log_format=False)  # each epoch's metrics
    cli.add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = vars(parser.parse_args(argv))
    options = cli.job_options(parser, args)
    code, args = cli.run_main("train", lambda: init_from.adopt(args), debug=options.debug)  # a bad --init-from: exit 3
    if args is None:
        return code
    config = cli.build_config(parser, TrainConfig, args)
    code, _ = cli.run_main("train", lambda: (ensure_ray(), run(config, metrics_push=options.metrics_push)),
                           debug=options.debug)
    return code


def run(config: TrainConfig, *, metrics_push: str | None = None) -> dict[str, Any]:
    """Train, then publish the best checkpoint, metrics.json and the curves at config.output;
    ``metrics_push``: a Pushgateway that rank 0 pushes each epoch's metrics to (jobs.observe.metrics)."""
    start = time.monotonic()
    data = list_labelled(config.data, val_fraction=config.val_fraction, seed=config.seed,
                         allow_prefixes=config.allow_prefix or None)
    print(f"data: {data.layout} at {data.source}, counts {data.counts()}", flush=True)
    from jobs.train import datacheck  # here: `python -m jobs.train.datacheck` must not find it imported

    data_check = datacheck.check(data, seed=config.seed)
    for warning in data_check["warnings"]:
        print(f"warning: {warning}", flush=True)
    claim_run_dir(config, data)
    config = _fill_cpus(config)
    fs, path = storage.pyarrow_filesystem(config.output)
    _say_what_it_waits_for(config)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={**loop_config(config, data), "metrics_push": metrics_push},
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                     resources_per_worker={"CPU": config.cpus_per_worker}),
        run_config=RunConfig(
            name=RUN_DIR, storage_path=path, storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=config.max_failures),
            # Keeps the best by --select-by (the original rule: validation accuracy) and, always, the latest.
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=config.select_by,
                                               checkpoint_score_order="max"),
            worker_runtime_env={"env_vars": _worker_env()},
            logging_config=LoggingConfig(log_level="WARNING"),  # the loop prints one line per epoch
        ),
    )
    result = trainer.fit()
    best = result.get_best_checkpoint(metric=config.select_by, mode="max")
    if best is None or result.checkpoint is None:
        raise RuntimeError(f"the run at {storage.join(config.output, RUN_DIR)} reported no checkpoint")
    return publish(config, data, best, result.checkpoint, time.monotonic() - start, data_check=data_check)


def loop_config(config: TrainConfig, data: LabelledData) -> dict[str, Any]:
    """Everything the workers need: the typed config itself (a frozen dataclass travels
    as it is), the split as ``(uri, label)`` lists, one object ref for initial weights."""
    if config.init_from:
        init = ray.put(init_from.initial_state(config.init_from, arch=config.arch, preset=config.preset))
        print(f"fine-tuning {config.init_from} ({config.arch}, preset {config.preset})", flush=True)
    else:
        init = None if config.weights == "none" else ray.put(build_model(config.weights, arch=config.arch).state_dict())
    return {
        "config": config,
        "train": [(s.uri, s.label) for s in data.train],
        "validation": [(s.uri, s.label) for s in data.validation],
        "init_weights": init,
        "data_summary": data.summary(),
    }


def _say_what_it_waits_for(config: TrainConfig) -> None:
    need = {"CPU": config.num_workers * config.cpus_per_worker, "GPU": config.num_workers * config.use_gpu}
    have = ray.cluster_resources()
    print(f"training {config.epochs} epochs on {config.num_workers} workers "
          f"({config.cpus_per_worker} CPU{' + 1 GPU' if config.use_gpu else ''} each)", flush=True)
    short = {k: f"{have.get(k, 0):g} of {v}" for k, v in need.items() if have.get(k, 0) < v}
    if short:  # Ray Train then waits, quietly, for an autoscaler to add nodes
        print(f"the cluster has {', '.join(f'{k} {n}' for k, n in short.items())} needed now; "
              f"waiting for nodes to join (to run on what is there: fewer --num-workers or "
              f"--cpus-per-worker{', or no --use-gpu' if 'GPU' in short else ''})", flush=True)


def _fill_cpus(config: TrainConfig) -> TrainConfig:
    """Without --cpus-per-worker, each worker gets an equal share of the cluster's CPUs as
    it is now, but no more than its largest node has (a worker runs on one node)."""
    if config.cpus_per_worker is not None:
        return config
    if not ray.is_initialized():  # run() without main(): the local Ray that Ray Train would start
        ensure_ray()
    nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    share = int(ray.cluster_resources().get("CPU", 0)) // config.num_workers
    return dataclasses.replace(config, cpus_per_worker=max(1, min(share, int(max(nodes, default=1)))))


def _worker_env() -> dict[str, str]:
    # Ray Train 2.60 sends a worker's print() both to stdout and to a logger that also
    # writes to stdout, so every line showed twice.
    return {"RAY_TRAIN_ENABLE_PRINT_PATCH": os.environ.get("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")}


if __name__ == "__main__":
    sys.exit(main())
