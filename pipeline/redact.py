"""Credentials out of everything we print or write: URL user-info and signed-URL query secrets."""

from __future__ import annotations

import re
from typing import Any

# scheme://user:password@host -> scheme://***@host
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s\"']+@")
# ?X-Amz-Signature=...&token=... (presigned S3/GCS/Azure URLs, API keys in query strings)
_QUERY = re.compile(
    r"(?P<name>[?&](?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|X-Goog-Signature|"
    r"X-Goog-Credential|Signature|sig|se|token|access_token|api_key|apikey|key|password|secret)=)"
    r"[^&\s\"'#]+",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with every credential-bearing URL part replaced by ``***``."""
    if "://" not in text and "=" not in text:
        return text
    return _QUERY.sub(r"\g<name>***", _USERINFO.sub(r"\g<scheme>***@", text))


def redact_obj(obj: Any) -> Any:
    """The same, through the strings of nested dicts and lists (configs, reports)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_obj(v) for v in obj)
    return obj
