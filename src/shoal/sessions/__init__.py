"""Shared sessions: tokens any node can issue and every node can verify.

A token is signed (itsdangerous, HMAC-SHA256) with the cluster's shared
secret, so a session made on node A is accepted on node B. It carries the
subject, a random session id, issue and expiry times, and optional data::

    manager = SessionManager.from_config(config, revoked=revoked_in(node.state))
    token = manager.issue("alice", {"role": "admin"})
    session = manager.verify(token)        # Session, or raises InvalidSession

Rotation: sign with the new ``secret``, keep the old one in
``previous_secrets`` until every old token has expired. Each token names its
secret by a :func:`~shoal.config._secrets.key_id`, so a refusal says whether the
token was tampered with or signed with a secret this node does not hold.

Log out everywhere: :func:`revoke_everywhere` writes ``{"before": T}`` under
:func:`revocation_key` in the replicated namespace ``sessions``; every
manager built with ``revoked=revoked_in(state)`` then refuses that subject's
sessions issued at or before T. Guide: ``docs/sessions.md``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from itsdangerous import BadData, BadPayload, BadSignature, URLSafeSerializer
from pydantic import SecretStr

from shoal.clock import Clock, SystemClock
from shoal.config import AuthSection, NodeConfig
from shoal.config._secrets import check_secret, generate_secret, key_id, secret_value
from shoal.errors import ConfigError, InvalidArgument, InvalidArgumentType, InvalidSession
from shoal.sessions._revocation import (
    NAMESPACE,
    RevocationState,
    StateDoc,
    revocation_key,
    revoke_everywhere,
    revoke_session,
    revoked_in,
)

__all__ = [
    "DEFAULT_TTL",
    "MAX_TOKEN_LENGTH",
    "NAMESPACE",
    "InvalidSession",
    "Refusal",
    "RevocationState",
    "Session",
    "SessionManager",
    "StateDoc",
    "check_secret",
    "generate_secret",
    "revocation_key",
    "revoke_everywhere",
    "revoke_session",
    "revoked_in",
]

DEFAULT_TTL = 3600.0
MAX_TOKEN_LENGTH = 8192
_SALT = "shoal.sessions.v1"
_FORMAT = 1
_KID_RE = re.compile(r"[A-Za-z0-9_-]{8}")
_BODY_RE = re.compile(r"\.?[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class Refusal(StrEnum):
    """Why a token was refused (:attr:`InvalidSession.reason`; equal to the plain string)."""

    MALFORMED = "malformed"
    TAMPERED = "tampered"
    FOREIGN_SECRET = "foreign_secret"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class Session:
    """A verified login session (``shoal.Session``): what
    :meth:`SessionManager.verify` returns for a user's token. Times are
    wall-clock seconds since the epoch.

    Not to be confused with the node's lease session,
    :class:`shoal.primitives.session.LeaseSession` (a store lease kept alive)."""

    subject: str
    session_id: str
    data: dict[str, Any]
    issued_at: float
    expires_at: float


def _refuse(reason: Refusal, detail: str) -> InvalidSession:
    return InvalidSession(reason, f"session refused ({reason}): {detail}")


def _serializer(secret: str) -> URLSafeSerializer:
    return URLSafeSerializer(
        secret,
        salt=_SALT,
        signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha256},
    )


class SessionManager:
    """Issues and verifies session tokens with the cluster's shared secret.

    ``secret`` signs new tokens; tokens signed with it or any of
    ``previous_secrets`` verify. Every secret is checked by
    :func:`check_secret` (:class:`~shoal.ConfigError` if weak). ``ttl`` is the
    default lifetime in seconds. ``revoked(session) -> bool`` is asked about
    every otherwise valid token — use :func:`revoked_in` for replicated
    state; it runs on the caller's thread, so keep it a local read (what it
    raises propagates: fail closed). ``clock``
    (a :class:`~shoal.clock.Clock`; its ``time()`` is used) defaults to the
    system clock. :meth:`issue` and :meth:`verify` never block.
    """

    def __init__(
        self,
        secret: str | SecretStr,
        previous_secrets: Iterable[str | SecretStr] = (),
        *,
        ttl: float = DEFAULT_TTL,
        revoked: Callable[[Session], bool] | None = None,
        clock: Clock | None = None,
    ) -> None:
        check_secret(secret, what="the session secret")
        previous = list(previous_secrets)
        for i, old in enumerate(previous):
            check_secret(old, what=f"previous secret #{i + 1}")
        self._ttl = _check_ttl(ttl)
        self._revoked = revoked
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._kid = key_id(secret)
        self._current = _serializer(secret_value(secret))
        self._by_kid: dict[str, URLSafeSerializer] = {self._kid: self._current}
        for old in previous:
            self._by_kid.setdefault(key_id(old), _serializer(secret_value(old)))

    @classmethod
    def from_config(
        cls,
        config: NodeConfig | AuthSection,
        *,
        ttl: float = DEFAULT_TTL,
        revoked: Callable[[Session], bool] | None = None,
        clock: Clock | None = None,
    ) -> SessionManager:
        """A manager for ``config.auth`` (``secret`` and ``previous_secrets``)."""
        auth = config.auth if isinstance(config, NodeConfig) else config
        if auth.secret is None:
            raise ConfigError(
                "auth.secret is not set — set SHOAL__AUTH__SECRET on every node to the same "
                "secret; make one with `shoal secret generate`"
            )
        return cls(auth.secret, auth.previous_secrets, ttl=ttl, revoked=revoked, clock=clock)

    @property
    def ttl(self) -> float:
        """The default lifetime of a token, in seconds (a cookie's max-age)."""
        return self._ttl

    @staticmethod
    def revocation_key(*, subject: str | None = None, session_id: str | None = None) -> str:
        """The same as :func:`revocation_key`."""
        return revocation_key(subject=subject, session_id=session_id)

    def issue(
        self, subject: str, data: Mapping[str, Any] | None = None, ttl: float | None = None
    ) -> str:
        """A new token for ``subject`` with ``data`` (JSON-serialisable), valid
        ``ttl`` seconds (default: the manager's), signed with the current secret."""
        if not isinstance(subject, str) or not subject:
            raise InvalidArgument("session subject must be a non-empty string")
        lifetime = self._ttl if ttl is None else _check_ttl(ttl)
        now = self._clock.time()
        payload: dict[str, Any] = {
            "v": _FORMAT,
            "sub": subject,
            "sid": secrets.token_urlsafe(16),
            "iat": now,
            "exp": now + lifetime,
        }
        if data:
            payload["data"] = dict(data)
        try:
            body = self._current.dumps(payload)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentType(f"session data must be JSON-serialisable: {exc}") from None
        token = f"{self._kid}.{body}"
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidArgument(
                f"session token too long ({len(token)} > {MAX_TOKEN_LENGTH} bytes)"
            )
        return token

    def verify(self, token: str) -> Session:
        """The session in ``token``; raises :class:`InvalidSession` whose
        ``reason`` is a :class:`Refusal`. Never echoes the token."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise _refuse(Refusal.MALFORMED, "not a session token")
        kid, _, body = token.partition(".")
        if not _KID_RE.fullmatch(kid) or not _BODY_RE.fullmatch(body):
            raise _refuse(Refusal.MALFORMED, "not a session token")
        serializer = self._by_kid.get(kid)
        if serializer is None:
            raise _refuse(
                Refusal.FOREIGN_SECRET,
                "signed with a secret this node does not hold (another cluster's, or one "
                "dropped from auth.previous_secrets)",
            )
        try:
            payload = serializer.loads(body)
        except BadPayload:
            raise _refuse(Refusal.MALFORMED, "the signed payload is unreadable") from None
        except BadSignature:
            raise _refuse(Refusal.TAMPERED, "the signature does not match") from None
        except BadData:
            raise _refuse(Refusal.MALFORMED, "not a session token") from None
        session = _session_from(payload)
        if session.expires_at <= self._clock.time():
            raise _refuse(Refusal.EXPIRED, "the session has expired; log in again")
        if self._revoked is not None and self._revoked(session):
            raise _refuse(Refusal.REVOKED, "the session was logged out")
        return session


def _check_ttl(ttl: float) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < float("inf"):
        raise InvalidArgument(f"session ttl must be a positive number of seconds, got {ttl!r}")
    return float(ttl)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _session_from(payload: Any) -> Session:
    ok = (
        isinstance(payload, dict)
        and payload.get("v") == _FORMAT
        and isinstance(payload.get("sub"), str)
        and payload["sub"] != ""
        and isinstance(payload.get("sid"), str)
        and _number(payload.get("iat"))
        and _number(payload.get("exp"))
        and isinstance(payload.get("data", {}), dict)
    )
    if not ok:
        raise _refuse(Refusal.MALFORMED, "the payload is not a session")
    return Session(
        subject=payload["sub"],
        session_id=payload["sid"],
        data=dict(payload.get("data", {})),
        issued_at=float(payload["iat"]),
        expires_at=float(payload["exp"]),
    )
