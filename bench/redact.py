"""Mask passwords in anything the benchmark writes to disk.

A shared Optuna storage is given as a URL (``hpo.storage=postgresql://user:secret@host/db``) and
that URL reaches the composed config, ``sys.argv`` and the Hydra overrides, all of which the
manifest records. :func:`redact` walks such JSON-like data and masks the password in every string
while leaving scheme, user, host and database readable, so the manifest still says *where* the
study lived without saying how to log in.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# scheme://user:PASSWORD@... -- anywhere in a string, so "hpo.storage=postgresql://u:p@h/db" and
# quoted overrides are caught too. The password runs to the first "@", as SQLAlchemy reads it (a
# raw "/" or "?" in it is therefore still masked); masking a bit too much in odd strings such as
# "http://host:80/a@b" is the safe error.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*:)[^@\s]*@")
# ?password=...&... in a query string (libpq and SQLAlchemy accept credentials there too).
_QUERY = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd|secret|token|api_?key|access_token)=)"
                    r"[^&#\s'\"]*", re.IGNORECASE)


def redact_text(text: str) -> str:
    """``text`` with every URL password (userinfo or query parameter) replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)


def redact(obj: Any) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples, strings, scalars) with passwords masked in every
    string, keys included; other values are returned as they are."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        return {redact(k): redact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj
