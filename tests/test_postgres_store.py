"""PostgreSQL-only behaviour of the postgres store, against a REAL PostgreSQL.

The shared conformance suite (tests/test_store_conformance.py) covers the Store
semantics; here: server restarts, killed backends, lost commit replies, client
clock skew, several clusters in one database, TLS, the sweep lock and the
schema version check.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from shoal.cli.main import main
from shoal.errors import (
    LeaseNotFound,
    OutcomeUnknown,
    StoreAuthError,
    StoreUnavailable,
    UnsupportedBackend,
)
from shoal.store._pg_sql import LOCK_CLASS
from shoal.store.postgres import PostgresStore
from shoal.store.protocol import Compare, Event, EventType, Op
from shoal.testing.clock import FakeClock
from shoal.testing.pg_server import PgServer
from shoal.testing.proxy import FaultProxy


def _schema() -> str:
    return "t_" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PgServer]:
    """A server of this module's own: these tests restart it and kill its backends."""
    with PgServer() as server:
        yield server


@pytest.fixture
async def stores(own_pg: PgServer) -> AsyncIterator[list[PostgresStore]]:
    opened: list[PostgresStore] = []
    yield opened
    for store in opened:
        await store.aclose()


async def _open(opened: list[PostgresStore], dsn: str, schema: str, **kw: Any) -> PostgresStore:
    store = await PostgresStore.open(dsn, schema=schema, **kw)
    opened.append(store)
    return store


async def _collect(it: AsyncIterator[Event], n: int, limit_s: float = 30.0) -> list[Event]:
    out: list[Event] = []

    async def run() -> None:
        async for ev in it:
            out.append(ev)
            if len(out) >= n:
                return

    await asyncio.wait_for(run(), limit_s)
    return out


async def _until(check: Any, limit_s: float = 10.0) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return bool(await check())


async def _log_events(pg: PgServer, schema: str, key: str) -> int:
    rows = await asyncio.to_thread(
        pg.execute, f"SELECT count(*) FROM {schema}.log WHERE key = '{key}'::bytea"
    )
    return int(rows[0][0])


async def _backend_waiting(pg: PgServer, event: str) -> int:
    """The pid of the (one) shoal backend waiting on ``event``."""
    query = (
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'shoal' "
        f"AND wait_event = '{event}'"
    )

    async def found() -> bool:
        return bool(await asyncio.to_thread(pg.execute, query))

    assert await _until(found), f"no shoal backend waits on {event}"
    return int((await asyncio.to_thread(pg.execute, query))[0][0])


# -- restarts and killed connections --------------------------------------------------
async def test_server_restart_mid_watch_loses_and_repeats_nothing(
    own_pg: PgServer, stores: list[PostgresStore]
) -> None:
    schema = _schema()
    writer = await _open(stores, own_pg.dsn(), schema)
    watcher = await _open(stores, own_pg.dsn(), schema)
    start = await writer.revision() + 1
    async with aclosing(watcher.watch("k/", start)) as it:
        task = asyncio.ensure_future(_collect(it, 20))
        for i in range(10):
            await writer.put(f"k/{i % 3}", str(i).encode())
        await asyncio.to_thread(own_pg.restart)
        for i in range(10, 20):  # the first call finds a dead connection and reconnects
            await writer.put(f"k/{i % 3}", str(i).encode())
        events = await task
    assert [e.kv.value for e in events] == [str(i).encode() for i in range(20)]
    assert [e.revision for e in events] == list(range(start, start + 20))


async def test_terminated_backend_before_commit_is_retried_once(
    own_pg: PgServer, stores: list[PostgresStore]
) -> None:
    schema = _schema()
    store = await _open(stores, own_pg.dsn(), schema)
    rev = await store.revision()
    async with await psycopg.AsyncConnection.connect(own_pg.dsn()) as blocker:
        # hold the revision row lock: the store's write waits inside its transaction
        await blocker.execute(f"SELECT v FROM {schema}.meta WHERE k = 'rev' FOR UPDATE")
        put = asyncio.ensure_future(store.put("once", b"1"))
        pid = await _backend_waiting(own_pg, "transactionid")
        await asyncio.to_thread(own_pg.execute, f"SELECT pg_terminate_backend({pid})")
        await blocker.rollback()
    assert await put == rev + 1  # nothing was committed, so it was sent again, once
    kv = await store.get("once")
    assert kv is not None and kv.version == 1 and kv.mod_revision == rev + 1
    assert await _log_events(own_pg, schema, "once") == 1


