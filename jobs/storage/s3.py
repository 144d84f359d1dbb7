"""The S3 half of jobs.storage: one boto3 client per process, errors that say what to do.

Import jobs.storage, not this module: it takes parsed ``(bucket, key)`` pairs, while
jobs.storage takes URIs and also serves local paths. Configuration comes from the
standard AWS variables only (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ...);
credentials never appear in a message or in the client cache's keys. Callers wrap S3
calls in ``jobs.storage.s3_errors.errors_explained``, which redacts every error.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timezone
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
import botocore.exceptions as botocore_errors
import tenacity
from botocore.config import Config
from botocore.exceptions import ClientError

PAGE_SIZE = 1000  # ListObjectsV2 and DeleteObjects both stop at 1000 keys
COPY_OBJECT_LIMIT = 5 * 1024**3  # CopyObject's limit; larger objects copy in parts
_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                    "AWS_PROFILE")
_MISSING = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound"})
_DENIED = frozenset({"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                     "ExpiredToken", "InvalidToken"})
# Status codes and error codes that say "try again" (as botocore's standard mode counts them).
_TRANSIENT_CODES = frozenset({"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout",
                              "Throttling", "ThrottlingException", "RequestLimitExceeded",
                              "TooManyRequestsException", "PriorRequestNotComplete"})
READ_CHUNK = 1024 * 1024  # bytes per read of an object body
TRANSIENT_RETRY_S = 60.0  # how long one object's read or write keeps retrying an outage
_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()
T = TypeVar("T")


def endpoint_url() -> str | None:
    """The custom S3 endpoint from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, as boto3 reads it."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def region() -> str | None:
    """AWS_REGION, else AWS_DEFAULT_REGION (botocore alone reads only the second)."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def client() -> Any:
    """The process's S3 client for the current AWS_* environment (thread-safe, cached).

    The cache key holds the endpoint, region and a digest of the credentials, so a
    changed environment (a test's monkeypatch, a forked worker) gets a fresh client.
    """
    secrets = "\0".join(os.environ.get(name, "") for name in _CREDENTIAL_VARS)
    key = (os.getpid(), endpoint_url(), region(), hashlib.sha256(secrets.encode()).digest())
    with _clients_lock:
        if key not in _clients:
            _clients[key] = _new_client()
        return _clients[key]


def _new_client(settings: dict[str, str] | None = None, **config: Any) -> Any:
    """A new S3 client for the current AWS_* environment, or for ``settings`` (AWS_*
    names, e.g. a test server's); ``config``: botocore Config options overriding ours."""
    endpoint = (settings or {}).get("AWS_ENDPOINT_URL") if settings is not None else endpoint_url()
    options = dict(
        retries={"mode": "standard", "total_max_attempts": 10},  # 10 in all, as pyarrow counts
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=16,
        # Local servers (SeaweedFS, MinIO) have no wildcard DNS for bucket.host names.
        s3={"addressing_style": "path"} if endpoint else None,
    )
    options.update(config)
    # A session per client: boto3 sessions are not thread-safe, clients are.
    if settings is None:
        return boto3.session.Session().client("s3", region_name=region(), config=Config(**options))
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=settings.get("AWS_REGION"),
        aws_access_key_id=settings.get("AWS_ACCESS_KEY_ID"), aws_secret_access_key=settings.get("AWS_SECRET_ACCESS_KEY"),
        config=Config(**options))


def client_for(settings: dict[str, str], **config: Any) -> Any:
    """A new, uncached S3 client for explicit AWS_* ``settings`` rather than the
    environment (a launcher talking to the server it started)."""
    return _new_client(settings, **config)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the server or the network failed for now: refused or dropped
    connections, timeouts, a body cut short, 5xx and throttling answers."""
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return status >= 500 or status == 429 or code in _TRANSIENT_CODES
    if isinstance(exc, botocore_errors.SSLError):  # a certificate problem stays a problem
        return False
    return isinstance(exc, (botocore_errors.ConnectionError, botocore_errors.HTTPClientError,
                            botocore_errors.IncompleteReadError))


def retried(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)``, called again on transient S3 errors for up to
    TRANSIENT_RETRY_S seconds (exponential backoff from 0.25 s, capped at 8 s, plus up to
    1 s of jitter so that many threads do not retry in step).

    botocore retries each request too, but not a body cut short while it is read, and its
    retry quota (500 tokens per client, 5 per retry) is shared by every thread of the
    process: during an outage a few hundred failed requests drain it and from then on
    every request fails at once. This loop sits above both.
    """
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        wait=tenacity.wait_exponential_jitter(multiplier=0.25, max=8.0),
        stop=tenacity.stop_after_delay(TRANSIENT_RETRY_S),
        reraise=True,
    )
    return retrying(function, *args, **kwargs)


