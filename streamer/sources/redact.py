"""Camera passwords out of every text a source stores, logs or serves: the one redaction."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

REDACTED = "***"
# scheme://user:password@ -- whatever error text a URL with credentials ends up in.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@\s]*@")


def url_secrets(url: str) -> tuple[str, ...]:
    """The password of `url` as written and percent-decoded (empty when it has none)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return ()
    if not password:
        return ()
    return tuple(sorted({password, unquote(password)}, key=len, reverse=True))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every given secret, and the password of every ``scheme://user:pass@`` in
    it, replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return _USERINFO.sub(rf"\g<scheme>\g<user>:{REDACTED}@", text)
