"""How the scan's stages run: a Ray Data pipeline, or the driver process for small scans.

Both run the same stages on the same batches: ``jobs.scan.fetch.fetch_and_prepare``
(fetch + decode + preprocess) then ``jobs.scan.scorer.Scorer`` (model, heat maps,
thumbnails), and both yield report rows of ``jobs.report.schema.FILE_SCHEMA``.

- ``score_dataset``: Ray Data, streaming, a fixed pool of scoring actors. On CPU each actor
  fetches and decodes its own batches (``FetchScorer``, two calls at once: decoding one
  batch while the model runs the other; with GPUs the JPEGs are decoded on the GPU), or
  fetch tasks on the cluster's CPUs feed ``Scorer`` actors (``--fetch tasks``).
- ``score_locally``: in this process, fetching one batch ahead in a thread so decoding
  overlaps the model. A Ray Data scan starts fresh worker processes for its actors
  (importing torch, torchvision and OpenVINO) and its Parquet writer: a fixed cost of
  about 5-6 s on 2 cores (BENCHMARKS.md, round 4 and after), however few images there
  are, so ``--executor auto`` scores up to ``LOCAL_MAX_OBJECTS`` objects here.

    python -c "from jobs.scan.pipeline import choose_executor; help(choose_executor)"
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from jobs.scan.fetch import fetch_and_prepare
from jobs.scan.scorer import FetchScorer, Scorer

EXECUTORS = ("auto", "ray", "local")
# Where a Ray Data scan fetches and decodes: in the scoring actors ("scorer"; with GPUs the
# JPEGs on the GPU), or in separate Ray tasks on the cluster's CPUs ("tasks"); auto: scorer.
# benchmarks/scan_throughput.py measures both side by side.
FETCH_PLACES = ("auto", "scorer", "tasks")
# Up to this many objects, --executor auto scores in the driver: about what one process
# scores (~20 img/s on 2 cores at 224 px) in the time a Ray Data scan takes to start.
LOCAL_MAX_OBJECTS = 256
# Fetch tasks ask for half a CPU: fetching is partly waiting on storage, and resources
# that differ from the actors' keep Ray Data from fusing decoding into the model actors
# (which would leave spare cores idle while an actor decodes).
FETCH_CPUS = 0.5
# Parquet write tasks ask for a quarter CPU: they mostly wait on storage, and the scoring
# actors take the rest of a node (scorer_cpus), so writes must fit beside them or they
# would queue until scoring ends, the rows piling up in the object store.
WRITE_CPUS = 0.25
# Listing rows per Ray Data input block: one fetch task each.
MAX_BLOCK_ROWS = 256


def choose_executor(executor: str, objects: int, *, use_gpu: bool) -> str:
    """``executor``, with ``auto`` resolved: the driver for scans of at most
    ``LOCAL_MAX_OBJECTS`` objects on CPU, Ray Data otherwise."""
    if executor != "auto":
        return executor
    return "local" if objects <= LOCAL_MAX_OBJECTS and not use_gpu else "ray"


def choose_fetch(fetch: str, *, use_gpu: bool) -> str:
    """``fetch`` with ``auto`` resolved (see ``FETCH_PLACES``): in the actors, on CPU and on
    GPU (there nvJPEG decodes far faster than the CPU cores beside it)."""
    return "scorer" if fetch == "auto" else fetch


def scorer_cpus(cpus_per_scorer: float | None, *, concurrency: int, fetch: str, use_gpu: bool) -> float:
    """CPUs each scoring actor reserves (and uses as model threads): ``cpus_per_scorer``, or
    by default the Ray cluster's CPUs shared by the ``concurrency`` actors, at most one
    node's, less room for the Parquet writes (``WRITE_CPUS``) and for fetch tasks
    (``FETCH_CPUS``) when there are any; one per GPU actor (its fetch tasks use the rest).
    The actor runs ``round(cpus)`` model threads. On 2 cores: 1.75, two threads."""
    if cpus_per_scorer is not None:
        return cpus_per_scorer
    if use_gpu:
        return 1.0
    import ray

    node_cpus = max((n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
    free = ray.cluster_resources().get("CPU", 1) - WRITE_CPUS - (FETCH_CPUS if fetch == "tasks" else 0)
    return max(0.5, min(node_cpus - WRITE_CPUS, free / concurrency))


def listing_dataset(blocks: list[pa.Table]) -> Any:
    """The listing as a Ray Dataset whose blocks make at least 16 fetch tasks when they can."""
    import ray

    rows = sum(b.num_rows for b in blocks)
    block_rows = max(1, min(MAX_BLOCK_ROWS, math.ceil(rows / 16)))
    return ray.data.from_arrow([b.slice(i, block_rows) for b in blocks for i in range(0, b.num_rows, block_rows)])


def score_dataset(
    ds: Any,
    *,
    checkpoint: Any,
    preset: dict[str, Any],
    threshold: float,
    thumbnails: str,
    batch_size: int,
    concurrency: int,
    cpus_per_scorer: float,
    use_gpu: bool,
    max_pixels: int,
    max_bytes: int,
    runtime: str = "auto",
    fetch: str = "auto",
) -> Any:
    """Listing rows (a Ray Dataset of uri, etag, size_bytes) -> report rows (FILE_SCHEMA),
    one per input row, by a fixed pool of ``concurrency`` scoring actors; ``fetch``: where
    objects are fetched and decoded (``FETCH_PLACES``). ``checkpoint``: an ObjectRef to the
    checkpoint file's bytes."""
    import ray

    fetch_kwargs = {"preset": preset, "max_pixels": max_pixels, "max_bytes": max_bytes}
    scorer_kwargs = {"checkpoint": checkpoint, "threshold": threshold, "thumbnails": thumbnails,
                     "use_gpu": use_gpu, "runtime": runtime}
    if choose_fetch(fetch, use_gpu=use_gpu) == "scorer":
        return ds.map_batches(
            FetchScorer,
            batch_size=batch_size,
            batch_format="numpy",
            # two calls per actor at once, truly concurrent: one decoding while the other is in the model
            compute=ray.data.ActorPoolStrategy(size=concurrency, max_concurrent_calls_per_actor=2,
                                               enable_true_multi_threading=True),
            num_cpus=cpus_per_scorer,
            num_gpus=1 if use_gpu else 0,
            fn_constructor_kwargs={**scorer_kwargs, **fetch_kwargs},
        )
    ds = ds.map_batches(
        fetch_and_prepare,
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=FETCH_CPUS,
        fn_kwargs={**fetch_kwargs, "keep_view": thumbnails != "none"},
    )
    return ds.map_batches(
        Scorer,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),  # `concurrency=` is deprecated in Ray 2.51+
        num_cpus=cpus_per_scorer,
        num_gpus=1 if use_gpu else 0,
        fn_constructor_kwargs=scorer_kwargs,
    )


