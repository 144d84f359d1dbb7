"""One live run per scan id: a lease file, ``_staging/<id>/lease.json``, renewed while the
run lives.

Two runs of one ``--scan-id`` at once would publish a mix of both; so a run takes the lease
before it stages anything and checks it still holds it before publishing. A second run
that finds a live lease is refused (jobs.cli.InUseError, exit 6). A lease is dead, and is
taken over, when it was not renewed for ``TTL_S`` seconds, or when its holder ran on this
machine and its process is gone (a killed run can be re-run at once). Holders on other
machines are trusted to keep their clocks within a minute of this one.

There is no compare-and-swap on S3: two runs that start within the same instant can both
write the lease; the one whose lease was overwritten finds out at the latest before it
publishes, and fails without touching the report.

    python -c "from jobs.report.lease import ScanLease; help(ScanLease)"
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any

from jobs import storage
from jobs.cli import InUseError

TTL_S = 120.0
RENEW_S = 20.0


class ScanLease:
    """The lease of one attempt (``attempt``) on the scan id whose staging folder is ``staging_uri``."""

    def __init__(self, staging_uri: str, scan_id: str, attempt: str):
        self.uri = storage.join(staging_uri, "lease.json")
        self.scan_id, self.attempt = scan_id, attempt
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lease, or InUseError when a live run holds it."""
        held = self.holder()
        if held is not None and held.get("attempt") != self.attempt and _alive(held):
            raise InUseError(self._refusal(held, "is running"))
        self._write()
        self.check()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{self.scan_id}", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """InUseError unless this attempt still holds the lease (before publishing)."""
        held = self.holder()
        if held is None or held.get("attempt") != self.attempt:
            raise InUseError(self._refusal(held or {}, "took it over"))

    def release(self) -> None:
        """Stop renewing; delete the lease if it is still this attempt's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = self.holder()
        if held is not None and held.get("attempt") == self.attempt:
            storage.delete_object(self.uri)

    def holder(self) -> dict[str, Any] | None:
        try:
            held = json.loads(storage.read_bytes(self.uri))
        except (FileNotFoundError, ValueError):
            return None
        return held if isinstance(held, dict) else None

    def _write(self) -> None:
        record = {"attempt": self.attempt, "host": socket.gethostname(), "pid": os.getpid(), "renewed_at": time.time()}
        storage.write_bytes(self.uri, json.dumps(record, allow_nan=False).encode())

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                held = self.holder()
                if held is None or held.get("attempt") != self.attempt:
                    return  # taken over: check() refuses the publish
                self._write()
            except Exception:  # noqa: BLE001 (a failed renewal is retried; the TTL covers several)
                continue

    def _refusal(self, held: dict[str, Any], what: str) -> str:
        who = f"attempt {held.get('attempt')} on {held.get('host')} (pid {held.get('pid')})"
        return (f"scan id {self.scan_id} is in use: {who} {what}; wait for it, or use another --scan-id. "
                f"(A lease not renewed for {TTL_S:.0f} s is taken over: {self.uri})")


def _alive(held: dict[str, Any]) -> bool:
    renewed = held.get("renewed_at")
    if not isinstance(renewed, (int, float)) or time.time() - renewed > TTL_S:
        return False
    if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int):
        return _pid_alive(held["pid"])
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True
