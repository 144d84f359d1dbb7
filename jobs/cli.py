"""What every job's ``main`` shares: one line per failure, an exit code per kind of failure,
and the checks every job config makes on its flags.

Exit codes (README.md "The jobs", docs/GUARANTEES.md):

    0  done
    1  failed: anything else (bad input data, a malformed manifest, an unexpected error)
    2  bad flags (argparse, and each config's __post_init__)
    3  bad model: the --model checkpoint is missing, malformed, unsafe or non-finite
    4  storage unreachable or access denied: no or wrong credentials, S3 down, unreadable input
    5  output not writable: read-only, full, or permission denied under --output (or --json ...)
    6  the scan id is in use by another run that is still alive
    7  too many error rows: over --max-error-fraction of the rows are errors (the report is
       still published, so --mode incremental can re-score them)

The table for operators is docs/OPERATIONS.md; this module is its one home in code.

The traceback is printed only with ``--debug`` (every job has the flag).

    python -m jobs.scan --input '' --model m --output o; echo $?   # 2: --input is empty
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from detector.errors import CheckpointError, DetectorError

OK, FAILED, BAD_FLAGS, BAD_MODEL, STORAGE, OUTPUT, IN_USE, TOO_MANY_ERRORS = 0, 1, 2, 3, 4, 5, 6, 7
EXIT_CODES = {
    OK: "done",
    FAILED: "failed: anything else (bad input data, a malformed manifest, an unexpected error)",
    BAD_FLAGS: "bad flags",
    BAD_MODEL: "bad model (--model missing, malformed, unsafe or non-finite)",
    STORAGE: "storage unreachable or access denied (credentials, S3 down, unreadable input)",
    OUTPUT: "output not writable (read-only, full, permission denied)",
    IN_USE: "the scan id is in use by another live run",
    TOO_MANY_ERRORS: "too many error rows (over --max-error-fraction); the report is published",
}
# Flags every job's ``main`` handles itself; they never reach the job's config (which
# is recorded in markers and metrics.json: a Pushgateway URL may carry credentials).
JOB_OPTIONS = ("debug", "metrics_push", "metrics_file", "log_format")


@dataclass(frozen=True)
class JobOptions:
    """How ``main`` reports a run: tracebacks, metrics (jobs.observe), the log format."""

    debug: bool = False
    metrics_push: str | None = None
    metrics_file: str | None = None
    log_format: str = "text"


class OutputError(OSError):
    """Writing under an output failed (read-only, full, denied); the message names it."""


class InUseError(RuntimeError):
    """Another live run holds what this run needs (a scan id); the message says which."""


@contextlib.contextmanager
def writing(output: str) -> Iterator[None]:
    """Turn file-system failures while writing under ``output`` into OutputError, so a
    full or read-only disk is exit 5 with one line; network failures stay what they are."""
    try:
        yield
    except (OutputError, ConnectionError, FileNotFoundError):
        raise
    except OSError as e:
        if _from_network(e):
            raise
        raise OutputError(f"cannot write under {output}: {e.strerror or e}") from e


def exit_code(e: BaseException) -> int:
    """The exit code of one failure (the table above)."""
    if isinstance(e, CheckpointError):
        return BAD_MODEL
    if isinstance(e, InUseError):
        return IN_USE
    if isinstance(e, OutputError):
        return OUTPUT
    if isinstance(e, (ConnectionError, PermissionError, TimeoutError)) or _from_network(e):
        return STORAGE
    return FAILED


def run_main(job: str, run: Callable[[], Any], *, debug: bool,
             say: Callable[[str], None] | None = None) -> tuple[int, Any]:
    """``(0, run())``, or ``(code, None)`` after one ``<job> failed: ...`` line on stderr
    (the traceback too with ``debug``), or handed to ``say`` (jobs.observe.logs: JSON).
    KeyboardInterrupt and SystemExit pass through."""
    try:
        return OK, run()
    except Exception as e:  # noqa: BLE001 (every failure becomes one line and a code)
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (--debug prints the traceback)"
        line = f"{job} failed: {_one_line(e)}{hint}"
        if say is None:
            print(line, file=sys.stderr, flush=True)
        else:
            say(line)
        return exit_code(e), None


def parse_config(parser: argparse.ArgumentParser, make_config: Callable[..., Any], argv: list[str] | None) -> tuple[Any, bool]:
    """``(config, debug)`` from ``argv``: the flags parsed, ``--debug`` taken out, the
    config built; a ValueError from its validation is a bad flag (one line, exit 2)."""
    config, options = parse_job(parser, make_config, argv)
    return config, options.debug


def parse_job(parser: argparse.ArgumentParser, make_config: Callable[..., Any],
              argv: list[str] | None) -> tuple[Any, JobOptions]:
    """``(config, options)``: as ``parse_config``, with every ``JOB_OPTIONS`` flag the
    parser has taken out into ``options`` instead of the config."""
    args = vars(parser.parse_args(argv))
    options = job_options(parser, args)
    return build_config(parser, make_config, args), options


def job_options(parser: argparse.ArgumentParser, args: dict[str, Any]) -> JobOptions:
    """The ``JOB_OPTIONS`` flags taken out of the parsed ``args``; an empty metrics
    destination is a bad flag (one line, exit 2)."""
    options = JobOptions(**{k: args.pop(k) for k in JOB_OPTIONS if k in args})
    problems = [f"--{name.replace('_', '-')} is empty; give {what}" for name, what in
                (("metrics_push", "the Pushgateway's URL"), ("metrics_file", "a file path"))
                if getattr(options, name) is not None and not getattr(options, name).strip()]
    if problems:
        parser.error("; ".join(problems))  # exits 2
    return options


def build_config(parser: argparse.ArgumentParser, make_config: Callable[..., Any], args: dict[str, Any]) -> Any:
    """``make_config(**args)``; a ValueError from its validation is a bad flag (one line, exit 2)."""
    try:
        return make_config(**args)
    except ValueError as e:
        parser.error(str(e))  # exits 2


def add_allow_prefix_flag(parser: argparse.ArgumentParser, manifest_flag: str) -> None:
    """``--allow-prefix`` (repeatable): where the entries of the ``manifest_flag`` manifest
    may point (jobs/storage/allowed.py); the same flag for every job that reads manifests."""
    parser.add_argument("--allow-prefix", action="append", default=None, metavar="PREFIX",
                        help=f"a folder or s3://bucket[/prefix] that {manifest_flag} manifest entries may name "
                             "(repeatable); entries elsewhere are dropped and counted. Default: the manifest's own "
                             "bucket (s3://) or folder; '*' allows any object the credentials can read")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug``; absent from the parsed namespace unless given, so ``Config(**vars(args))``
    keeps working (``main`` pops it: ``vars(args).pop("debug", False)``)."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="print the traceback of a failure")


def uri_problems(**uris: str | None) -> list[str]:
    """Problems with URI flags: an empty or blank value (an unset shell variable) would
    mean the current folder. ``None`` is "not given" and is fine."""
    return [f"--{name.replace('_', '-')} is empty; give a folder, file or s3:// URI"
            for name, value in uris.items() if value is not None and not str(value).strip()]


def finite_problems(**numbers: float | None) -> list[str]:
    """Problems with numeric flags: inf and nan pass ``x > 0`` style checks the wrong way."""
    return [f"--{name.replace('_', '-')} must be a finite number, got {value}"
            for name, value in numbers.items() if value is not None and not math.isfinite(value)]


def _from_network(e: BaseException) -> bool:
    """botocore/urllib3 errors that storage did not translate (the class's module says)."""
    return any(c.__module__.split(".")[0] in ("botocore", "urllib3") for c in type(e).__mro__)


def _one_line(e: BaseException) -> str:
    """The message on one line; the type's name too when the type is not one the jobs
    raise on purpose (a KeyError's message alone says little)."""
    text = " ".join(str(e).split())
    expected = isinstance(e, (OSError, ValueError, RuntimeError, DetectorError)) and not isinstance(e, UnicodeError)
    return text if expected and text else f"{type(e).__name__}: {text}".rstrip(": ")