def _slow_commit(pg: PgServer, schema: str, seconds: float) -> None:
    """Make COMMIT of a transaction that writes key 'slow...' take ``seconds``."""
    pg.execute(
        f"CREATE FUNCTION {schema}.slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.key >= 'slow'::bytea AND NEW.key < 'slox'::bytea THEN "
        f"PERFORM pg_sleep({seconds}); END IF; RETURN NULL; END $$;"
        f"CREATE CONSTRAINT TRIGGER slow AFTER INSERT OR UPDATE ON {schema}.kv "
        f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {schema}.slow()"
    )


async def test_terminated_backend_during_commit_is_read_back_as_not_applied(
    own_pg: PgServer, stores: list[PostgresStore]
) -> None:
    schema = _schema()
    store = await _open(stores, own_pg.dsn(), schema, timeout=10.0)
    await asyncio.to_thread(_slow_commit, own_pg, schema, 30)
    rev = await store.revision()
    put = asyncio.ensure_future(store.put("slow1", b"x"))
    pid = await _backend_waiting(own_pg, "PgSleep")  # inside COMMIT
    await asyncio.to_thread(own_pg.execute, f"SELECT pg_terminate_backend({pid})")
    with pytest.raises(StoreUnavailable, match="rolled the transaction back") as info:
        await put
    assert not isinstance(info.value, OutcomeUnknown)
    assert await store.get("slow1") is None
    assert await store.revision() == rev
    assert await _log_events(own_pg, schema, "slow1") == 0


async def test_lost_commit_reply_is_read_back_as_applied(
    own_pg: PgServer, stores: list[PostgresStore]
) -> None:
    schema = _schema()
    await _open(stores, own_pg.dsn(), schema)  # creates the tables
    await asyncio.to_thread(_slow_commit, own_pg, schema, 2)
    async with FaultProxy((own_pg.host, own_pg.port)) as proxy:
        host, port = proxy.listen_address
        store = await _open(stores, own_pg.dsn(), schema, host=host, port=port, timeout=10.0)
        rev = await store.revision()
        put = asyncio.ensure_future(store.put("slow2", b"x"))
        await _backend_waiting(own_pg, "PgSleep")  # COMMIT sent, the server still works
        proxy.cut()  # the reply is lost; the server commits anyway
        await asyncio.sleep(0.1)
        proxy.heal()
        assert await put == rev + 1  # settled by pg_xact_status: committed
    kv = await _open(stores, own_pg.dsn(), schema)
    got = await kv.get("slow2")
    assert got is not None and got.version == 1
    assert await _log_events(own_pg, schema, "slow2") == 1


async def test_unreachable_server_during_commit_is_outcome_unknown(
    own_pg: PgServer, stores: list[PostgresStore]
) -> None:
    schema = _schema()
    await _open(stores, own_pg.dsn(), schema)
    await asyncio.to_thread(_slow_commit, own_pg, schema, 4)  # longer than the timeout
    async with FaultProxy((own_pg.host, own_pg.port)) as proxy:
        host, port = proxy.listen_address
        store = await _open(stores, own_pg.dsn(), schema, host=host, port=port, timeout=2.5)
        put = asyncio.ensure_future(store.put("slow3", b"x"))
        await _backend_waiting(own_pg, "PgSleep")
        proxy.cut()  # and it stays cut: the outcome cannot be read back
        with pytest.raises(OutcomeUnknown, match="re-read"):
            await put
    direct = await _open(stores, own_pg.dsn(), schema)

    async def settled() -> bool:
        return await direct.get("slow3") is not None

    assert await _until(settled)  # the server did commit it: exactly once
    assert await _log_events(own_pg, schema, "slow3") == 1


