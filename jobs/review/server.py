"""Serving the review app with uvicorn: in the foreground (``python -m jobs.review``) or
on a thread of this process (the demo and the tests).

The socket is bound before uvicorn starts, so ``--port 0`` (a free port) is known
when the URL is printed.

    python -c "from jobs.review.server import bind; print(bind('127.0.0.1', 0).getsockname())"
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url(sock: socket.socket, token: str | None) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def serve(app, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until Ctrl-C or SIGTERM."""
    try:
        uvicorn.Server(_config(app)).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down cleanly, then raises the Ctrl-C it caught again
        print("stopped", flush=True)


@contextlib.contextmanager
def serving(app, sock: socket.socket, *, start_timeout_s: float = 30) -> Iterator[str]:
    """Serve ``app`` on ``sock`` from a thread; yields its base URL; stops it on exit."""
    server = uvicorn.Server(_config(app))
    server.install_signal_handlers = lambda: None  # not the main thread: leave signals alone
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="review-app")
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the review app did not start")
        time.sleep(0.02)
    try:
        yield url(sock, None)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _config(app) -> uvicorn.Config:
    # access logs would print every thumbnail request; errors still show
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
