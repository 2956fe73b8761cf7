"""The one place where grpc / etcd3aio exceptions become Shoal errors (etcd backend)."""

from __future__ import annotations

import re
from typing import Any

import grpc

from shoal.errors import (
    Compacted,
    InvalidTransaction,
    LeaseNotFound,
    NotRunning,
    OutcomeUnknown,
    ShoalError,
    StoreAuthError,
    StoreError,
    StoreUnavailable,
)

# Status codes after which a request may be retried / reconnected.
TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)
# grpc reports these when no connection could be picked: the request never left.
_NOT_SENT = ("failed to connect to all addresses", "connections to all backends failing")
_PREFIX = re.compile(r"^(?:[A-Z_]+: )?(?:ipv4:\S+: )?")
_REAUTH = ("invalid auth token", "revision of auth store is old", "auth revision is old")
# grpc's asyncio client reports a call that failed inside the client (for example a stream
# whose connection broke while a message was being sent) as INTERNAL with this text; no
# server sent it, so it is a transport failure like UNAVAILABLE.
_CLIENT_SIDE = "Internal error from Core"


def _transport(code: Any, details: str) -> bool:
    """True for the status codes after which a request may be retried / reconnected."""
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "too many requests" in details
    if code is grpc.StatusCode.INTERNAL:
        return details == _CLIENT_SIDE
    return code in TRANSIENT


class NeedReauth(Exception):
    """Internal: the token is stale; authenticate again and retry (the request was refused)."""


def rpc_error(exc: BaseException | None) -> Any | None:
    """The grpc AioRpcError in ``exc`` or its cause chain (etcd3aio wraps them)."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, grpc.aio.AioRpcError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def status_of(exc: BaseException) -> tuple[Any, str]:
    """(grpc status code or None, details) of an error."""
    rpc = rpc_error(exc)
    if rpc is None:
        return None, str(exc)
    return rpc.code(), str(rpc.details() or "")


def never_sent(exc: BaseException) -> bool:
    """True when grpc failed the call before sending it (no member connected)."""
    code, details = status_of(exc)
    return code is grpc.StatusCode.UNAVAILABLE and any(p in details for p in _NOT_SENT)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError | StoreUnavailable):
        return True
    code, details = status_of(exc)
    return _transport(code, details) and not any(r in details for r in _REAUTH)


def short_reason(exc: BaseException) -> str:
    """A short, one-line reason for a connectivity failure."""
    if isinstance(exc, TimeoutError):
        return "no response"
    code, details = status_of(exc)
    # "connections to all backends failing; last error: UNKNOWN: ipv4:1.2.3.4:5: why"
    last = _PREFIX.sub("", details.rsplit("last error:", 1)[-1].strip())
    low = last.lower()
    if "connection refused" in low:
        return "connection refused"
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return "TLS handshake failed: the server certificate is not trusted"
    if "BAD_CERTIFICATE" in details or "CERTIFICATE_REQUIRED" in details:
        return "TLS handshake failed: the server refused the client certificate (or its absence)"
    if "TSI_DATA_CORRUPTED" in details:  # TLS 1.3: the server's alert came after the handshake
        return ("TLS handshake failed: the server ended the connection with an alert (most "
                "likely it refused the client certificate, or its absence)")  # fmt: skip
    if "handshake" in low or "ssl" in low or "certificate" in low:
        return f"TLS handshake failed: {_one_line(last, 100)}"
    if "socket closed" in low or "connection reset" in low:
        return "connection closed by the server"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return "no response"
    if details == _CLIENT_SIDE:
        return "the connection failed during the call"
    return _one_line(last, 160) or (code.name.lower() if code is not None else "unknown error")


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def translate(
    exc: BaseException,
    what: str,
    *,
    timeout: float,
    write: bool = False,
    lease: int = 0,
    closed: bool = False,
    credentials: bool = False,
) -> BaseException:
    """Map any exception raised by a grpc/etcd3aio call to a Shoal error.

    ``write=True`` marks calls whose effect may have happened although no reply came:
    transport failures then become :class:`OutcomeUnknown`.
    """
    if isinstance(exc, ShoalError | NeedReauth):
        return exc
    if closed:
        return NotRunning("the etcd store is closed")
    if isinstance(exc, TimeoutError):
        msg = f"etcd {what}: no answer within {timeout}s"
        return (
            OutcomeUnknown(msg + " (the write may have happened)")
            if write
            else (StoreUnavailable(msg))
        )
    rpc = rpc_error(exc)
    if rpc is None:
        if isinstance(exc, grpc.aio.UsageError | RuntimeError):
            return NotRunning(f"etcd {what}: {exc}")
        return StoreError(f"etcd {what} failed: {type(exc).__name__}: {exc}")
    code, details = rpc.code(), str(rpc.details() or "")
    if any(r in details for r in _REAUTH):
        if credentials:
            return NeedReauth(details)
        return StoreAuthError(f"etcd {what}: {details}")
    if "duplicate key given in txn request" in details:
        return InvalidTransaction(
            f"etcd {what}: transaction refused: a branch puts one key twice, or puts and "
            "deletes one key; put each key at most once"
        )
    if "required revision has been compacted" in details:
        return Compacted(0)
    if "requested lease not found" in details:
        return LeaseNotFound(lease)
    if "user name is empty" in details:
        return StoreAuthError(
            f"etcd {what}: etcd has authentication enabled but no credentials were given; "
            "set store.etcd.username and store.etcd.password"
        )
    if "authentication failed" in details:
        return StoreAuthError(
            f"etcd {what}: authentication failed (wrong user or password); "
            "check store.etcd.username and store.etcd.password"
        )
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return StoreAuthError(f"etcd {what}: {details or code.name}")
    if _transport(code, details):
        reason = short_reason(rpc)
        if write and not never_sent(rpc):
            return OutcomeUnknown(f"etcd {what}: {reason} (the write may have happened)")
        return StoreUnavailable(f"etcd {what}: {reason}")
    return StoreError(f"etcd {what} failed: {code.name}: {details}")
