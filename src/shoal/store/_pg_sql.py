"""The SQL of the PostgreSQL backend: its tables and statements, in one place.

Tables (all inside the store's own schema, so several clusters share a database):

* ``meta (k, v)``: ``rev`` (the store revision), ``compact`` (the compaction point),
  ``schema_version``;
* ``kv``: one row per key (``key`` is ``bytea`` so ranges follow byte order, like
  etcd), with ``create_revision``, ``mod_revision``, ``version`` and ``lease``;
* ``leases (id, ttl, expires)``: ``expires`` is a ``timestamptz`` computed and
  compared with the SERVER's ``clock_timestamp()``, never a client's clock;
* ``log``: one row per change event (the watch history), ordered by ``(rev, id)``.

Every statement that changes ``kv`` runs after ``LOCK_REV`` took the row lock on
``meta.rev`` in the same transaction: writers are serialised by that one row, so
revisions commit in order and a reader never sees revision N+1 without N.
"""

from __future__ import annotations

import re

from shoal.errors import ConfigError, InvalidArgument

SCHEMA_VERSION = 1
# The advisory-lock class id of Shoal (arbitrary, constant): (class, hashtext(schema)).
LOCK_CLASS = 0x5A0A
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")

PUT, DEL = 0, 1
IDLE_IN_TXN_MS = 1000  # see session_settings


def check_schema_name(schema: str) -> str:
    if not _IDENT.match(schema):
        raise ConfigError(
            f"store.postgres.schema: {schema!r} is not a valid schema name; use 1-40 "
            "lower-case letters, digits or '_', starting with a letter or '_' (e.g. shoal)"
        )
    return schema


