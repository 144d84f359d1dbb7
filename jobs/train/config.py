"""What a training run is asked to do: ``TrainConfig``, and each preset's recipe.

``--preset`` picks the preprocessing and the recipe defaults (``RECIPES``); a value given
explicitly overrides one entry. The config is resolved and checked once, in
``__post_init__``, so ``jobs.train.run(config)`` called from Python checks too, and the
same frozen dataclass travels to every Ray Train worker (jobs/train/loop.py).

    python -c "from jobs.train.config import TrainConfig; print(TrainConfig(data='d', output='o'))"
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from detector.decode import DEFAULT_MAX_PIXELS
from detector.model import ARCHITECTURES, WEIGHT_CHOICES
from detector.presets import PRESETS, Preset, get_preset
from jobs import cli, storage
from jobs.storage.allowed import AllowedRoots

NATIVE_CROP, NATIVE_EPOCHS, NATIVE_CROPS_PER_IMAGE = 96, 16, 4  # docs/QUALITY.md
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
SELECT_BY = ("val_accuracy", "val_auc")
# Each preset's recipe; explicit flags override single entries.
RECIPES: dict[str, dict[str, Any]] = {
    # the original project, exactly
    "baseline": dict(epochs=10, batch_size=32, lr=0.003, optimizer="adam", weight_decay=0.0,
                     schedule="constant", label_smoothing=0.0, image_size=224, crops_per_image=1, arch="resnet18",
                     select_by="val_accuracy"),
    # from scratch at native resolution: small random crops make many cheap steps; eval on a
    # larger centre crop; AdamW + warm-up/cosine and label smoothing (docs/QUALITY.md)
    "native": dict(epochs=NATIVE_EPOCHS, batch_size=32, lr=0.001, optimizer="adamw", weight_decay=0.05,
                   schedule="cosine", label_smoothing=0.1, image_size=NATIVE_CROP, arch="resnet18-npr",
                   crops_per_image=NATIVE_CROPS_PER_IMAGE, select_by="val_auc"),
}


@dataclass(frozen=True)
class TrainConfig:
    data: str
    output: str
    preset: str = "native"  # the better recipe; "baseline" is the original project (docs/QUALITY.md); None: native
    # None: the preset's recipe (RECIPES); an explicit value overrides it.
    epochs: int | None = None
    batch_size: int | None = None  # global: split evenly over the workers
    lr: float | None = None  # peak learning rate with --schedule cosine
    optimizer: str | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    label_smoothing: float | None = None
    image_size: int | None = None  # the train crop (native) or resize (baseline)
    tile_size: int | None = None  # native only: the largest region scored in one pass (validation, scan)
    max_tiles: int | None = None  # native only: tiles per picture larger than tile_size (cost bound)
    arch: str | None = None  # detector.model.ARCHITECTURES
    crops_per_image: int | None = None  # training samples per image per epoch (native: random crops)
    select_by: str | None = None  # the validation metric that picks the published epoch
    ema_decay: float | None = None  # weight averaging (jobs/train/averaging.py); None or 0: off
    # native only, the preset's training augmentation (detector/presets.py checks the bounds)
    jpeg_prob: float | None = None
    resample_prob: float | None = None
    resample_scale: tuple[float, float] | None = None
    squash_fake_prob: float | None = None
    weights: str = "none"
    num_workers: int = 1
    cpus_per_worker: int | None = None  # None: the cluster's CPUs / num_workers, at most one node's (_fill_cpus)
    use_gpu: bool = False
    val_fraction: float = 0.2
    seed: int = 0
    max_failures: int = 0
    threshold_fpr: float = 0.05
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_prefix: tuple[str, ...] = ()  # where --data manifest entries may point; () = its bucket or folder
    init_from: str | None = None  # a genscan model to fine-tune (jobs/train/init_from.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow_prefix", tuple(self.allow_prefix or ()))  # the flag gives a list or None
        if self.preset is None:  # the flag's "not given" (--init-from then takes the model's)
            object.__setattr__(self, "preset", "native")
        if self.resample_scale is not None:
            object.__setattr__(self, "resample_scale", tuple(self.resample_scale))
        problems = cli.uri_problems(data=self.data, output=self.output, weights=self.weights, init_from=self.init_from)
        if self.init_from and self.weights != "none":
            problems.append("--init-from and --weights both give the initial weights; give one")
        problems += cli.finite_problems(lr=self.lr, weight_decay=self.weight_decay, label_smoothing=self.label_smoothing,
                                        val_fraction=self.val_fraction, threshold_fpr=self.threshold_fpr,
                                        ema_decay=self.ema_decay)
        try:
            AllowedRoots(self.allow_prefix)
        except ValueError as e:
            problems.append(str(e))
        if problems:  # before the recipe: an empty --data must not reach the checks below
            raise ValueError("; ".join(problems))
        recipe = RECIPES.get(self.preset, {})
        for name, value in recipe.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)  # frozen: resolved once, here
        checks = [
            (self.preset in PRESETS, f"--preset must be one of {', '.join(PRESETS)}"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.num_workers >= 1, "--num-workers must be at least 1"),
            (self.cpus_per_worker is None or self.cpus_per_worker >= 1, "--cpus-per-worker must be at least 1"),
            (self.batch_size >= self.num_workers and self.batch_size % self.num_workers == 0,
             f"--batch-size is the global batch, split over the workers: make it a multiple of "
             f"--num-workers ({self.num_workers}), e.g. "
             f"{max(1, self.batch_size // self.num_workers) * self.num_workers}"),
            (self.lr > 0, "--lr must be positive"),
            (self.crops_per_image >= 1, "--crops-per-image must be at least 1"),
            (self.select_by in SELECT_BY, f"--select-by must be one of {', '.join(SELECT_BY)}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
            (self.weight_decay >= 0, "--weight-decay must be 0 or more"),
            (0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1), e.g. 0.1"),
            (16 <= self.image_size <= 4096, "--image-size must be 16-4096"),
            (all(v is None for v in self._native_only().values()) or self.preset == "native",
             "--tile-size, --max-tiles, --jpeg-prob, --resample-prob, --resample-scale and --squash-fake-prob "
             "are for --preset native only"),
            (self.ema_decay is None or 0 <= self.ema_decay < 1,
             "--ema-decay must be in [0, 1), e.g. 0.995 (0: no weight averaging)"),
            (self.arch in ARCHITECTURES, f"--arch must be one of {', '.join(ARCHITECTURES)}"),
            (0 < self.val_fraction < 1, "--val-fraction must be between 0 and 1, e.g. 0.2"),
            (self.max_failures >= -1, "--max-failures must be -1 (retry forever), 0 or more"),
            (0 <= self.threshold_fpr <= 1, "--threshold-fpr is a rate between 0 and 1, e.g. 0.05"),
            (self.max_pixels > 0, "--max-pixels must be positive"),
            (self.weights in WEIGHT_CHOICES or (not storage.is_s3(self.weights) and os.path.isfile(self.weights)),
             f"--weights must be {' or '.join(WEIGHT_CHOICES)}, or a local weights file; {self.weights!r} is neither"),
            (_normal(self.data) != _normal(self.output), "--output must differ from --data"),
            (not _normal(self.output).startswith(_normal(self.data).rstrip("/") + "/"),
             "--output must not be inside --data (its files would be listed as training images)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.make_preset()  # the preset's own bounds (tile size, tiles, ...): now, not on a worker

    @property
    def recipe(self) -> dict[str, Any]:
        """The training recipe, as recorded in the checkpoint and metrics.json."""
        return {"optimizer": self.optimizer, "lr": self.lr, "weight_decay": self.weight_decay,
                "schedule": self.schedule, "loss": "CrossEntropyLoss", "label_smoothing": self.label_smoothing,
                "batch_size": self.batch_size, "epochs": self.epochs, "seed": self.seed,
                "crops_per_image": self.crops_per_image, "select_by": self.select_by,
                "weights": self.weights, "init_from": self.init_from, "threshold_fpr": self.threshold_fpr, "arch": self.arch,
                "ema_decay": self.ema_decay or None}

    def make_preset(self) -> Preset:
        """The preprocessing preset this run trains with (and its checkpoints record)."""
        overrides = {k: v for k, v in self._native_only().items() if v is not None}
        return get_preset(self.preset, image_size=self.image_size, **overrides)

    def _native_only(self) -> dict[str, Any]:
        """The native preset's parameters a flag may override (None: the preset's default)."""
        return {"tile_size": self.tile_size, "max_tiles": self.max_tiles, "jpeg_prob": self.jpeg_prob,
                "resample_prob": self.resample_prob, "resample_scale": self.resample_scale,
                "squash_fake_prob": self.squash_fake_prob}


def _normal(uri: str) -> str:
    return uri.rstrip("/") if storage.is_s3(uri) else os.path.abspath(uri)
