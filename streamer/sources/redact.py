"""Camera passwords out of every text a source stores, logs or serves: the one redaction."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote, unquote_plus, urlsplit

REDACTED = "***"
# scheme://user:password@ -- whatever error text a URL with credentials ends up in.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@\s]*@")
# What names a credential: a query parameter (``?user=admin&pwd=...``, ``&token=``, ``&auth=``)
# or an FFmpeg option (``headers: "Authorization: ..."``, ``cookies``).
_SECRET_NAME = r"[^=&;?#\s]*(?:pass|pwd|auth|token|secret|key|sig|cred|cookie|header)[^=&;?#\s]*"
_SECRET_NAME_RE = re.compile(_SECRET_NAME, re.IGNORECASE)
_QUERY_SECRET = re.compile(rf"(?P<name>[?&;]{_SECRET_NAME}=)[^&;#\s'\"]*", re.IGNORECASE)
_COOKIE_ATTRIBUTES = frozenset(("path", "domain", "expires", "max-age", "secure", "httponly"))


def _forms(value: str) -> set[str]:
    """A secret as written and percent-decoded."""
    return {value, unquote(value)} - {""}


def url_secrets(url: str, av_options: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The secrets of a source, as written and percent-decoded, longest first: the password of
    `url`, the values of its credential-like query parameters (``pwd=``, ``token=``, ...), and
    the values of credential-like FFmpeg options (``headers``, ``cookies``, ...)."""
    found: set[str] = set()
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        parts, password = None, None
    if password:
        found |= _forms(password)
    if parts is not None:
        for pair in re.split("[&;]", parts.query):
            name, sep, value = pair.partition("=")
            if sep and _SECRET_NAME_RE.fullmatch(unquote_plus(name)):
                found |= _forms(value) | {unquote_plus(value)} - {""}
    for name, value in (av_options or {}).items():
        if _SECRET_NAME_RE.fullmatch(name):
            if name.lower() != "headers":
                found |= _forms(value)
            if "cookie" in name.lower():  # "name=value; path=/" lines
                for pair in re.split(r"[;\r\n]", value):
                    key, _, cookie = pair.partition("=")
                    if key.strip().lower() not in _COOKIE_ATTRIBUTES:
                        found |= _forms(cookie.strip())
            for line in value.splitlines():  # headers: "Name: value" lines
                header, _, header_value = line.partition(":")
                if _SECRET_NAME_RE.fullmatch(header.strip()):  # Authorization, Cookie, ...
                    header_value = header_value.strip()
                    found |= _forms(header_value)
                    found |= _forms(header_value.rpartition(" ")[2])  # "Basic <credential>"
    return tuple(sorted(found, key=len, reverse=True))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every given secret, the password of every ``scheme://user:pass@``, and the
    value of every credential-like query parameter (``?pwd=...``) replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = _USERINFO.sub(rf"\g<scheme>\g<user>:{REDACTED}@", text)
    return _QUERY_SECRET.sub(rf"\g<name>{REDACTED}", text)