class Sql:
    """Every statement of one store, with its schema name filled in."""

    def __init__(self, schema: str) -> None:
        s = '"' + check_schema_name(schema) + '"'
        self.schema = schema
        self.channel = f"shoal_{schema}"
        self.listen = f'LISTEN "{self.channel}"'
        self.create = (
            f"CREATE SCHEMA IF NOT EXISTS {s}",
            f"CREATE TABLE IF NOT EXISTS {s}.meta (k text PRIMARY KEY, v bigint NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {s}.kv (key bytea PRIMARY KEY, value bytea NOT NULL,"
            " create_revision bigint NOT NULL, mod_revision bigint NOT NULL,"
            " version bigint NOT NULL, lease bigint NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS kv_lease ON {s}.kv (lease) WHERE lease <> 0",
            f"CREATE TABLE IF NOT EXISTS {s}.leases (id bigint PRIMARY KEY, ttl integer NOT NULL,"
            " expires timestamptz NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS leases_expires ON {s}.leases (expires)",
            f"CREATE TABLE IF NOT EXISTS {s}.log (id bigserial PRIMARY KEY, rev bigint NOT NULL,"
            " type smallint NOT NULL, key bytea NOT NULL, value bytea NOT NULL,"
            " create_revision bigint NOT NULL, version bigint NOT NULL, lease bigint NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS log_rev ON {s}.log (rev)",
            f"INSERT INTO {s}.meta VALUES ('rev', 1), ('compact', 0),"
            f" ('schema_version', {SCHEMA_VERSION}) ON CONFLICT (k) DO NOTHING",
        )
        self.schema_lock = f"SELECT pg_advisory_xact_lock({LOCK_CLASS}, hashtext('{schema}'))"
        self.sweep_lock = (
            f"SELECT pg_try_advisory_xact_lock({LOCK_CLASS + 1}, hashtext('{schema}'))"
        )
        self.version = f"SELECT v FROM {s}.meta WHERE k = 'schema_version'"
        self.lock_rev = (
            f"SELECT v, pg_current_xact_id()::text FROM {s}.meta WHERE k = 'rev' FOR UPDATE"
        )
        self._finish = (
            f"UPDATE {s}.meta SET v = {{rev}} WHERE k = 'rev';"
            f" SELECT pg_notify('{self.channel}', '{{rev}}')"
        )
        self.rev = f"SELECT v FROM {s}.meta WHERE k = 'rev'"
        self.compact_point = f"SELECT v FROM {s}.meta WHERE k = 'compact'"
        self.set_compact = f"UPDATE {s}.meta SET v = %s WHERE k = 'compact'"
        self.drop_log = f"DELETE FROM {s}.log WHERE rev < %s"
        cols = "key, value, create_revision, mod_revision, version, lease"
        self.get = f"SELECT {cols} FROM {s}.kv WHERE key = %s"
        self.get_many = f"SELECT {cols} FROM {s}.kv WHERE key = ANY(%s)"
        self._get_listed = f"SELECT {cols} FROM {s}.kv WHERE key = ANY(ARRAY[{{keys}}]::bytea[])"
        self.range_from = f"SELECT {cols} FROM {s}.kv WHERE key >= %s ORDER BY key"
        self.range_span = f"SELECT {cols} FROM {s}.kv WHERE key >= %s AND key < %s ORDER BY key"
        # a range with the revision it was read at, in ONE statement (one snapshot)
        self.range_rev = (
            f"SELECT r.v, {', '.join('kv.' + c for c in cols.split(', '))}"
            f" FROM {s}.meta r LEFT JOIN {s}.kv kv ON kv.key >= %s AND (%s::bytea IS NULL"
            " OR kv.key < %s::bytea) WHERE r.k = 'rev' ORDER BY kv.key"
        )
        # write one key and its PUT event; %(rev)s is the revision being written. With a
        # lease that is gone (or expired by the server's clock) nothing is written (0 rows).
        self.put = (
            f"WITH w AS (INSERT INTO {s}.kv AS t ({cols})"
            " SELECT %(key)s, %(value)s, %(rev)s, %(rev)s, 1, %(lease)s"
            f" WHERE %(lease)s = 0 OR EXISTS (SELECT 1 FROM {s}.leases"
            " WHERE id = %(lease)s AND expires > clock_timestamp())"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
            " mod_revision = excluded.mod_revision, version = t.version + 1,"
            " lease = excluded.lease RETURNING key, value, create_revision, version, lease)"
            f" INSERT INTO {s}.log (rev, type, key, value, create_revision, version, lease)"
            f" SELECT %(rev)s, {PUT}, key, value, create_revision, version, lease FROM w"
        )
        # delete keys and log their DELETE events (in key order)
        delete_log = (
            f" INSERT INTO {s}.log (rev, type, key, value, create_revision, version, lease)"
            f" SELECT %(rev)s, {DEL}, key, ''::bytea, 0, 0, 0 FROM d ORDER BY key"
        )
        self.delete_key = f"WITH d AS (DELETE FROM {s}.kv WHERE key = %(lo)s RETURNING key)"
        self.delete_key += delete_log
        self.delete_from = f"WITH d AS (DELETE FROM {s}.kv WHERE key >= %(lo)s RETURNING key)"
        self.delete_from += delete_log
        self.delete_span = (
            f"WITH d AS (DELETE FROM {s}.kv WHERE key >= %(lo)s AND key < %(hi)s RETURNING key)"
        )
        self.delete_span += delete_log
        self.delete_lease_keys = (
            f"WITH d AS (DELETE FROM {s}.kv WHERE lease = %(lease)s RETURNING key)" + delete_log
        )
        # leases: the server's clock decides
        self.lease_row = f"SELECT ttl FROM {s}.leases WHERE id = %s FOR UPDATE"
        self.grant = (
            f"INSERT INTO {s}.leases (id, ttl, expires)"
            " VALUES (%s, %s, clock_timestamp() + %s * interval '1 second')"
            " ON CONFLICT (id) DO NOTHING"  # a grant resent after a lost reply
        )
        self.keepalive = (
            f"UPDATE {s}.leases SET expires = clock_timestamp() + ttl * interval '1 second'"
            " WHERE id = %s AND expires > clock_timestamp() RETURNING ttl"
        )
        self.delete_lease = f"DELETE FROM {s}.leases WHERE id = %s"
        self.lease_left = (
            f"SELECT ceil(extract(epoch FROM expires - clock_timestamp()))::bigint"
            f" FROM {s}.leases WHERE id = %s"
        )
        self.any_due = (
            f"SELECT EXISTS (SELECT 1 FROM {s}.leases WHERE expires <= clock_timestamp())"
        )
        self.due = (
            f"SELECT id FROM {s}.leases WHERE expires <= clock_timestamp() ORDER BY expires, id"
            " FOR UPDATE"
        )
        # the watch: events after a revision, with the compaction point and the revision
        self.events = (
            f"SELECT c.v, r.v, l.rev, l.type, l.key, l.value, l.create_revision, l.version,"
            f" l.lease FROM {s}.meta c JOIN {s}.meta r ON r.k = 'rev'"
            f" LEFT JOIN {s}.log l ON l.rev > %s AND l.rev <= r.v"
            " WHERE c.k = 'compact' ORDER BY l.rev, l.id"
        )
        self.history = (
            f"SELECT c.v, r.v, l.rev, l.type, l.key, l.value, l.create_revision, l.version,"
            f" l.lease FROM {s}.meta c JOIN {s}.meta r ON r.k = 'rev'"
            f" LEFT JOIN {s}.log l ON l.rev >= %s AND l.rev <= r.v AND l.key >= %s"
            " AND (%s::bytea IS NULL OR l.key < %s::bytea)"
            " WHERE c.k = 'compact' ORDER BY l.rev, l.id"
        )
        self.xact_status = "SELECT pg_xact_status(%s::xid8)"

    def get_listed(self, keys: list[bytes]) -> str:
        """``get_many`` without parameters (keys inlined as hex ``bytea`` literals), to
        be sent in one message with other statements; "" for no keys."""
        if not keys:
            return ""
        return self._get_listed.format(keys=", ".join(f"'\\x{k.hex()}'::bytea" for k in keys))

    def finish(self, rev: int) -> str:
        """Move the revision to ``rev`` and wake watchers: sent with ``COMMIT``, in the
        same message (one round trip). Only integers and the checked schema name are
        inlined."""
        return self._finish.format(rev=int(rev))


def session_settings(timeout: float) -> str:
    """Server-side limits of every Shoal session. A client that stalls inside a
    transaction (a paused or frozen process) would hold the revision row lock and
    stop every writer of the cluster, lease expiry included: the server ends such
    a session after ``IDLE_IN_TXN_MS`` (nothing of it is committed). A write that
    waits for the lock longer than ``timeout`` gives up on the server too."""
    return (f"SET idle_in_transaction_session_timeout = {IDLE_IN_TXN_MS};"
            f" SET lock_timeout = {max(1, round(timeout * 1000))}")


def span(key: str, prefix: bool) -> tuple[bytes, bytes | None]:
    """(lo, hi) of the byte range a key or prefix covers; hi None = no end."""
    lo = key.encode()
    if not prefix:
        if not lo:
            raise InvalidArgument("key is empty")
        return lo, lo + b"\x00"
    hi = lo.rstrip(b"\xff")
    if not hi:
        return lo, None
    return lo, hi[:-1] + bytes([hi[-1] + 1])
