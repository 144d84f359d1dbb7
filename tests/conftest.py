"""Fixtures shared by every test package.

- ``s3_server``: one real SeaweedFS S3 server on loopback for the whole session
  (started on first use, about 1 s; stopped at the end). It changes no global state.
- ``s3_env``: points the AWS_* variables at that server for one test, so that
  jobs.storage, boto3 and pyarrow talk to it. Make a bucket per test, e.g.
  ``s3_server.create_bucket(f"t-{uuid.uuid4().hex[:12]}")``. For Ray workers pass
  ``runtime_env={"env_vars": s3_server.env()}`` (they do not see monkeypatched vars).
- ``pushgateway``: a real Prometheus Pushgateway (Debian's ``prometheus-pushgateway``,
  installed by ``make test``) on a free loopback port, no persistence, for the session;
  tests that use it skip, saying why, when the binary is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from jobs.demo.s3_server import SeaweedS3Server
from tests.helpers import terminate, use_s3_server


@pytest.fixture(scope="session", autouse=True)
def genscan_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Converted networks (detector.backends) go to a temporary folder, not ~/.cache; set
    before any Ray starts, so its workers inherit it."""
    old = os.environ.get("GENSCAN_CACHE")
    os.environ["GENSCAN_CACHE"] = str(tmp_path_factory.mktemp("genscan-cache"))
    yield
    if old is None:
        os.environ.pop("GENSCAN_CACHE", None)
    else:
        os.environ["GENSCAN_CACHE"] = old


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3Server]:
    """A started SeaweedS3Server; data and its weed.log under pytest's temp folder."""
    with SeaweedS3Server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_env(s3_server: SeaweedS3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The AWS_* variables of ``s3_server``, set for this test only (others removed)."""
    return use_s3_server(s3_server, monkeypatch)


PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"


@pytest.fixture(scope="session")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL (``http://127.0.0.1:<port>``) of a started Pushgateway; stopped at the end."""
    binary = PUSHGATEWAY if os.path.exists(PUSHGATEWAY) else shutil.which("prometheus-pushgateway")
    if binary is None:
        pytest.skip("prometheus-pushgateway is not installed (make test installs it as root: "
                    "apt-get install prometheus-pushgateway)")
    with socket.socket() as sock:  # a free port; the gateway takes it a moment later
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("pushgateway") / "pushgateway.log", "wb")
    # --persistence.file empty: nothing kept between runs (Debian's default is /var/lib/...)
    process = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"the pushgateway exited with {process.returncode}; see {log.name}"
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the pushgateway did not become ready in 30 s"
            time.sleep(0.1)
        yield url
    finally:
        terminate(process)
        log.close()