def score_locally(
    blocks: list[pa.Table],
    *,
    checkpoint: bytes,
    preset: dict[str, Any],
    threshold: float,
    thumbnails: str,
    batch_size: int,
    use_gpu: bool,
    max_pixels: int,
    max_bytes: int,
    num_threads: int | None = None,
    runtime: str = "auto",
) -> Iterator[pa.Table]:
    """Listing blocks (uri, etag, size_bytes) -> report tables (FILE_SCHEMA), one per batch."""
    import torch

    scorer = Scorer(checkpoint, threshold=threshold, thumbnails=thumbnails, use_gpu=use_gpu, runtime=runtime,
                    num_threads=num_threads or torch.get_num_threads())
    batches = [b.slice(i, batch_size) for b in blocks for i in range(0, b.num_rows, batch_size)]

    def fetch(rows: pa.Table) -> dict[str, np.ndarray]:
        return fetch_and_prepare(_as_numpy(rows), preset=preset, max_pixels=max_pixels, max_bytes=max_bytes,
                                 keep_view=thumbnails != "none")

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="genscan-fetch") as ahead:
        pending = ahead.submit(fetch, batches[0]) if batches else None
        for i in range(len(batches)):
            batch = pending.result()
            pending = ahead.submit(fetch, batches[i + 1]) if i + 1 < len(batches) else None
            yield scorer(batch)


def _as_numpy(rows: pa.Table) -> dict[str, np.ndarray]:
    """A listing slice as the numpy batch Ray Data would hand ``fetch_and_prepare``."""
    return {name: np.array(rows[name].to_pylist(), dtype=object) for name in ("uri", "etag", "size_bytes")}
