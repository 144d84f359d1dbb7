"""Unit tests of jobs.storage: local paths in tmp_path, S3 against moto's server.

    pytest tests/jobs/storage/test_storage.py

moto stands in for S3 at unit level only (it keeps keys such as ``../x`` that real
servers refuse); tests/jobs/test_s3_server.py runs the same calls on SeaweedFS.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import timezone
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from jobs import storage

SECRET = "moto-secret-never-shown"


def _touch(root: Path, *names: str, data: bytes = b"x") -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _names(root: Path, infos: Iterator[storage.ObjectInfo] | list[str]) -> list[str]:
    uris = [info.uri if isinstance(info, storage.ObjectInfo) else info for info in infos]
    return [os.path.relpath(uri, root) for uri in uris]


# --- URIs ---------------------------------------------------------------------------


def test_join_never_restarts_the_path(tmp_path: Path) -> None:
    assert storage.join("s3://b/x/", "y/", "/z.png") == "s3://b/x/y/z.png"
    assert storage.join("s3://b", "k") == "s3://b/k"
    assert storage.join(tmp_path, "/etc", "passwd") == str(tmp_path / "etc" / "passwd")


def test_is_s3_and_bad_uris(tmp_path: Path) -> None:
    assert storage.is_s3("s3://b/k") and storage.is_s3("S3://b")
    assert not storage.is_s3(tmp_path) and not storage.is_s3("relative/s3://x")
    assert storage.split_s3_uri("s3://b/a/b.jpg") == ("b", "a/b.jpg")
    with pytest.raises(ValueError, match="no bucket name"):
        storage.split_s3_uri("s3:///key")
    with pytest.raises(ValueError, match="unsupported URI 'gs://b/x'"):
        list(storage.list_objects("gs://b/x"))
    assert storage.local_path_if_local(f"file://{tmp_path}") == str(tmp_path)
    assert storage.local_path_if_local("s3://b/k") is None


# --- local listing ------------------------------------------------------------------


def test_local_listing_is_sorted_recursive_and_case_insensitive(tmp_path: Path) -> None:
    _touch(tmp_path, "b/B.JPG", "b/a.png", "b/notes.txt", "a.webp", "c/d/e.TIFF", ".hidden")
    assert _names(tmp_path, storage.list_objects(tmp_path)) == [
        "a.webp", "b/B.JPG", "b/a.png", "c/d/e.TIFF"
    ]
    assert _names(tmp_path, storage.list_objects(tmp_path, extensions=frozenset({"TXT"}))) == [
        "b/notes.txt"
    ]
    assert len(list(storage.list_objects(tmp_path, extensions=None))) == 6


def test_local_object_info(tmp_path: Path) -> None:
    _touch(tmp_path, "x.png", data=b"12345")
    os.utime(tmp_path / "x.png", ns=(1_700_000_000_123_456_789,) * 2)
    [info] = storage.list_objects(tmp_path)
    assert info.uri == str(tmp_path / "x.png") and os.path.isabs(info.uri)
    assert info.size == 5
    assert info.etag == f"{1_700_000_000_123_456_789:x}-5-{os.stat(info.uri).st_ctime_ns:x}"
    assert info.last_modified.tzinfo == timezone.utc
    assert info.last_modified.timestamp() == pytest.approx(1_700_000_000.123456789)


def test_a_single_file_is_listed_whatever_its_suffix(tmp_path: Path) -> None:
    _touch(tmp_path, "manifest.csv")
    assert _names(tmp_path, storage.list_objects(tmp_path / "manifest.csv")) == ["manifest.csv"]


def test_missing_local_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"the folder {tmp_path / 'nope'} does not exist"):
        list(storage.list_objects(tmp_path / "nope"))


def test_symlinks_out_of_the_root_and_loops_are_not_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    _touch(root, "real/a.jpg")
    _touch(outside, "secret.jpg")
    (root / "out").symlink_to(outside)
    (root / "out.jpg").symlink_to(outside / "secret.jpg")
    (root / "real" / "loop").symlink_to(root)
    (root / "inside.jpg").symlink_to(root / "real" / "a.jpg")
    stats = storage.ListingStats()
    assert _names(root, storage.list_objects(root, stats=stats)) == ["inside.jpg", "real/a.jpg"]
    assert stats.skipped == {"symlink leads outside the folder": 1}  # out.jpg, counted


# --- local read, write, delete, copy --------------------------------------------------


def test_local_read_write_exists(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deep" / "file.bin"
    assert not storage.exists(target)
    storage.write_bytes(target, b"first")
    storage.write_bytes(target, b"second")
    assert storage.read_bytes(target) == b"second" and storage.exists(target)
    assert os.listdir(target.parent) == ["file.bin"]  # no partial files left behind
    assert storage.read_bytes(target, max_bytes=6) == b"second"
    with pytest.raises(ValueError, match="is 6 bytes, more than max_bytes=5"):
        storage.read_bytes(target, max_bytes=5)


def test_local_delete_prefix_deletes_only_that_folder(tmp_path: Path) -> None:
    _touch(tmp_path, "run-1/a", "run-1/sub/b", "run-10/c", "run-1.txt")
    assert storage.delete_prefix(tmp_path / "run-1") == 2
    assert sorted(os.listdir(tmp_path)) == ["run-1.txt", "run-10"]
    assert storage.delete_prefix(tmp_path / "run-1") == 0
    with pytest.raises(NotADirectoryError):
        storage.delete_prefix(tmp_path / "run-1.txt")
    with pytest.raises(ValueError, match="file system root"):
        storage.delete_prefix("/")


def test_local_dir_copies_and_prefixes(tmp_path: Path) -> None:
    _touch(tmp_path / "src", "a.bin", "sub/b.bin", "sub/deeper/c.bin")
    assert storage.upload_dir(tmp_path / "src", tmp_path / "up") == 3
    assert storage.download_dir(tmp_path / "up", tmp_path / "down") == 3
    assert storage.copy_prefix(tmp_path / "down", tmp_path / "copy") == 3
    assert _names(tmp_path / "copy", storage.list_objects(tmp_path / "copy", extensions=None)) == [
        "a.bin", "sub/b.bin", "sub/deeper/c.bin"
    ]
    assert _names(tmp_path, storage.list_prefixes(tmp_path)) == ["copy", "down", "src", "up"]
    assert storage.list_prefixes(tmp_path / "missing") == []
    with pytest.raises(FileNotFoundError):
        storage.upload_dir(tmp_path / "missing", tmp_path / "x")


def test_pyarrow_filesystem_for_local_paths(tmp_path: Path) -> None:
    fs, path = storage.pyarrow_filesystem(tmp_path / "reports")
    assert type(fs).__name__ == "LocalFileSystem" and path == str(tmp_path / "reports")


# --- configuration --------------------------------------------------------------------


def _set_env(monkeypatch: pytest.MonkeyPatch, endpoint: str | None, **extra: str) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    env = {"AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": SECRET, **extra}
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_pyarrow_filesystem_passes_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_env(monkeypatch, "http://127.0.0.1:9999", AWS_REGION="eu-west-3")
    fs, path = storage.pyarrow_filesystem("s3://bucket/reports/x/")
    options = fs.__reduce__()[1][0]
    assert path == "bucket/reports/x"
    assert options["endpoint_override"] == "127.0.0.1:9999" and options["scheme"] == "http"
    assert options["region"] == "eu-west-3"
    # Keys come from the default credential chain, never inside the (picklable) filesystem.
    assert not options.get("access_key") and not options.get("secret_key")


def test_s3_client_is_cached_per_process_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_env(monkeypatch, "http://127.0.0.1:9999")
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(storage.s3_client())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(client) for client in seen}) == 1
    client = seen[0]
    assert client.meta.endpoint_url == "http://127.0.0.1:9999"  # type: ignore[attr-defined]
    assert client.meta.config.s3["addressing_style"] == "path"  # type: ignore[attr-defined]
    retries = client.meta.config.retries  # type: ignore[attr-defined]
    assert retries == {"mode": "standard", "total_max_attempts": 10}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9998")
    assert storage.s3_client() is not client


def test_transient_s3_errors_are_told_from_lasting_ones() -> None:
    from botocore import exceptions as e

    from jobs.storage import s3 as _storage_s3

    def answer(status: int, code: str) -> e.ClientError:
        return e.ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    transient = [answer(500, "InternalError"), answer(503, "SlowDown"), answer(429, "x"), answer(400, "RequestTimeout"),
                 e.EndpointConnectionError(endpoint_url="http://h"), e.ConnectionClosedError(endpoint_url="http://h"),
                 e.ReadTimeoutError(endpoint_url="http://h"), e.ResponseStreamingError(error="reset"),
                 e.IncompleteReadError(actual_bytes=1, expected_bytes=2)]
    lasting = [answer(404, "NoSuchKey"), answer(403, "AccessDenied"), answer(400, "InvalidBucketName"),
               e.SSLError(endpoint_url="http://h", error="bad certificate"), e.NoCredentialsError(),
               ValueError("over max_bytes"), OSError("disk")]
    assert [_storage_s3.is_transient(x) for x in transient] == [True] * len(transient)
    assert [_storage_s3.is_transient(x) for x in lasting] == [False] * len(lasting)


# --- S3 behaviour on moto ---------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on moto, with AWS_* pointing there; returns ``s3://name``."""
    _set_env(monkeypatch, moto_endpoint, AWS_REGION="us-east-1")
    name = f"t-{uuid.uuid4().hex[:16]}"
    storage.s3_client().create_bucket(Bucket=name)
    return f"s3://{name}"


