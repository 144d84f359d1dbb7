"""No secret in any message: an endpoint URL's user:password and the secret key are
redacted in every error jobs.storage raises, and no chained cause carries them.

    pytest tests/jobs/storage/test_redaction.py

The servers here are real sockets on loopback that fail the ways networks do: nothing
listening, a connection accepted then closed, a connection that never answers.
"""

from __future__ import annotations

import socket
import threading
import traceback
from collections.abc import Callable, Iterator

import pytest

from jobs import storage
from jobs.storage import s3 as storage_s3

PASSWORD = "pw-Zq81-never-shown"
SECRET_KEY = "secret-key-Kx07-never-shown"


@pytest.mark.parametrize("text,clean", [
    ("http://alice:pw@host:9000/b/k", "http://***@host:9000/b/k"),
    ('endpoint URL: "https://u:p%40ss@s3.example.com/b?x=1".', 'endpoint URL: "https://***@s3.example.com/b?x=1".'),
    ("HTTP://user:p@ss@host/x and s3+http://a:b@h", "HTTP://***@host/x and s3+http://***@h"),
    ("http://token@host/", "http://***@host/"),
    ("s3://bucket/photos/me@home.jpg and http://host/a@b", "s3://bucket/photos/me@home.jpg and http://host/a@b"),
])
def test_redact_masks_the_userinfo_of_every_url(text: str, clean: str) -> None:
    assert storage.redact(text) == clean


def test_redact_masks_the_configured_secrets_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://alice:{PASSWORD}@host:1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    text = storage.redact(f"x {PASSWORD} y {SECRET_KEY} z alice:{PASSWORD}@host")
    assert text == "x *** y *** z ***@host"


def _serve(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    held: list[socket.socket] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            handle(conn)

    threading.Thread(target=loop, daemon=True).start()
    yield server.getsockname()[1]
    stop.set()
    server.close()
    for conn in held:
        conn.close()


def _closes(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.close()


def _closed_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]  # bound, never listening: connections are refused


SERVERS = {
    "refused": _closed_port,
    "accepted-then-closed": lambda: _serve(_closes),
    "never-answers": lambda: _serve(lambda conn: None),
}
CALLS = {
    "read_bytes": lambda: storage.read_bytes("s3://bucket/upload.jpg", max_bytes=1000),
    "list_objects": lambda: list(storage.list_objects("s3://bucket/photos/")),
    "list_prefixes": lambda: storage.list_prefixes("s3://bucket/photos/"),
    "write_bytes": lambda: storage.write_bytes("s3://bucket/out.bin", b"x"),
    "exists": lambda: storage.exists("s3://bucket/out.bin"),
    "delete_prefix": lambda: storage.delete_prefix("s3://bucket/old/"),
}


@pytest.fixture(params=sorted(SERVERS))
def failing_endpoint(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """AWS_* pointing at a failing server, with user:password in the endpoint URL; one
    botocore attempt with 1 s timeouts and 0.3 s of our retries, so each call fails fast."""
    servers = SERVERS[request.param]()
    port = next(servers)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://alice:{PASSWORD}@127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setattr(storage_s3, "TRANSIENT_RETRY_S", 0.3)
    new_client = storage_s3._new_client
    fast = {"retries": {"mode": "standard", "total_max_attempts": 1}, "connect_timeout": 1, "read_timeout": 1}
    monkeypatch.setattr(storage_s3, "_new_client", lambda settings=None, **config: new_client(settings, **fast, **config))
    yield request.param
    next(servers, None)


@pytest.mark.parametrize("call", sorted(CALLS))
def test_connection_failures_never_show_the_endpoint_password(failing_endpoint: str, call: str) -> None:
    with pytest.raises(ConnectionError) as caught:
        CALLS[call]()
    printed = "".join(traceback.format_exception(caught.value))  # what a crash would print
    assert PASSWORD not in printed and SECRET_KEY not in printed, printed
    assert "127.0.0.1" in str(caught.value) and "cannot reach S3" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