# -- leases: the server's clock -------------------------------------------------------
@pytest.mark.parametrize("skew", [30.0, -30.0])
async def test_lease_expiry_ignores_the_client_clock(
    pg_dsn: str, stores: list[PostgresStore], skew: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = _schema()
    clock = FakeClock(start=time.time() + skew)
    skewed = await _open(stores, pg_dsn, schema, clock=clock)
    other = await _open(stores, pg_dsn, schema)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + skew)  # the client's wall clock
    lease = await skewed.grant(5)
    await skewed.put("eph", b"1", lease=lease.id)
    assert 3 <= await other.lease_ttl(lease.id) <= 5  # judged by the server: not 35 or -25
    await clock.advance(3600)  # the fake clock leaps: nothing expires because of it
    assert await skewed.keepalive(lease.id) == 5
    assert await other.get("eph") is not None

    async def gone() -> bool:
        return await other.get("eph") is None

    assert await _until(gone, limit_s=15.0)
    with pytest.raises(LeaseNotFound):
        await skewed.keepalive(lease.id)


async def test_sweep_runs_only_under_the_advisory_lock(
    pg_dsn: str, stores: list[PostgresStore]
) -> None:
    schema = _schema()
    store = await _open(stores, pg_dsn, schema)
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as other:
        await other.execute(
            "SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS + 1, schema)
        )  # another client is sweeping this schema: this one must not
        lease = await store.grant(1)
        await store.put("eph", b"1", lease=lease.id)
        await other.execute("SELECT pg_sleep(2)")  # the lease expired 1 s ago
        assert await store.get("eph") is not None
        assert await store.lease_ttl(lease.id) == 0
        with pytest.raises(LeaseNotFound):  # but it cannot be refreshed any more
            await store.keepalive(lease.id)
        await other.execute(
            "SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_CLASS + 1, schema)
        )

    async def gone() -> bool:
        return await store.get("eph") is None

    assert await _until(gone, limit_s=5.0)


# -- isolation, TLS, schema versions ----------------------------------------------------
async def test_two_clusters_in_one_database_are_isolated(
    pg_dsn: str, stores: list[PostgresStore]
) -> None:
    one, two = _schema(), _schema()
    a = await _open(stores, pg_dsn, one)
    b = await _open(stores, pg_dsn, two)
    start = await a.revision() + 1
    async with aclosing(a.watch("", start)) as it:
        lease = await b.grant(30)
        rb = await b.put("k", b"two", lease=lease.id)
        await b.put("other", b"two")
        ra = await a.put("k", b"one")
        events = await _collect(it, 1)
    assert [(e.type, e.kv.key, e.kv.value) for e in events] == [(EventType.PUT, "k", b"one")]
    assert (await a.get("k"), await b.get("k")) != (None, None)
    assert (await a.get("k")).value == b"one" and (await b.get("k")).value == b"two"  # type: ignore[union-attr]
    assert ra == start and rb == 2  # each cluster counts its own revisions
    assert await a.get("other") is None
    with pytest.raises(LeaseNotFound):
        await a.keepalive(lease.id)
    assert await b.delete("", prefix=True) == 2
    assert (await a.get("k")) is not None


@pytest.fixture(scope="module")
def tls_pg() -> Iterator[PgServer]:
    with PgServer(tls=True) as server:
        yield server


async def test_tls_verify_full(
    tls_pg: PgServer, stores: list[PostgresStore], tmp_path: Path
) -> None:
    import trustme

    ca = str(tls_pg.ca_file)
    store = await _open(
        stores, tls_pg.dsn(), "tls", sslmode="verify-full", sslrootcert=ca,
        sslcert=str(tls_pg.client_cert_file), sslkey=str(tls_pg.client_key_file),
    )  # fmt: skip
    await store.put("k", b"v")
    used = await asyncio.to_thread(
        tls_pg.execute, "SELECT count(*) FROM pg_stat_ssl WHERE ssl AND client_dn IS NOT NULL"
    )
    assert used[0][0] >= 1  # TLS with our client certificate
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    with pytest.raises(StoreUnavailable, match=r"TLS failed.*sslrootcert"):
        await PostgresStore.open(
            tls_pg.dsn(), schema="tls", sslmode="verify-full", sslrootcert=str(stranger)
        )
    with pytest.raises(StoreUnavailable, match="TLS failed"):  # the name is not in the cert
        await PostgresStore.open(
            tls_pg.dsn(host="localhost.localdomain"), schema="tls", sslmode="verify-full",
            sslrootcert=ca, hostaddr="127.0.0.1",
        )  # fmt: skip


