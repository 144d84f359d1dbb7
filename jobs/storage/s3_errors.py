"""S3 errors as jobs.storage raises them: FileNotFoundError, PermissionError,
ConnectionError with a message that says what to do, and never a secret.

Import jobs.storage, not this module. Every S3 call of jobs.storage runs inside
``errors_explained``; messages are redacted by jobs/storage/redaction.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import botocore.exceptions as botocore_errors
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from jobs.storage.redaction import has_secret, redact
from jobs.storage.s3 import _DENIED, _MISSING, client, endpoint_url, is_transient


def shown_endpoint() -> str:
    """The endpoint for messages, without any user:password@ part."""
    try:
        url = urlsplit(client().meta.endpoint_url)
        return f"{url.scheme}://{url.hostname}" + (f":{url.port}" if url.port else "")
    except Exception:  # noqa: BLE001 - a malformed endpoint: say what we can, never its userinfo
        return redact(endpoint_url() or "the default AWS endpoint")


@contextmanager
def errors_explained(uri: str, bucket: str) -> Iterator[None]:
    """Turn botocore errors into FileNotFoundError / PermissionError / ConnectionError.

    Every error leaving here has its message redacted (no endpoint userinfo, no secret
    key) and is raised ``from None``: a chained botocore error would print the endpoint
    URL, user:password included, in the traceback below ours."""
    try:
        yield
    except ClientError as exc:
        raise _client_error(exc, uri, bucket) from None
    except EndpointConnectionError:
        raise ConnectionError(redact(
            f"cannot reach S3 at {shown_endpoint()} for {uri}; check AWS_ENDPOINT_URL "
            "and that the server is running")) from None
    except NoCredentialsError:
        raise PermissionError(redact(
            f"no AWS credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE, or run with an instance/pod role)")) from None
    except botocore_errors.BotoCoreError as exc:
        if is_transient(exc):  # dropped connections, timeouts, bodies cut short: after the retries
            raise ConnectionError(redact(
                f"cannot reach S3 at {shown_endpoint()} for {uri}: {type(exc).__name__}: {exc}")) from None
        raise _redacted(exc) from None
    except Exception as exc:
        if _leaks(exc):  # e.g. boto3's "Invalid endpoint: <URL>" ValueError
            raise _redacted(exc) from None
        raise


def _client_error(exc: ClientError, uri: str, bucket: str) -> Exception:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    if code == "NoSuchBucket":
        return FileNotFoundError(redact(
            f"bucket {bucket} does not exist or is not reachable at {shown_endpoint()}; "
            "check the bucket name and AWS_ENDPOINT_URL"))
    if code in _MISSING:
        return FileNotFoundError(redact(f"{uri} does not exist"))
    if code in _DENIED:
        return PermissionError(redact(
            f"access to {uri} was denied at {shown_endpoint()} ({code}); check "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or the role) and the bucket policy"))
    response = dict(exc.response)  # a ClientError still, its server message redacted
    response["Error"] = {k: redact(v) if isinstance(v, str) else v for k, v in response.get("Error", {}).items()}
    return ClientError(response, exc.operation_name)


def _leaks(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception chained to it holds a secret in its message."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if has_secret(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _redacted(exc: BaseException) -> BaseException:
    """A copy of ``exc`` of the same type with its message redacted, else an OSError."""
    kwargs = getattr(exc, "kwargs", None)
    try:
        if isinstance(exc, botocore_errors.BotoCoreError) and isinstance(kwargs, dict):
            return type(exc)(**{k: redact(v) if not isinstance(v, (int, float)) else v for k, v in kwargs.items()})
        return type(exc)(redact(exc))
    except Exception:  # noqa: BLE001 - a type that takes other arguments
        return OSError(redact(f"{type(exc).__name__}: {exc}"))
