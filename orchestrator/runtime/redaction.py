"""The one place that hides credentials in URIs, wherever a URI or an error quoting it is shown or
logged (tracking URIs such as ``http://user:pass@host``, storage URIs with tokens in the query)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit


def redact(text: str, uri: str | None = None) -> str:
    """``text`` with the credentials of ``uri`` (default: ``text`` itself is the URI) replaced by ``***``
    wherever they appear: the userinfo (``user:password@``), its parts, and query-string values
    (``?token=...``, a presigned URL's signature)."""
    parts = urlsplit(uri if uri is not None else text)
    secrets = set()
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        secrets |= {userinfo, *userinfo.split(":", 1)}
    secrets |= {value for _, value in parse_qsl(parts.query, keep_blank_values=False)}
    for secret in sorted((s for s in secrets if len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
