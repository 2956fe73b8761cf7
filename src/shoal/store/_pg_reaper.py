"""Revoking a PostgreSQL lease from the reaper process (synchronous psycopg).

:func:`reaper_prepare` runs when the reaper starts, while the node lives: it
imports psycopg and opens the connection the revoke will use, so at the node's
death the revoke is one short transaction (a few milliseconds), with no import,
TCP, TLS or password exchange on the way. If that connection died meanwhile,
the revoke opens a new one.

The revoke is the store's own: under the revision row lock, the lease's keys
are deleted at one new revision (logged for watchers, who are notified) and the
lease row goes. A revoke that is retried after an unclear failure finds the
lease gone and reports it: it never applies twice.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

from shoal.errors import StoreUnavailable
from shoal.store._pg_sql import Sql, session_settings

__all__ = ["reaper_prepare", "reaper_revoke"]

_conn: Any = None  # the connection opened by reaper_prepare


def _connect(info: Mapping[str, Any]) -> Any:
    import psycopg
    from psycopg.conninfo import make_conninfo

    timeout = float(info.get("timeout") or 5.0)
    extra = {k: v for k, v in dict(info.get("conninfo") or {}).items() if v is not None}
    extra.setdefault("connect_timeout", max(1, round(timeout)))
    extra.setdefault("tcp_user_timeout", int(timeout * 1000))  # a dead peer fails in time
    extra.setdefault("application_name", "shoal-reaper")
    conn = psycopg.connect(make_conninfo(str(info.get("dsn") or ""), **extra), autocommit=True)
    conn.execute(session_settings(timeout))
    return conn


def reaper_prepare(info: Mapping[str, Any]) -> None:
    """Import psycopg and open the connection :func:`reaper_revoke` will use."""
    global _conn
    import psycopg
    import psycopg.conninfo  # noqa: F401

    Sql(str(info.get("schema") or "shoal"))  # a bad schema name fails now, not at death
    try:
        _conn = _connect(info)
    except Exception:  # the revoke connects itself (the node may start before the DB)
        _conn = None


def _revoke_on(conn: Any, sql: Sql, lease: int) -> str:
    """The store's revoke in four round trips: BEGIN with the revision lock; the lease
    row; its keys (logged at one new revision); the revision, NOTIFY and COMMIT."""
    cur = conn.execute(f"BEGIN; {sql.lock_rev}")
    while cur.nextset():
        pass
    rev = int(cur.fetchone()[0])
    try:
        if not conn.execute(sql.delete_lease + " RETURNING id", (lease,)).fetchall():
            conn.execute("ROLLBACK")
            return "already gone"
        cur = conn.execute(sql.delete_lease_keys, {"lease": lease, "rev": rev + 1})
        keys = max(0, cur.rowcount)
    except BaseException:
        conn.close()
        raise
    conn.execute(f"{sql.finish(rev + 1)}; COMMIT" if keys else "COMMIT")
    return f"revoked ({keys} key(s) deleted at revision {rev + 1})" if keys else "revoked"


def reaper_revoke(info: Mapping[str, Any], lease: int) -> str:
    """Revoke ``lease``; retried on a new connection until ``2 * timeout`` passed.
    Returns what happened; raises StoreUnavailable when the server never answered."""
    import psycopg

    global _conn
    sql = Sql(str(info.get("schema") or "shoal"))
    deadline = time.monotonic() + 2 * float(info.get("timeout") or 5.0)
    last = "no attempt"
    while True:
        conn, _conn = _conn, None
        try:
            if conn is None or conn.closed or conn.broken:
                conn = _connect(info)
            return _revoke_on(conn, sql, lease)
        except psycopg.Error as exc:
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        if time.monotonic() >= deadline:
            raise StoreUnavailable(f"postgres: {last}")
        time.sleep(0.05)