def _put(bucket: str, *keys: str, data: bytes = b"x") -> None:
    name = storage.split_s3_uri(bucket)[0]
    for key in keys:
        storage.s3_client().put_object(Bucket=name, Key=key, Body=data)


def test_s3_listing_filters_skips_markers_and_respects_folders(bucket: str) -> None:
    _put(bucket, "photos/a.jpg", "photos/B.PNG", "photos/notes.txt", "photos/sub/", "photos2/d.jpg")
    _put(bucket, "photos/sub/c.webp", data=b"12345")
    infos = list(storage.list_objects(f"{bucket}/photos"))
    assert sorted(info.uri for info in infos) == [
        f"{bucket}/photos/B.PNG", f"{bucket}/photos/a.jpg", f"{bucket}/photos/sub/c.webp"
    ]
    [webp] = [info for info in infos if info.uri.endswith(".webp")]
    assert webp.size == 5 and webp.etag == hashlib.md5(b"12345").hexdigest()
    assert webp.last_modified.tzinfo == timezone.utc
    assert len(list(storage.list_objects(f"{bucket}/", extensions=None))) == 5
    assert [i.uri for i in storage.list_objects(f"{bucket}/photos/notes.txt")] == [
        f"{bucket}/photos/notes.txt"
    ]
    assert storage.list_prefixes(bucket) == [f"{bucket}/photos", f"{bucket}/photos2"]
    assert storage.list_prefixes(f"{bucket}/photos/") == [f"{bucket}/photos/sub"]


