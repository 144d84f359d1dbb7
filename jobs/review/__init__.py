"""The moderators' review app: decide on flagged images; the decisions train the next detector.

    python -m jobs.review --reports reports/scans                  # prints http://127.0.0.1:PORT/?token=...
    python -m jobs.review --reports s3://reports/scans --scan-id 20261125T082804Z-737250 --port 8765
    python -m jobs.review export --reports reports/scans --out labels.csv
    python -m jobs.train --data labels.csv --init-from s3://models/detector --output s3://models/detector-v2 \\
        --allow-prefix s3://uploads

A small web app (Starlette + uvicorn) over the flagged images of the chosen scans,
highest score first, with their heat-map thumbnails: filters by scan, date, URI prefix and
"undecided only"; a decision per image (generated, real, unsure) by button or key (j/k
move, g/r/u decide, z undo), with the reviewer's name and the time; 50 rows a page.
Decisions go to an append-only Parquet table, ``--reports``/_decisions/ by default
(jobs/review/decisions.py); ``export`` writes them as a ``uri,label`` training manifest
(jobs/review/export.py).

Safe by default: it listens on 127.0.0.1; every request needs the random token in the
printed URL (``--no-token`` turns that off); the page loads nothing from elsewhere and a
strict Content-Security-Policy allows only its own script (jobs/review/app.py).
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
from dataclasses import dataclass
from datetime import date

from jobs import cli
from jobs.report import parse_day
from jobs.review import export, server
from jobs.review.app import build_app
from jobs.review.session import ReviewSession

__all__ = ["ReviewConfig", "get_args_parser", "main", "run"]


@dataclass(frozen=True)
class ReviewConfig:
    reports: str
    decisions: str | None = None  # None: <reports>/_decisions
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    no_token: bool = False
    reviewer: str | None = None  # None: the login name
    scan_id: tuple[str, ...] = ()  # () every published scan
    since: date | None = None
    until: date | None = None
    threshold: float | None = None  # None: each scan's own flags

    def __post_init__(self) -> None:
        object.__setattr__(self, "scan_id", tuple(self.scan_id or ()))
        p = cli.uri_problems(reports=self.reports, decisions=self.decisions)
        if not 0 <= self.port <= 65535:
            p.append(f"--port must be 0-65535 (0: a free port), got {self.port}")
        if not self.host.strip():
            p.append("--host is empty")
        if self.since and self.until and self.since > self.until:
            p.append(f"--since {self.since} is after --until {self.until}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:  # NaN fails too
            p.append(f"--threshold must be in [0, 1] (a probability), got {self.threshold}")
        if p:
            raise ValueError("; ".join(p))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.review", description=__doc__.split("\n\n")[0],
                                epilog="python -m jobs.review export --help: the training manifest of the decisions",
                                allow_abbrev=False)
    p.add_argument("--reports", required=True, help="report root of jobs.scan --output (local or s3://)")
    p.add_argument("--decisions", help="where decisions are written and read (default: REPORTS/_decisions)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    p.add_argument("--no-token", action="store_true",
                   help="serve without the access token: anyone who reaches the port reads and decides")
    p.add_argument("--reviewer", help="the name recorded with decisions (default: your login; the page can change it)")
    p.add_argument("--scan-id", action="append", default=None, help="only this scan (repeatable; default: all)")
    p.add_argument("--since", type=parse_day, help="first scan date, YYYY-MM-DD (inclusive)")
    p.add_argument("--until", type=parse_day, help="last scan date, YYYY-MM-DD (inclusive)")
    p.add_argument("--threshold", type=float,
                   help="queue the images scored at least this instead of those each scan flagged "
                        "(e.g. lower, to review near misses too)")
    cli.add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["export"]:
        return export.main(argv[1:])
    config, debug = cli.parse_config(get_args_parser(), ReviewConfig, argv)
    code, _ = cli.run_main("review", lambda: run(config), debug=debug)
    return code


def run(config: ReviewConfig) -> None:
    """Load the queue, print the URL, serve until Ctrl-C."""
    session, app, sock, token = prepare(config)
    with sock:
        print(f"review queue: {session.counts()['flagged']} flagged images; decisions in {session.writer.uri}",
              flush=True)
        print(f"open {server.url(sock, token)}", flush=True)
        server.serve(app, sock)


def prepare(config: ReviewConfig):
    """``(session, app, listening socket, token)``: everything but serving (tests and the
    demo serve it on a thread with jobs.review.server.serving)."""
    token = None if config.no_token else secrets.token_urlsafe(32)
    if config.no_token:
        print("warning: --no-token: anyone who can reach the port can read the reports and record decisions",
              file=sys.stderr, flush=True)
    if not server.is_loopback(config.host):
        print(f"warning: listening on {config.host}, not only on this machine; use --host 127.0.0.1 and an "
              "SSH tunnel unless the network is trusted", file=sys.stderr, flush=True)
    session = ReviewSession.open(config.reports, decisions=config.decisions, reviewer=config.reviewer or _login(),
                                 scan_ids=config.scan_id, since=config.since, until=config.until,
                                 threshold=config.threshold)
    sock = server.bind(config.host, config.port)
    # The Host names a loopback app answers to (a DNS-rebinding page cannot pose as one);
    # elsewhere clients use names this process cannot know, and the token guards it.
    loopback = server.is_loopback(config.host) and ":" not in config.host
    hosts = ["127.0.0.1", "localhost", config.host] if loopback else ["*"]
    return session, build_app(session, token=token, hosts=hosts), sock, token


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a container
        return "moderator"


if __name__ == "__main__":
    sys.exit(main())
