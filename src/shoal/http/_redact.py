"""What open endpoints may show of an error: its class and a redacted message.

A duty's exception text can carry a secret (``connection to
postgres://app:hunter2@db failed``). ``/cluster``, ``/events`` and the
dashboard need no credentials, so they show :func:`redact_error` of it:
URL credentials, ``password=...``-style pairs and long token-like strings
become ``***`` and the message is cut to :data:`MAX_SHOWN` characters. The
full text goes to the node's own log and to authenticated callers only.
"""

from __future__ import annotations

import copy
import re
from typing import Any

__all__ = ["MAX_SHOWN", "redact_error", "redact_event", "redact_view"]

MAX_SHOWN = 200
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]*@")
_SECRET_PAIR = re.compile(
    r"(?i)\b([\w.-]*(?:pass(?:word|wd)?|pwd|secret|token|api[_-]?key|authorization|"
    r"credentials?)[\w.-]*)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|(?:bearer\s+)?[^\s,;&)]+)"
)
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9+_=-]{24,}")


def _mask_token(match: re.Match[str]) -> str:
    text = match.group(0)
    has_digit = any(c.isdigit() for c in text)
    has_alpha = any(c.isalpha() for c in text)
    return "***" if has_digit and has_alpha else text


def redact_text(text: str) -> str:
    """``text`` with credentials masked, cut to :data:`MAX_SHOWN` characters."""
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    text = _SECRET_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    text = _TOKEN_LIKE.sub(_mask_token, text)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def redact_error(text: str) -> str:
    """``"Class: message"`` -> the class and the redacted message."""
    if not text:
        return text
    cls, sep, message = text.partition(": ")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w.]*", cls):
        return redact_text(text)
    return f"{cls}: {redact_text(message)}"


def redact_view(view: dict[str, Any]) -> dict[str, Any]:
    """A copy of a cluster view fit for an open endpoint."""
    out = copy.copy(view)
    out["local_duties"] = [
        {**d, "last_error": redact_error(str(d.get("last_error") or ""))}
        for d in view.get("local_duties", ())
    ]
    return out


def redact_event(event: dict[str, Any]) -> dict[str, Any]:
    """A copy of a live-feed event with its detail redacted."""
    return {**event, "detail": redact_error(str(event.get("detail") or ""))}