async def test_schema_version_is_checked_at_open(
    pg_dsn: str, pg_server: PgServer, stores: list[PostgresStore]
) -> None:
    schema = _schema()
    await _open(stores, pg_dsn, schema)
    await asyncio.to_thread(
        pg_server.execute, f"UPDATE {schema}.meta SET v = 99 WHERE k = 'schema_version'"
    )
    with pytest.raises(UnsupportedBackend, match="schema version 99"):
        await PostgresStore.open(pg_dsn, schema=schema)


async def test_errors_are_shoal_errors(pg_server: PgServer) -> None:
    with pytest.raises(StoreAuthError, match=r"login refused.*SHOAL__STORE__POSTGRES__PASSWORD"):
        await PostgresStore.open(pg_server.dsn(password="wrong"), schema="x")
    with contextlib.suppress(Exception):
        await asyncio.to_thread(pg_server.execute, "DROP ROLE IF EXISTS nocreate")
    await asyncio.to_thread(pg_server.execute, "CREATE ROLE nocreate LOGIN PASSWORD 'pw'")
    with pytest.raises(StoreAuthError, match=r"permission denied.*grant the user CREATE"):
        await PostgresStore.open(pg_server.dsn(user="nocreate", password="pw"), schema="x")


# -- the CLI: one clear line and the documented exit code ---------------------------------
def _check_connect(tmp_path: Path, pg: PgServer, password: str, **section: Any) -> Result:
    fields = {"host": pg.host, "port": pg.port, "user": "postgres", "dbname": "postgres",
              "schema": "cli", "timeout": 2, **section}  # fmt: skip
    body = ", ".join(f"{k}: {v}" for k, v in fields.items())
    path = tmp_path / "node.yaml"
    path.write_text(f"store: {{backend: postgres, postgres: {{{body}}}}}\n")
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("SHOAL__")}
    env["SHOAL__STORE__POSTGRES__PASSWORD"] = password
    return CliRunner().invoke(main, ["config", "check", "--connect", str(path)], env=env)


def test_cli_connect_ok_and_password_masked(tmp_path: Path, pg_server: PgServer) -> None:
    result = _check_connect(tmp_path, pg_server, pg_server.password)
    assert result.exit_code == 0, result.output
    where = f"postgres at {pg_server.host}:{pg_server.port}/postgres (schema cli)"
    assert f"ok: store {where} is reachable (revision " in result.stderr
    assert pg_server.password not in result.output
    assert "password: '***'" in result.stdout


def test_cli_wrong_password_exits_2(tmp_path: Path, pg_server: PgServer) -> None:
    result = _check_connect(tmp_path, pg_server, "not-the-password")
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert result.stderr.startswith("error: postgres at ")
    assert 'password authentication failed for user "postgres"' in result.stderr
    assert "SHOAL__STORE__POSTGRES__PASSWORD" in result.stderr
    assert "not-the-password" not in result.output


def test_cli_unreachable_host_exits_3(tmp_path: Path, pg_server: PgServer) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _check_connect(tmp_path, pg_server, "x", port=port)
    assert result.exit_code == 3, result.output
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert result.stderr.startswith(
        f"error: store postgres at 127.0.0.1:{port}/postgres (schema cli) is unreachable: "
    )
    assert "Connection refused" in result.stderr


def test_cli_database_without_create_permission_exits_2(
    tmp_path: Path, pg_server: PgServer
) -> None:
    pg_server.execute("DROP ROLE IF EXISTS cli_nocreate")
    pg_server.execute("CREATE ROLE cli_nocreate LOGIN PASSWORD 'pw-cli'")
    result = _check_connect(tmp_path, pg_server, "pw-cli", user="cli_nocreate", schema="fresh")
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert "permission denied for database postgres" in result.stderr
    assert "grant the user CREATE on the database" in result.stderr


