"""Weight averaging for jobs.train (``--ema-decay``): an exponential moving average (EMA)
of the parameters, updated after every optimizer step, is what each epoch validates and
what the run publishes (docs/QUALITY.md: the most stable recipe of the ablation; raw
weights swung from epoch to epoch, the average rose steadily).

torch's ``AveragedModel`` keeps the average. It averages the parameters only: BatchNorm's
running statistics of the raw model belong to the raw weights, so before each validation
``update_bn`` recomputes them for the averaged weights on ``BN_CROPS`` training crops
(the usual crops of the training set: the same preprocessing and augmentation the weights
were trained on, nothing more). Under DDP every worker holds the same parameters (the
gradients are all-reduced), so every worker's average is the same; each recalibrates on
its own share of the crops and the statistics are averaged over the workers, which is
exactly ``update_bn`` over all the crops (it averages per-batch statistics, and every
worker runs the same number of batches).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from jobs.train.images import LabelledImages, collate_crops

BN_CROPS = 256  # in all, over the workers: a few hundred crops settle the statistics


class WeightAverage:
    """The EMA of ``model``'s parameters (``model``: the bare module, not DDP)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))

    @property
    def module(self) -> torch.nn.Module:
        """The averaged network: validated, checkpointed and published."""
        return self.averaged.module

    def update(self, model: torch.nn.Module) -> None:
        """After an optimizer step (the first call copies the weights)."""
        self.averaged.update_parameters(model)

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Resume from a checkpoint's averaged weights (later updates average into them)."""
        self.module.load_state_dict(state)
        self.averaged.n_averaged.fill_(1)

    def recalibrate(self, dataset: LabelledImages, to_input: Callable[[torch.Tensor], torch.Tensor], *,
                    rank: int, world: int, batch_size: int, seed: int, epoch: int) -> int:
        """Recompute BatchNorm's running statistics for the averaged weights on training
        crops; returns the number of crops this worker used."""
        batches = max(1, math.ceil(BN_CROPS / (world * batch_size)))  # the same count on every worker
        order = torch.randperm(len(dataset.samples), generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        picks = [int(order[i % len(order)]) for i in range(rank, batches * batch_size * world, world)]
        used = [0]

        def inputs() -> Iterator[torch.Tensor]:
            for b in range(batches):
                crops = [dataset[i] for i in picks[b * batch_size:(b + 1) * batch_size]]
                crops = [c for c in crops if not c[3]]  # unreadable files are zero placeholders
                if crops:
                    used[0] += len(crops)
                    yield to_input(collate_crops(crops)[0])

        with torch.no_grad():
            update_bn(inputs(), self.module)
        if dist.is_available() and dist.is_initialized() and world > 1:
            for m in self.module.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    for buffer in (m.running_mean, m.running_var):
                        dist.all_reduce(buffer)
                        buffer.div_(world)
        return used[0]
