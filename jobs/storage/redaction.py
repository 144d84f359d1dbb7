"""Secrets out of messages: ``redact(text)`` for every error text that jobs.storage raises.

An endpoint may carry credentials (``AWS_ENDPOINT_URL=http://user:pass@host``) and
botocore puts the whole URL into its connection errors, from where it would reach the
report's ``error`` column, CSV exports, the review page and printed tracebacks.

    python -c "from jobs.storage import redact; print(redact('http://u:p@h:9000/b'))"   # http://***@h:9000/b
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote

# scheme://userinfo@ : the userinfo runs to the last "@" before the host's end (a password
# may hold a raw "@"); it never holds white space, quotes or a "/".
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/?#\"'<>]*@")
_ENDPOINT_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
_SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_SHORTEST = 4  # shorter known secrets are left to the pattern (replacing "ab" everywhere mangles text)
MASK = "***"


def redact(text: object) -> str:
    """``str(text)`` with the userinfo of every URL masked (``http://***@host``), and the
    endpoint's credentials and the AWS secret key, wherever they appear, masked too."""
    clean = _USERINFO.sub(rf"\1{MASK}@", str(text))
    for secret in sorted(known_secrets(), key=len, reverse=True):
        clean = clean.replace(secret, MASK)
    return clean


def known_secrets() -> set[str]:
    """The userinfo of the endpoint variables and its password (raw and decoded; the
    user name alone is no secret), the secret key and the token: strings no message may hold."""
    found: set[str] = set()
    for name in _ENDPOINT_VARS:
        authority = os.environ.get(name, "").partition("://")[2].split("/", 1)[0]
        userinfo = authority.rpartition("@")[0]
        for part in (userinfo, userinfo.partition(":")[2]):
            found |= {part, unquote(part)}
    found |= {os.environ.get(name, "") for name in _SECRET_VARS}
    return {s for s in found if len(s) >= _SHORTEST}


def has_secret(text: object) -> bool:
    """Whether ``redact`` would change ``text``."""
    return redact(text) != str(text)