def test_s3_missing_bucket_names_the_endpoint(bucket: str, moto_endpoint: str) -> None:
    with pytest.raises(FileNotFoundError) as error:
        list(storage.list_objects("s3://no-such-bucket-here/x"))
    message = str(error.value)
    assert "bucket no-such-bucket-here does not exist" in message
    assert moto_endpoint in message and "AWS_ENDPOINT_URL" in message and SECRET not in message


def test_s3_read_write_exists(bucket: str) -> None:
    storage.write_bytes(f"{bucket}/dir/x.bin", b"123456")
    assert storage.read_bytes(f"{bucket}/dir/x.bin", max_bytes=6) == b"123456"
    with pytest.raises(ValueError, match="is 6 bytes, more than max_bytes=5"):
        storage.read_bytes(f"{bucket}/dir/x.bin", max_bytes=5)
    with pytest.raises(FileNotFoundError, match=f"{bucket}/dir/nope does not exist"):
        storage.read_bytes(f"{bucket}/dir/nope")
    assert storage.exists(bucket) and storage.exists(f"{bucket}/dir/x.bin")
    assert storage.exists(f"{bucket}/dir") and storage.exists(f"{bucket}/dir/")
    assert not storage.exists(f"{bucket}/di") and not storage.exists(f"{bucket}/dir/x")
    assert not storage.exists("s3://no-such-bucket-here")
    assert not storage.exists("s3://no-such-bucket-here/k")


