"""The one place where psycopg exceptions become Shoal errors (postgres backend)."""

from __future__ import annotations

from typing import Any

from shoal.errors import (
    ConfigError,
    ShoalError,
    StoreAuthError,
    StoreError,
    StoreUnavailable,
)

# libpq reports failed logins without an SQLSTATE: recognise them by their text.
_AUTH_TEXT = (
    "password authentication failed",
    "no password supplied",
    "no pg_hba.conf entry",
    "certificate authentication failed",
    "role \"",  # role "x" does not exist
)
_SSL_TEXT = ("certificate verify failed", "server certificate", "ssl", "root certificate")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # libpq: "connection failed: connection to server at "h", port p failed: FATAL:  why"
    line = lines[0] if lines else text
    if "failed: " in line:
        line = line.rsplit("failed: ", 1)[1] or line
    return " ".join(line.replace("FATAL:", "").split())


def is_connection_error(exc: BaseException) -> bool:
    """True when the connection itself failed (the request may be retried elsewhere)."""
    import psycopg

    if isinstance(exc, OSError | TimeoutError):
        return True
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or ""
        if state == "25P03":  # the server ended a session that stalled in a transaction
            return True
        if isinstance(exc, psycopg.OperationalError):
            return state == "" or state.startswith(("08", "57P"))
    return isinstance(exc, psycopg.InterfaceError)


def translate(exc: BaseException, where: str, *, timeout: float | None = None) -> ShoalError:
    """A Shoal error for a psycopg (or socket/timeout) error. ``where`` names the store."""
    import psycopg

    if isinstance(exc, ShoalError):
        return exc
    if isinstance(exc, TimeoutError):
        limit = f" within {timeout:g} s (store.postgres.timeout)" if timeout else ""
        return StoreUnavailable(f"{where}: no answer{limit}")
    state = getattr(exc, "sqlstate", None) or ""
    reason = _first_line(exc)
    low = reason.lower()
    login_text = not state and any(t in low for t in _AUTH_TEXT)
    if state.startswith("28") or (isinstance(exc, psycopg.OperationalError) and login_text):
        return StoreAuthError(
            f"{where}: login refused: {reason}; check store.postgres.user and the password "
            "(SHOAL__STORE__POSTGRES__PASSWORD)"
        )
    if state == "42501":
        return StoreAuthError(
            f"{where}: {reason}; grant the user CREATE on the database "
            "(or create the schema for it) and USAGE, SELECT, INSERT, UPDATE, DELETE on its tables"
        )
    if state == "3D000" or ("does not exist" in low and "database" in low):
        return ConfigError(f"store.postgres.dbname: {reason}; create it or name another database")
    if isinstance(exc, psycopg.OperationalError) and not state and any(t in low for t in _SSL_TEXT):
        return StoreUnavailable(
            f"{where}: TLS failed: {reason}; check store.postgres.sslmode and sslrootcert"
        )
    if is_connection_error(exc):
        return StoreUnavailable(f"{where}: {reason}")
    if isinstance(exc, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected):
        return StoreUnavailable(f"{where}: {reason} (retry)")
    if isinstance(exc, psycopg.Error):
        return StoreError(f"{where}: {reason}")
    return StoreUnavailable(f"{where}: {reason}")


def sqlstate(exc: Any) -> str:
    return str(getattr(exc, "sqlstate", None) or "")
