"""The loop each Ray Train worker runs for jobs.train (``TorchTrainer(train_loop, ...)``).

Data path. The driver lists and splits the data (jobs.train.data) and puts the
``(uri, label)`` lists in the loop config. Each worker fetches the bytes it needs
through jobs.storage (local paths, or ``s3://`` from any node), decodes them with
detector.decode and applies the preset's transforms in a torch ``DataLoader``. A seeded
``DistributedSampler`` gives each worker its shard of the training set every epoch;
each worker scores every ``world_size``-th validation image with the bare model and the
scores are all-gathered, so every rank computes the same, exact validation metrics.
(The sampler is built here rather than by ``prepare_data_loader``, which would seed it
with 0 and move batches that also carry URIs' error strings.)
Not Ray Data: ``read_images`` resamples and fails a task on one bad file,
and a per-file failure here must still be a sample that every rank steps on (DDP needs
the same number of steps everywhere): a file that cannot be read or decoded becomes a
zero image with weight 0, and its URI and reason are gathered, kept in the checkpoint
and reported.

Checkpoint, written by rank 0 each epoch into Ray Train's checkpoint folder:
``model.safetensors`` (detector.checkpoint: weights, preset, this epoch's calibrated
threshold and metrics), ``optimizer.pt`` (optimizer state and epoch, tensors only:
``torch.load(weights_only=True)``) and ``state.json`` (history, skipped files, resumes).
With ``--ema-decay`` the weights validated and checkpointed are the average
(jobs/train/averaging.py), and the weights the optimizer steps go beside them.
A restarted worker group, or a re-run with the same ``--output``, resumes from the
latest one (``ray.train.get_checkpoint()``).
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
import time
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from detector.inference import score_images
from detector.model import build_model
from jobs.metrics import json_safe, validation_metrics
from jobs.observe.metrics import push_train_epoch
from jobs.runtime import Progress
from jobs.train.averaging import WeightAverage
from jobs.train.config import TrainConfig
from jobs.train.images import LabelledImages, collate_crops, collate_images
from jobs.train.run_state import TrainState, epoch_dir_name, read_epoch, write_epoch

# Measured here (1 thread, ResNet18 train step): channels_last is 1.4x faster at 224 px
# and 0.8x at 32 px.
CHANNELS_LAST_MIN_SIZE = 112
MAX_SKIPPED_FRACTION = 0.5  # beyond this the data or the credentials are wrong: fail


def train_loop(loop: dict[str, Any]) -> None:
    """Ray Train entry point; ``loop`` is built by jobs.train.loop_config()."""
    cfg = loop["config"]
    _quiet_report_logs()
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
    torch.set_num_threads(max(1, cpus))
    device = ray.train.torch.get_device()
    preset = cfg.make_preset()
    memory_format = torch.channels_last if cfg.image_size >= CHANNELS_LAST_MIN_SIZE else torch.contiguous_format

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    random.seed(f"{cfg.seed}:{rank}")  # the presets' augmentations draw from `random`
    model = build_model("none", arch=cfg.arch)
    if loop["init_weights"] is not None:
        model.load_state_dict(ray.get(loop["init_weights"]))
    optimizer_state, averaged_state, state = _restore(model, rank, world)
    model = ray.train.torch.prepare_model(model.to(memory_format=memory_format))  # DDP
    average = WeightAverage(_bare(model), cfg.ema_decay) if cfg.ema_decay else None  # --ema-decay
    if average is not None and averaged_state is not None:
        average.load(averaged_state)
    optimizer = _optimizer(model, cfg)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    train_loader, val_loader = _loaders(loop, preset, rank, world, cpus, device)

    def to_input(x: torch.Tensor) -> torch.Tensor:  # uint8 (B, 3, h, w) -> normalised, on the device
        return preset.normalize(x.to(device, non_blocking=True)).contiguous(memory_format=memory_format)

    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        start = time.monotonic()
        train_loader.sampler.set_epoch(epoch)
        progress = Progress(f"epoch {epoch}/{cfg.epochs} train images", len(train_loader.dataset), every_s=10)
        lr_at = _lr_schedule(cfg, first_step=(epoch - 1) * len(train_loader), steps=cfg.epochs * len(train_loader))
        train = _train_one_epoch(model, train_loader, optimizer, to_input, progress if rank == 0 else None, world,
                                 lr_at, cfg.label_smoothing, average)
        train_seconds = time.monotonic() - start
        if average is not None:  # the averaged weights are validated and published
            train["bn_recalibration_crops"] = average.recalibrate(
                train_loader.dataset, to_input, rank=rank, world=world, batch_size=train_loader.batch_size,
                seed=cfg.seed, epoch=epoch) * world
        val = _evaluate(average.module if average else _bare(model), preset, val_loader, memory_format,
                        cfg.threshold_fpr)
        for found in _gather({**train.pop("skipped"), **val.pop("skipped")}):
            state.skipped.update(found)
        entry = {"epoch": epoch, **train, **val, "seconds": round(time.monotonic() - start, 3),
                 "images_per_s": round(train["train_images"] / max(train_seconds, 1e-9), 2),
                 "skipped_files": len(state.skipped)}
        state.epoch = epoch
        state.history.append(json_safe(entry))
        _check_skipped(state, len(loop["train"]) + len(loop["validation"]))
        if rank == 0:
            print(_epoch_line(entry, cfg.epochs), flush=True)
            push_train_epoch(loop.get("metrics_push"), cfg.output, entry)  # --metrics-push
        _report(model, average, preset, entry, state, loop, rank, optimizer)


def _restore(model: torch.nn.Module, rank: int, world: int) -> tuple[dict | None, dict | None, TrainState]:
    """Load the latest checkpoint's training weights into ``model``, if this run has one:
    after a worker failure, or when a re-run finds the run folder of an earlier one.
    Returns (optimizer state, averaged weights or None, state)."""
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return None, None, TrainState()
    with checkpoint.as_directory() as d:
        model_state, optimizer_state, state, averaged_state = read_epoch(d)
    model.load_state_dict(model_state)
    state.resumes.append({"from_epoch": state.epoch, "world_size": world})
    if rank == 0:
        print(f"resuming from the checkpoint of epoch {state.epoch}", flush=True)
    return optimizer_state, averaged_state, state


def _loaders(loop, preset, rank, world, cpus, device) -> tuple[DataLoader, DataLoader]:
    """This rank's shard of the training set (reshuffled each epoch) and every
    ``world``-th validation image."""
    cfg = loop["config"]
    per_worker_batch = cfg.batch_size // world
    train_set = LabelledImages(loop["train"], preset, cfg.max_pixels, repeats=cfg.crops_per_image)
    val_set = LabelledImages(loop["validation"][rank::world], preset, cfg.max_pixels, train=False)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    # Same shard length on every rank, so the same decision everywhere: drop a last batch
    # of one image only (BatchNorm cannot train on it once layer4 is 1x1 at 32 px).
    drop_last = sampler.num_samples % per_worker_batch == 1
    # Decoding in the training process is enough for 1-2 CPUs per worker; with more,
    # a few loader processes keep a GPU fed.
    workers = min(4, cpus - 1) if cpus >= 3 else 0
    args = dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    return (DataLoader(train_set, per_worker_batch, sampler=sampler, drop_last=drop_last,
                       collate_fn=collate_crops, **args),
            DataLoader(val_set, per_worker_batch, shuffle=False, collate_fn=collate_images, **args))


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        # no decay on BatchNorm and biases (1-d tensors), as is usual
        decay = [p for p in model.parameters() if p.ndim > 1]
        rest = [p for p in model.parameters() if p.ndim <= 1]
        return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                  {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _lr_schedule(cfg: TrainConfig, first_step: int, steps: int):
    """Step index within the epoch -> learning rate. A pure function of the global step, so a
    resumed run continues the same curve without scheduler state."""
    peak = cfg.lr
    if cfg.schedule != "cosine":
        return lambda i: peak
    warmup = max(1, steps // 10)

    def lr_at(i: int) -> float:
        step = first_step + i
        if step < warmup:
            return peak * (step + 1) / warmup
        return 0.5 * peak * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))
    return lr_at


def _train_one_epoch(model, loader, optimizer, to_input, progress, world, lr_at, smoothing,
                     average: WeightAverage | None) -> dict[str, Any]:
    model.train()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, images
    skipped: dict[str, str] = {}
    for step, (x, y, index, errors) in enumerate(loader):  # x: uint8 (B, 3, h, w)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        ok = torch.tensor([not e for e in errors], dtype=torch.float32)
        skipped.update({loader.dataset.samples[i][0]: e for i, e in zip(index.tolist(), errors) if e})
        logits = model(to_input(x))  # (B, 2)
        y, ok = y.to(logits.device), ok.to(logits.device)
        losses = F.cross_entropy(logits, y, reduction="none", label_smoothing=smoothing)
        loss = (losses * ok).sum() / ok.sum().clamp(min=1)  # CrossEntropyLoss's mean over real samples
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update(_bare(model))
        correct = ((logits.argmax(1) == y).float() * ok).sum()
        totals += torch.stack([(losses.detach() * ok).sum(), correct, ok.sum()]).double().cpu()
        if progress is not None:
            progress.update(len(y) * world, loss=f"{loss.item():.4f}")
    if dist.is_available() and dist.is_initialized():
        totals = totals.to(_collective_device())
        dist.all_reduce(totals)
        totals = totals.cpu()
    loss_sum, correct, n = totals.tolist()
    return {"train_loss": loss_sum / max(n, 1), "train_accuracy": correct / max(n, 1),
            "train_images": int(n), "skipped": skipped}


@torch.no_grad()
def _evaluate(model, preset, loader, memory_format, target_fpr: float) -> dict[str, Any]:
    """Validation scored exactly as the scan scores: the whole picture, its tiles combined
    (detector.inference.score_images)."""
    model.eval()
    probs, labels, losses, skipped = [], [], [], {}
    for images, y, index, errors in loader:
        ok = np.array([not e for e in errors])
        skipped.update({loader.dataset.samples[i][0]: e for i, e in zip(index.tolist(), errors) if e})
        scored = score_images(model, preset, [im for im, good in zip(images, ok) if good], memory_format=memory_format)
        if not scored:
            continue
        logits = torch.tensor(np.stack([s.logits for s in scored]))  # (b, 2)
        probs.append(np.array([s.prob_fake for s in scored], np.float32))
        losses.append(F.cross_entropy(logits, y[ok], reduction="none").numpy())
        labels.append(y.numpy()[ok])
    local = [np.concatenate(a) if a else np.zeros(0) for a in (probs, labels, losses)]
    gathered = _gather(local)
    prob_fake, label, loss = (np.concatenate([g[k] for g in gathered]) for k in range(3))
    return {**validation_metrics(prob_fake, label.astype(int), loss, target_fpr=target_fpr),
            "val_images": len(label), "skipped": skipped}


def _report(model, average, preset, entry, state, loop, rank, optimizer) -> None:
    """Every rank reports the epoch's metrics; rank 0 attaches the checkpoint: the averaged
    weights when averaging (what was validated), the training weights beside them."""
    metrics = {k: v for k, v in entry.items() if isinstance(v, (int, float))}
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:  # Ray Train copies it into the run folder
        write_epoch(d, average.module if average else model, optimizer, state, preset=preset,
                    threshold=entry["threshold"], metrics=json_safe(metrics), data_summary=loop["data_summary"],
                    recipe=loop["config"].recipe, training_model=_bare(model) if average else None)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                         checkpoint_dir_name=epoch_dir_name(state.epoch))


def _gather(obj: Any) -> list[Any]:
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _bare(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP: evaluation runs a different number of batches per rank, and
    DDP's forward would wait for the other ranks (buffer broadcast)."""
    return getattr(model, "module", model)


