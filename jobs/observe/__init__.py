"""What on-call sees of a run: Prometheus metrics (``metrics``: a Pushgateway and the
node-exporter textfile format) and the log format (``logs``: text, or one JSON object
per line). Exit codes live in jobs/cli.py; the operator's view is docs/OPERATIONS.md.

    python -m jobs.scan ... --metrics-push http://pushgateway:9091 --metrics-file /var/lib/node_exporter/genscan.prom \\
        --log-format json
"""

from __future__ import annotations

import argparse

from jobs.observe.logs import LOG_FORMATS

__all__ = ["LOG_FORMATS", "add_flags"]


def add_flags(parser: argparse.ArgumentParser, *, metrics_file: bool = True, log_format: bool = True) -> None:
    """``--metrics-push`` (and ``--metrics-file``, ``--log-format``): jobs.cli.JOB_OPTIONS,
    which ``jobs.cli.parse_job`` keeps out of the job's config. Absent from the parsed
    namespace unless given (as ``--debug``), so ``Config(**vars(args))`` keeps working."""
    parser.add_argument("--metrics-push", default=argparse.SUPPRESS, metavar="URL",
                        help="Prometheus Pushgateway to push this run's metrics to (http://host:9091); "
                             "a failed push warns and never changes the exit code")
    if metrics_file:
        parser.add_argument("--metrics-file", default=argparse.SUPPRESS, metavar="PATH",
                            help="write this run's metrics to PATH in the node-exporter textfile format "
                                 "(atomically; e.g. /var/lib/node_exporter/textfile/genscan.prom)")
    if log_format:
        parser.add_argument("--log-format", choices=LOG_FORMATS, default=argparse.SUPPRESS,
                            help="text (default), or json: the summary, warnings and failures as one JSON "
                                 "object per line on stderr, for log pipelines")
