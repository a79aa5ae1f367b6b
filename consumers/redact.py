"""Credentials out of any text before it is logged, stored or printed: ``redact(text)``.

A tracking URI such as ``http://user:TOKEN@host`` or ``http://TOKEN@host`` is echoed by MLflow's
client in its error messages ("API request to http://user:TOKEN@host/api/... failed"), and from
there into retry warnings, stored ``last_error`` columns and command output. Every such path
goes through this one function: the log formatters (``worker.logs``), the store's error columns,
and the CLI's error line. It masks the userinfo of every URL (``user:***@``, or ``***@`` when
there is no user), ``Authorization``/``Bearer`` values, and query parameters that carry
secrets. Pure and cheap: text without ``@``, ``bearer`` or ``=`` returns at once.
"""

from __future__ import annotations

import re

MASK = "***"
# scheme://userinfo@ - userinfo stops at the first '/', whitespace, quote or '@' that ends it.
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<info>[^/\s@'\"<>]+)@")
# "Bearer <token>", and any "Authorization: <scheme> <value>" header echoed in an error.
_BEARER = re.compile(r"(?i)(?P<kind>\bbearer|\bauthorization[\"']?\s*[:=]\s*[\"']?(?:\w+\s+)?)"
                     r"(?P<sep>\s*)[A-Za-z0-9._~+/=\-]{6,}")
_SECRET_PARAM = re.compile(
    r"(?i)(?P<key>\b(?:access_token|token|api_key|apikey|password|passwd|secret|sig|signature)"
    r"=)(?P<value>[^&\s'\"]+)")


def _mask_userinfo(m: re.Match[str]) -> str:
    info = m.group("info")
    user, sep, _secret = info.partition(":")
    masked = f"{user}:{MASK}" if sep else MASK
    return f"{m.group('scheme')}{masked}@"


def redact(text: str, max_chars: int | None = None) -> str:
    """``text`` with URL credentials, bearer tokens and secret query parameters masked, then
    cut to ``max_chars`` (masking first, so a cut never leaves half a credential behind)."""
    if "@" in text:
        text = _USERINFO.sub(_mask_userinfo, text)
    lowered = text.lower()
    if "bearer" in lowered or "authorization" in lowered:
        text = _BEARER.sub(lambda m: f"{m.group('kind')}{m.group('sep')}{MASK}", text)
    if "=" in text:
        text = _SECRET_PARAM.sub(lambda m: f"{m.group('key')}{MASK}", text)
    return text if max_chars is None else text[:max_chars]
