"""Masking secrets out of free text (exception messages, error reasons) before it is logged or shown."""

from __future__ import annotations

import re

_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/\s:@]+):(?P<pw>[^/\s@]+)@")
_KEY_VALUE = re.compile(r"(?i)(?P<k>\b[\w.-]*(?:password|passwd|secret|token|api[_-]?key|credentials?)[\w.-]*)"
                        r"(?P<sep>\s*[=:]\s*)(?P<q>['\"]?)(?P<v>[^'\"\s,;}]+)")
_AUTH_HEADER = re.compile(r"(?i)\b(bearer|basic|apikey)\s+[A-Za-z0-9._~+/=-]{8,}")


def mask_text(text: str) -> str:
    """``text`` with URL passwords, ``password=…``-style values and auth headers replaced by ``***``."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    text = _KEY_VALUE.sub(lambda m: f"{m['k']}{m['sep']}{m['q']}***", text)
    return _AUTH_HEADER.sub(lambda m: f"{m.group(1)} ***", text)
