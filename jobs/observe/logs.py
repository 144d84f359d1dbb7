"""The jobs' own messages (summary, warnings, failures) as text or as one JSON object per
line on stderr (``--log-format json``), through the stdlib ``logging``.

Text keeps what the jobs always printed: the summary on stdout, ``warning: ...`` and
``<job> failed: ...`` on stderr. JSON puts each on stderr as
``{"time": ..., "level": ..., "logger": "genscan", "message": ..., <fields>}``; Python
warnings (``warnings.warn``) become JSON lines too. Messages pass through
jobs.storage.redact, so no credential reaches a log pipeline. Ray's own output and the
progress lines stay text: pipelines keep the lines that parse.

    python -m jobs.scan ... --log-format json 2>&1 >/dev/null | jq 'select(.event == "summary")'
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

from jobs.storage.redaction import redact

LOG_FORMATS = ("text", "json")
_LOGGER = logging.getLogger("genscan")
_state = {"json": False}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        event.update(getattr(record, "fields", {}))
        return json.dumps(event, default=str)


class _Stderr(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is when it writes (pytest and callers swap it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def configure(log_format: str) -> None:
    """Use ``log_format`` for this process's messages from now on (each ``main`` calls it)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    _state["json"] = log_format == "json"
    for name in ("genscan", "py.warnings"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, _Stderr)]:
            logger.removeHandler(handler)
        if _state["json"]:
            logger.addHandler(_Stderr())
            logger.setLevel(logging.INFO)
            logger.propagate = False  # one line per message, whatever the root logger does
        else:
            logger.propagate = True
    # off first: captureWarnings(True) does nothing while an earlier call's capture is on,
    # which would leave a warnings.showwarning installed since then (pytest swaps it per test)
    logging.captureWarnings(False)
    logging.captureWarnings(_state["json"])


def summary(line: str, fields: dict[str, Any]) -> None:
    """The job's result: ``line`` on stdout, or a JSON ``{"event": "summary", **fields}`` on stderr."""
    if _state["json"]:
        _LOGGER.info(line, extra={"fields": {"event": "summary", **fields}})
    else:
        print(line, flush=True)


def warning(text: str, **fields: Any) -> None:
    """``warning: <text>`` on stderr, or a JSON warning."""
    if _state["json"]:
        _LOGGER.warning(text, extra={"fields": {"event": "warning", **fields}})
    else:
        print(f"warning: {redact(text)}", file=sys.stderr, flush=True)


def error(line: str, **fields: Any) -> None:
    """A failure line (``scan failed: ...``) on stderr, or a JSON error."""
    if _state["json"]:
        _LOGGER.error(line, extra={"fields": {"event": "failed", **fields}})
    else:
        print(line, file=sys.stderr, flush=True)