def _check_skipped(state: TrainState, total: int) -> None:
    if len(state.skipped) > MAX_SKIPPED_FRACTION * total:
        first = "; ".join(f"{u}: {r}" for u, r in list(state.skipped.items())[:3])
        raise RuntimeError(
            f"{len(state.skipped)} of {total} images could not be read or decoded, e.g. {first}. "
            f"Check the data, and that the workers have the storage credentials (AWS_*)."
        )


def _quiet_report_logs() -> None:
    """Ray 2.60 logs every report's metrics at INFO on a logger named by file path
    (``getLogger(__file__)``), which LoggingConfig(log_level) does not reach."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version: nothing to quiet
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _epoch_line(e: dict[str, Any], epochs: int) -> str:
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    return (f"epoch {e['epoch']}/{epochs}: train loss {f(e['train_loss'])} acc {f(e['train_accuracy'])} | "
            f"val loss {f(e['val_loss'])} acc {f(e['val_accuracy'])} auc {f(e['val_auc'])} | "
            f"threshold {f(e['threshold'])} (val fpr {f(e['val_fpr_at_threshold'])}, "
            f"tpr {f(e['val_tpr_at_threshold'])}) | {e['seconds']:.1f} s, {e['images_per_s']:.1f} img/s"
            + (f" | {e['skipped_files']} files skipped" if e["skipped_files"] else ""))

