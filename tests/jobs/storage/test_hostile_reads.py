"""Reads of hostile local files and S3 bodies: jobs.storage.read_bytes refuses anything but
a regular file without blocking, and never reads more than max_bytes + 1 bytes.

    pytest tests/jobs/storage/test_hostile_reads.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from botocore.response import StreamingBody

from jobs import storage
from jobs.storage import s3 as storage_s3


def _read_within(uri: str | Path, seconds: float = 10.0, **kwargs: object) -> object:
    """read_bytes(uri) in a thread: its result or exception, or TimeoutError when it hangs
    (a FIFO then gets a writer, which ends the read, so the test itself never hangs)."""
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(_attempt(uri, **kwargs)), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(uri, os.O_WRONLY | os.O_NONBLOCK))  # release a blocked FIFO reader
        thread.join(5)
        return TimeoutError(f"read_bytes({uri}) blocked for {seconds} s")
    return outcome[0]


def _attempt(uri: str | Path, **kwargs: object) -> object:
    try:
        return storage.read_bytes(uri, **kwargs)
    except Exception as e:  # noqa: BLE001 - the test looks at what came back
        return e


@pytest.mark.parametrize("via_link", [False, True])
def test_a_fifo_is_refused_without_blocking(tmp_path: Path, via_link: bool) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    target = fifo
    if via_link:
        target = tmp_path / "link.jpg"
        target.symlink_to(fifo)
    outcome = _read_within(target, max_bytes=1000)
    assert isinstance(outcome, OSError) and "FIFO" in str(outcome) and "not a regular file" in str(outcome), outcome


def test_a_file_swapped_for_a_fifo_after_listing_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"jpeg")
    [info] = storage.list_objects(tmp_path)
    os.unlink(info.uri)
    os.mkfifo(info.uri)
    outcome = _read_within(info.uri)
    assert isinstance(outcome, OSError) and "not a regular file" in str(outcome), outcome


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_devices_are_refused_before_they_are_read(tmp_path: Path, device: str) -> None:
    """In a child process with 1 GiB of address space, so that today's unbounded read of
    /dev/zero fails the test instead of taking the machine's memory."""
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    link = tmp_path / "upload.jpg"
    link.symlink_to(device)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30)); "
            "from jobs import storage\n"
            "try: storage.read_bytes(sys.argv[1], max_bytes=1_000_000)\n"
            "except OSError as e: print('refused:', e); sys.exit(0)\n"
            "sys.exit('read without error')")
    run = subprocess.run([sys.executable, "-c", code, str(link)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "character device, not a regular file" in run.stdout


def test_folders_and_sockets_are_refused(tmp_path: Path) -> None:
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(OSError, match="is a folder, not a regular file"):
        storage.read_bytes(tmp_path / "dir.jpg")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "sock.jpg"))
        with pytest.raises(OSError, match="is a socket, not a regular file"):
            storage.read_bytes(tmp_path / "sock.jpg")


def test_a_regular_file_larger_than_its_size_says_is_cut_at_max_bytes() -> None:
    """/proc files are regular and report 0 bytes: the size check passes, the read must not."""
    status = Path("/proc/self/status")
    if not status.is_file() or status.stat().st_size != 0:
        pytest.skip("needs Linux /proc")
    with pytest.raises(ValueError, match="more than max_bytes=10 bytes"):
        storage.read_bytes(status, max_bytes=10)
    assert len(storage.read_bytes(status, max_bytes=10**6)) > 10  # under the limit: read whole


class _Counting:
    """A body of 32 MiB of zeros (a stand-in for an endless one) that counts what was taken."""

    def __init__(self, size: int = 32 * 2**20) -> None:
        self.left, self.taken = size, 0

    def read(self, amt: int | None = None) -> bytes:
        n = self.left if amt is None or amt < 0 else min(amt, self.left)
        self.left -= n
        self.taken += n
        return bytes(n)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("announced", [10, None])
def test_an_s3_body_longer_than_announced_is_cut_at_max_bytes(monkeypatch: pytest.MonkeyPatch,
                                                              announced: int | None) -> None:
    """A server (or a proxy) that sends more than its Content-Length, or none (chunked):
    the guard is on the body read, not only on the announced length."""
    stream = _Counting()

    class Lying:
        def get_object(self, **_: object) -> dict:
            answer = {"Body": StreamingBody(stream, None)}
            return answer if announced is None else {**answer, "ContentLength": announced}

    monkeypatch.setattr(storage_s3, "client", Lying)
    with pytest.raises(ValueError, match="more than max_bytes=1000000"):
        storage.read_bytes("s3://bucket/upload.jpg", max_bytes=1_000_000)
    assert stream.taken <= 1_000_001 + storage_s3.READ_CHUNK
