"""The demo's own local Ray: started after the AWS_* variables are set, quiet, and
stopped at the end. (Product jobs use jobs.runtime.ensure_ray instead.)"""

from __future__ import annotations

import os
import socket
import sys


def start(object_store_bytes: int) -> None:
    """A local Ray of the demo's own, started after the AWS_* variables are set.

    Not jobs.runtime.ensure_ray: that joins a cluster named by RAY_ADDRESS or left by
    ``ray start`` in /tmp/ray, whose workers would not have this process's AWS_*
    variables and cannot reach a loopback S3 server on another machine.
    """
    import logging

    import ray
    import ray.data
    from ray.util.debug import log_once

    os.environ.pop("RAY_ADDRESS", None)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # as ensure_ray: no token auth for later `ray job submit`
    # Ray Train's actors query the state API; with no address they look for "the" Ray
    # on this machine and fail when several run. Point them at this one's dashboard.
    port = free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(address="local", dashboard_port=port, object_store_memory=object_store_bytes,
             logging_level=logging.WARNING, log_to_driver=True)  # workers' prints: epochs, errors
    print(f"Ray: a local instance, {ray.cluster_resources().get('CPU', 0):g} CPUs, "
          f"dashboard {os.environ['RAY_API_SERVER_ADDRESS']}", flush=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one line per refresh when the output is not a terminal
    ctx.enable_auto_log_stats = False
    log_once("ray_data_progress_manager_disabled")  # marks Ray Data's "progress bars disabled" note as said
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset INFO plans; warnings stay


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop() -> None:
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
