"""The cluster's shared secret: make one, judge one, name one.

:func:`generate_secret` is what ``shoal secret generate`` prints.
:func:`check_secret` refuses secrets that are short or visibly not random,
with a message that says why and how to make a good one — never the secret
itself. :func:`key_id` names a secret in a token without revealing it, so a
verifier can tell "signed with a secret I don't hold" from "tampered with".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import math
import secrets
from collections import Counter

from pydantic import SecretStr

from shoal.errors import ConfigError

__all__ = [
    "GENERATED_SECRET_BYTES",
    "MIN_BITS_PER_CHAR",
    "MIN_SECRET_LENGTH",
    "check_secret",
    "generate_secret",
    "key_id",
    "secret_value",
]

MIN_SECRET_LENGTH = 64  # characters (Camunda Optimize asks for 64)
GENERATED_SECRET_BYTES = 64  # 512 random bits -> 86 URL-safe characters
MIN_BITS_PER_CHAR = 3.0  # Shannon entropy of the character frequencies
_MIN_DISTINCT_TRIGRAMS = 0.75  # share of 3-character windows that must differ
_MAX_STEPS = 0.6  # share of neighbours that may repeat or count (aa, ab, ba)
_FIX = f"use at least {MIN_SECRET_LENGTH} random characters; make one with `shoal secret generate`"


def generate_secret() -> str:
    """A new random secret: 64 bytes from :mod:`secrets`, URL-safe base64 (86 characters)."""
    return secrets.token_urlsafe(GENERATED_SECRET_BYTES)


def secret_value(secret: str | SecretStr) -> str:
    """The plain text of ``secret``."""
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


def check_secret(secret: str | SecretStr, *, what: str = "the session secret") -> None:
    """Raise :class:`~shoal.ConfigError` unless ``secret`` is long and looks random.

    Refused: fewer than 64 characters; under 3 bits of entropy per character
    (``"a" * 64``, a handful of distinct characters); mostly repeating blocks
    (``"0123456789" * 7``); mostly runs or counting (``"abcdef..."``). Random
    hex, base64 or decimal secrets of 64 characters or more pass. The message
    names ``what`` and the reason, never the value.
    """
    value = secret_value(secret)
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string — {_FIX}")
    length = len(value)
    if length < MIN_SECRET_LENGTH:
        raise ConfigError(f"{what} is too short ({length} characters) — {_FIX}")
    counts = Counter(value)
    bits = max(0.0, -sum(n / length * math.log2(n / length) for n in counts.values()))
    if bits < MIN_BITS_PER_CHAR:
        raise ConfigError(
            f"{what} is not random enough: {len(counts)} distinct characters, "
            f"{bits:.1f} bits of entropy per character (random secrets have at least "
            f"{MIN_BITS_PER_CHAR:g}) — {_FIX}"
        )
    windows = [value[i : i + 3] for i in range(length - 2)]
    if len(set(windows)) < _MIN_DISTINCT_TRIGRAMS * len(windows):
        raise ConfigError(f"{what} is not random enough: it repeats the same blocks — {_FIX}")
    steps = sum(1 for a, b in itertools.pairwise(value) if abs(ord(a) - ord(b)) <= 1)
    if steps > _MAX_STEPS * (length - 1):
        raise ConfigError(
            f"{what} is not random enough: it is mostly runs or sequences "
            f"(like 'aaa' or 'abc') — {_FIX}"
        )


def key_id(secret: str | SecretStr) -> str:
    """A short public name for ``secret``: 8 URL-safe characters of
    HMAC-SHA256(secret, label). Reveals nothing usable about the secret."""
    digest = hmac.new(
        secret_value(secret).encode(), b"shoal.sessions.key-id", hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest[:6]).decode("ascii")