def read_body(body: Any, max_bytes: int | None, uri: str) -> bytes:
    """A GetObject body, whole (its length checked by botocore), or ValueError once more
    than ``max_bytes`` came: a body without a Content-Length, or longer than announced,
    is never read without end."""
    if max_bytes is None:
        return body.read()
    parts, total = [], 0
    while chunk := body.read(min(READ_CHUNK, max_bytes + 1 - total)):
        parts.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise ValueError(f"{uri} sent more than max_bytes={max_bytes} bytes (more than its "
                             "Content-Length said); not read further")
    return b"".join(parts)  # the empty read at the end made botocore check the length


def is_missing(exc: ClientError) -> bool:
    """Whether a ClientError says the object or bucket is not there."""
    return str(exc.response.get("Error", {}).get("Code", "")) in _MISSING


def head_object(bucket: str, key: str) -> dict[str, Any] | None:
    """HeadObject's answer, or None when there is no such object."""
    try:
        return retried(client().head_object, Bucket=bucket, Key=key)
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise


def bucket_exists(bucket: str) -> bool:
    """Whether HeadBucket finds ``bucket``."""
    try:
        retried(client().head_bucket, Bucket=bucket)
        return True
    except ClientError as exc:
        if is_missing(exc):
            return False
        raise


def prefix_has_objects(bucket: str, prefix: str) -> bool:
    """Whether any key starts with ``prefix``; False also when the bucket is missing."""
    try:
        answer = retried(client().list_objects_v2, Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except ClientError as exc:
        if is_missing(exc):
            return False
        raise
    return bool(answer.get("Contents"))


def iter_pages(bucket: str, prefix: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """ListObjectsV2 pages of up to 1000 keys under ``prefix``, fetched lazily, each
    page retried on its own (an outage mid-listing does not restart a million-key walk)."""
    request = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": PAGE_SIZE, **kwargs}
    while True:
        page = retried(client().list_objects_v2, **request)
        yield page
        if not page.get("IsTruncated"):
            return
        request["ContinuationToken"] = page["NextContinuationToken"]


def iter_objects(bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    """ListObjectsV2 entries under ``prefix``, folder markers (keys ending in "/") left out."""
    for page in iter_pages(bucket, prefix):
        for item in page.get("Contents", ()):
            if not item["Key"].endswith("/"):
                yield item


def object_fields(item: dict[str, Any]) -> dict[str, Any]:
    """size, etag (quotes stripped) and UTC last_modified of a listing or HEAD answer."""
    return {
        "size": int(item.get("Size", item.get("ContentLength", 0))),
        "etag": str(item["ETag"]).strip('"'),
        "last_modified": item["LastModified"].astimezone(timezone.utc),
    }


def delete_prefix(bucket: str, prefix: str) -> int:
    """Delete every key under ``prefix`` in DeleteObjects batches; returns how many."""
    deleted = 0
    for page in iter_pages(bucket, prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", ())]
        if not keys:
            continue
        answer = retried(client().delete_objects, Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        if answer.get("Errors"):
            first = answer["Errors"][0]
            raise OSError(
                f"could not delete {len(answer['Errors'])} objects under s3://{bucket}/{prefix}, "
                f"e.g. {first.get('Key')}: {first.get('Code')} {first.get('Message')}"
            )
        deleted += len(keys)
    return deleted


def copy_object(src: tuple[str, str], dst: tuple[str, str], size: int) -> None:
    """Server-side copy; objects over CopyObject's 5 GiB limit go through multipart copy."""
    source = {"Bucket": src[0], "Key": src[1]}
    if size <= COPY_OBJECT_LIMIT:
        retried(client().copy_object, CopySource=source, Bucket=dst[0], Key=dst[1])
    else:
        client().copy(source, dst[0], dst[1])


def in_parallel(function: Callable[[T], object], items: Iterable[T], workers: int = 8) -> None:
    """Call ``function`` on every item from a few threads; the first error propagates."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(function, items):
            pass


def pyarrow_s3(bucket: str):  # -> pyarrow.fs.S3FileSystem
    """A pyarrow S3FileSystem configured from the same AWS_* variables as the boto3 client.

    pyarrow ignores AWS_ENDPOINT_URL, so the endpoint is passed as endpoint_override.
    """
    from pyarrow import fs as pafs  # here so that importing jobs.storage stays light

    options: dict[str, Any] = {
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=10),
        "connect_timeout": 10,
        "request_timeout": 60,
    }
    endpoint = endpoint_url()
    if endpoint:
        url = urlsplit(endpoint)
        options["endpoint_override"] = f"{url.hostname}" + (f":{url.port}" if url.port else "")
        options["scheme"] = url.scheme or "https"
        options["region"] = region() or "us-east-1"
    else:
        options["region"] = region() or pafs.resolve_s3_region(bucket)
    # Credentials are deliberately not passed: pyarrow's default AWS credential chain reads
    # the same AWS_* variables (or an instance profile / IRSA role), and a filesystem built
    # with explicit keys carries the secret inside its pickle, which Ray ships to workers.
    return pafs.S3FileSystem(**options)