def test_s3_read_retries_a_body_cut_short_but_not_a_missing_key(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ResponseStreamingError

    storage.write_bytes(f"{bucket}/x.bin", b"123456")
    real = storage.s3_client()
    calls: list[str] = []

    class Flaky:  # the cached client, whose first two bodies break off while read
        def get_object(self, **kwargs: object) -> dict:
            calls.append(str(kwargs["Key"]))
            answer = real.get_object(**kwargs)
            if len(calls) <= 2 and kwargs["Key"] == "x.bin":
                def cut(*_: object) -> bytes:
                    raise ResponseStreamingError(error="Connection reset by peer")
                answer["Body"].read = cut
            return answer

    from jobs.storage import s3 as _storage_s3

    monkeypatch.setattr(_storage_s3, "client", Flaky)
    assert storage.read_bytes(f"{bucket}/x.bin") == b"123456" and calls == ["x.bin"] * 3
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.read_bytes(f"{bucket}/nope")
    assert calls[3:] == ["nope"]  # a missing key is asked for once


def test_s3_delete_prefix_stops_at_the_folder(bucket: str) -> None:
    _put(bucket, "run-1/a", "run-1/sub/b", "run-1/sub/", "run-10/c", "run-1.txt")
    assert storage.delete_prefix(f"{bucket}/run-1") == 3
    left = sorted(i.uri for i in storage.list_objects(bucket, extensions=None))
    assert left == [f"{bucket}/run-1.txt", f"{bucket}/run-10/c"]
    with pytest.raises(ValueError, match="refusing to delete the whole bucket"):
        storage.delete_prefix(f"{bucket}/")


def test_s3_dir_round_trip(bucket: str, tmp_path: Path) -> None:
    _touch(tmp_path / "ckpt", "weights.safetensors", "meta/info.json", data=b"w")
    assert storage.upload_dir(tmp_path / "ckpt", f"{bucket}/tmp/ckpt") == 2
    assert storage.copy_prefix(f"{bucket}/tmp/ckpt/", f"{bucket}/models/v1") == 2
    assert storage.download_dir(f"{bucket}/models/v1", tmp_path / "back") == 2
    assert (tmp_path / "back" / "meta" / "info.json").read_bytes() == b"w"
    with pytest.raises(FileNotFoundError, match="there are no objects under"):
        storage.download_dir(f"{bucket}/models/v2", tmp_path / "none")


@pytest.mark.parametrize("key", ["ckpt/../../escape.bin", "ckpt//etc/escape.bin", "ckpt/a/../../x"])
def test_download_dir_refuses_keys_that_leave_the_folder(
    bucket: str, tmp_path: Path, key: str
) -> None:
    _put(bucket, "ckpt/fine.bin", key)
    with pytest.raises(ValueError, match="would land outside"):
        storage.download_dir(f"{bucket}/ckpt", tmp_path / "dest")
    assert not (tmp_path / "dest" / "fine.bin").exists()  # refused before writing anything
    assert not list(tmp_path.rglob("escape.bin"))
