"""Ray start-up shared by every job's ``main``: join a cluster when there is one, else
start an embedded Ray on this machine. ``run(config)`` functions never call this.

    RAY_ADDRESS=http://head:8265 python -m jobs.scan ...   # joins that cluster
    python -m jobs.scan ...                                # embedded Ray on a laptop
"""

from __future__ import annotations

import os
import sys
import time

import ray


def ensure_ray(*, num_cpus: int | None = None, object_store_memory: int | None = None) -> None:
    """``ray.init()`` unless Ray is already initialised (``ray job submit`` and a RayJob
    start the driver inside a cluster, and ``ray.init()`` joins it)."""
    if ray.is_initialized():
        return
    # An embedded Ray may otherwise switch on token auth, after which `ray start` /
    # `ray job submit` on this machine fail to authenticate. Users can still set it.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kwargs: dict = {"log_to_driver": True}
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    if object_store_memory is not None:
        kwargs["object_store_memory"] = object_store_memory
    ray.init(**kwargs)


class Progress:
    """Rate-limited progress lines on stderr (stdout keeps the jobs' results): ``label: done/total (rate/s)``."""

    def __init__(self, label: str, total: int | None = None, every_s: float = 5.0):
        self.label, self.total, self.every_s = label, total, every_s
        self.start = self.last = time.monotonic()
        self.done = 0

    def update(self, n: int = 1, **extra: object) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.print(**extra)

    def print(self, **extra: object) -> None:
        rate = self.done / max(time.monotonic() - self.start, 1e-9)
        total = f"/{self.total}" if self.total is not None else ""
        more = "".join(f" {k}={v}" for k, v in extra.items())
        print(f"{self.label}: {self.done}{total} ({rate:.1f}/s){more}", file=sys.stderr, flush=True)