def test_cli_missing_database_exits_2(tmp_path: Path, pg_server: PgServer) -> None:
    result = _check_connect(tmp_path, pg_server, pg_server.password, dbname="nosuchdb")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: store.postgres.dbname: ")
    assert 'database "nosuchdb" does not exist' in result.stderr


async def test_cancelling_a_call_to_a_silent_server_returns_at_once(
    own_pg: PgServer, stores: list[PostgresStore]
) -> None:
    """psycopg would send a cancel request and wait for the query (up to 10 s): a
    duty cancelled because its lease is running out must stop at once (G1)."""
    schema = _schema()
    async with FaultProxy((own_pg.host, own_pg.port)) as proxy:
        host, port = proxy.listen_address
        store = await _open(stores, own_pg.dsn(), schema, host=host, port=port, timeout=30.0)
        await store.put("k", b"v")
        proxy.blackhole()  # a partition: no byte moves, nothing fails
        for call in (store.get("k"), store.put("k", b"w")):
            task = asyncio.ensure_future(call)
            await asyncio.sleep(0.2)
            assert not task.done()
            task.cancel()
            await asyncio.wait({task}, timeout=2.0)  # psycopg's own way: 5 s, then 5 s more
            assert task.cancelled()
        proxy.heal()
        kv = await store.get("k")  # a new connection: the store still works
    assert kv is not None and kv.value == b"v"  # the cancelled put never committed


async def test_caller_errors_pass_through_and_leave_the_store_usable(
    pg_dsn: str, stores: list[PostgresStore]
) -> None:
    store = await _open(stores, pg_dsn, _schema(), pool_size=2)
    rev = await store.put("k", b"v")
    with pytest.raises(ValueError, match="future revision"):
        await store.compact(rev + 10)
    with pytest.raises(TypeError):
        await store.txn([Compare.value("k", Op.EQUAL, 1)])  # type: ignore[arg-type]
    with pytest.raises(LeaseNotFound):
        await store.put("k2", b"v", lease=12345)
    for _ in range(3):  # every pooled connection is still usable, no transaction left open
        assert (await store.get("k")) is not None
        assert await store.put("k", b"w") > rev
    assert await store.get("k2") is None


async def test_a_client_stalled_inside_a_transaction_cannot_block_the_cluster(
    pg_dsn: str, stores: list[PostgresStore]
) -> None:
    """A paused node holding the revision row lock would stop every writer (lease
    expiry too): the server ends its session after 1 s idle in a transaction."""
    schema = _schema()
    stalled = await _open(stores, pg_dsn, schema)
    other = await _open(stores, pg_dsn, schema, timeout=10.0)
    conn = await stalled._conns.connect()  # a session exactly as the store opens them
    await conn.execute(f"BEGIN; SELECT v FROM {schema}.meta WHERE k = 'rev' FOR UPDATE")
    # ... and the client stops here (SIGSTOP, a long GC pause)
    rev = await other.put("k", b"v")  # waits for the lock until the server ends that session
    assert rev == 2
    with pytest.raises(psycopg.Error, match="idle-in-transaction timeout"):
        await conn.execute("SELECT 1")  # terminated: nothing it did can commit
    await conn.close()


def test_postgres_without_the_extra_is_an_unsupported_backend(tmp_path: Path) -> None:
    # A fresh process where psycopg cannot be imported (as without shoal[postgres]).
    script = "import sys; sys.modules['psycopg'] = None\nfrom shoal.cli.main import main; main()\n"
    path = tmp_path / "node.yaml"
    path.write_text("store: {backend: postgres, postgres: {host: 127.0.0.1}}\n")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SHOAL__")}
    proc = subprocess.run(
        [sys.executable, "-c", script, "config", "check", "--connect", str(path)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        "error: the postgres backend needs the postgres extra: pip install 'shoal[postgres]'\n"
    )
