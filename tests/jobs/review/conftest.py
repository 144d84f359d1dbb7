"""The review app under test: real uvicorn on 127.0.0.1 (a free port), spoken to over HTTP
with the standard library; stopped at the end of each test."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from datetime import date

import pytest

from jobs.review import ReviewConfig, prepare
from jobs.review.server import serving
from tests.helpers import publish_synthetic

HOSTILE_KEYS = ("s3://up/h/<img src=x onerror=document.title='pwned'>.jpg",
                "s3://up/h/</script><script>document.title='pwned'</script>.png",
                "s3://up/h/invoice\u202egpj.exe", "s3://up/h/zero\u200bwidth.jpg")


@dataclass
class App:
    url: str  # http://127.0.0.1:PORT/
    token: str | None
    session: object

    def call(self, path: str, *, method: str = "GET", body=None, token: str | None = "default",
             headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
        """``(status, headers (case-insensitive), body)``; ``token="default"`` sends the app's own as a bearer token."""
        given = self.token if token == "default" else token
        h = dict(headers or {})
        if given is not None:
            h.setdefault("Authorization", f"Bearer {given}")
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        request = urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method, headers=h)
        try:
            with _no_redirects().open(request, timeout=30) as answer:
                return answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def json(self, path: str, **kw):
        status, _, body = self.call(path, **kw)
        assert status == 200, (status, body[:300])
        return json.loads(body)

    def decide(self, items: list[tuple[int, str]], reviewer: str = "ana") -> dict:
        return self.json("/api/decisions", method="POST",
                         body={"reviewer": reviewer, "items": [{"id": i, "decision": d} for i, d in items]})


def _no_redirects() -> urllib.request.OpenerDirector:
    class Keep(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None  # the test looks at the 303 itself
    return urllib.request.build_opener(Keep)


@contextlib.contextmanager
def running(config: ReviewConfig) -> Iterator[App]:
    session, app, sock, token = prepare(config)
    with serving(app, sock) as url:
        yield App(url=url, token=token, session=session)


def make_reports(root, *, extra: tuple[str, ...] = ()) -> str:
    """Two scans on two dates (flagged rows have scores >= 0.5), hostile keys in the second."""
    out = str(root / "reports")
    a = [f"s3://up/a/{i:03d}.jpg" for i in range(40)]
    b = [f"s3://up/b/{i:03d}.jpg" for i in range(30)]
    publish_synthetic(out, "scan-1", date(2026, 5, 1), a, seed=1, errors=2)
    publish_synthetic(out, "scan-2", date(2026, 5, 2), b + [*HOSTILE_KEYS, *extra, "s3://up/b/broken.jpg"], seed=2, errors=1, threshold=0.0)
    return out


@pytest.fixture
def reports(tmp_path) -> str:
    return make_reports(tmp_path)
