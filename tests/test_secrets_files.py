"""No secrets in open endpoints, no world-readable files, no silent cross-cluster
restores (issue #12 section 4)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from click.testing import CliRunner, Result

from shoal.cli.main import main
from shoal.http.api import create_app
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.runtime.node import Node
from shoal.runtime.settings import NodeSettings
from shoal.store.memory import MemoryStore
from shoal.store.sqlite import SqliteStore
from shoal.testing.clock import FakeClock

TOKEN = "secrets-token-0123456789-abcdefghijklm"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LEAK = "postgres://app:hunter2@db.internal:5432/app?password=hunter2"
pytestmark = pytest.mark.timeout(60)


def cli(*args: str) -> Result:
    clean: dict[str, str | None] = {k: None for k in os.environ if k.upper().startswith("SHOAL__")}
    return CliRunner().invoke(main, list(args), env=clean)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- open endpoints -----------------------------------------------------------------------------
async def _first_sse_chunk(app: Any, headers: list[tuple[bytes, bytes]]) -> bytes:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": "/events", "raw_path": b"/events", "root_path": "",
             "query_string": b"", "headers": [(b"host", b"t"), *headers], "client": ("c", 1),
             "server": ("t", 80)}
    got = asyncio.Event()
    body: list[bytes] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await got.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            body.append(message["body"])
            got.set()

    await asyncio.wait_for(app(scope, receive, send), 10)
    return b"".join(body)


async def test_open_endpoints_show_the_error_class_and_a_redacted_message() -> None:
    clock = FakeClock()
    app = App("t")

    @app.duty("importer")
    async def importer(ctx: DutyContext) -> None:
        raise RuntimeError(f"cannot connect to {LEAK}")

    node = Node(app, NodeSettings(name="a", ttl=6), store=MemoryStore(clock), clock=clock)
    await node.start()
    try:
        for _ in range(50):
            if node.runners.get("importer") and node.runners["importer"].crashes:
                break
            await clock.run_for(0.1, step=0.1)
        api = create_app(node, token=TOKEN)
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=api),
                                      base_url="http://t") as http:
            open_view = (await http.get("/cluster")).json()
            full_view = (await http.get("/cluster", headers=AUTH)).json()
        shown = {d["name"]: d["last_error"] for d in open_view["local_duties"]}
        assert shown["importer"].startswith("RuntimeError: cannot connect to postgres://***@")
        assert "hunter2" not in json.dumps(open_view)
        full = {d["name"]: d["last_error"] for d in full_view["local_duties"]}
        assert "hunter2" in full["importer"]
        feed = await _first_sse_chunk(create_app(node, refresh=30.0), [])
        assert b"RuntimeError" in feed and b"hunter2" not in feed
    finally:
        await node.aclose()


# -- file modes ---------------------------------------------------------------------------------
async def test_the_sqlite_store_and_its_wal_and_shm_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = await SqliteStore.open(tmp_path / "s.db")
    finally:
        os.umask(old)
    try:
        await store.put("state/cfg/x", b"1")
        for name in ("s.db", "s.db-wal", "s.db-shm"):
            assert mode(tmp_path / name) == 0o600, name
    finally:
        await store.aclose()


def test_backups_and_demo_configs_are_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("store: {backend: sqlite, sqlite: {path: s.db}}\n")
    asyncio.run(_seed(tmp_path / "s.db"))
    out = tmp_path / "backups" / "new" / "b.json"
    res = cli("state", "get", "--config", str(config), "--output", str(out))
    assert res.exit_code == 0, res.output
    assert mode(out) == 0o600 and mode(out.parent) == 0o700 and mode(out.parent.parent) == 0o700
    assert json.loads(out.read_text())["documents"][0]["key"] == "x"

    from shoal.cli import demo as demo_module

    monkeypatch.setattr(demo_module.Demo, "run", lambda self: 0)
    workdir = tmp_path / "demo"
    res = cli("demo", "--workdir", str(workdir), "--nodes", "2")
    assert res.exit_code == 0, res.output
    assert mode(workdir) == 0o700
    configs = sorted(workdir.glob("*.yaml"))
    assert configs and all(mode(p) == 0o600 for p in configs)
    assert "token" in configs[0].read_text()


async def _seed(db: Path, docs: dict[str, bytes] | None = None) -> None:
    store = await SqliteStore.open(db)
    try:
        for key, value in (docs or {"state/cfg/x": b"1"}).items():
            await store.put(key, value)
    finally:
        await store.aclose()


# -- backups of another cluster -----------------------------------------------------------------
def test_a_backup_of_another_cluster_is_refused_unless_forced(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("cluster: billing\nstore: {backend: sqlite, sqlite: {path: a.db}}\n")
    b.write_text("cluster: billing\nstore: {backend: sqlite, sqlite: {path: b.db}}\n")
    asyncio.run(_seed(tmp_path / "a.db", {"state/cfg/x": b"1"}))
    backup = tmp_path / "a.json"
    backup.write_text(cli("state", "get", "-c", str(a)).stdout)
    assert cli("state", "set", str(backup), "-c", str(b)).exit_code == 0  # empty: nothing lost
    asyncio.run(_seed(tmp_path / "b.db", {"state/cfg/y": b"2"}))
    res = cli("state", "set", str(backup), "-c", str(b))
    assert res.exit_code == 2, res.output
    assert f"from cluster 'billing' (sqlite path {tmp_path / 'a.db'})" in res.stderr
    assert f"not from cluster 'billing' (sqlite path {tmp_path / 'b.db'})" in res.stderr
    assert "(0 changed, 1 removed)" in res.stderr
    assert "--force" in res.stderr and res.stderr.count("\n") == 1
    forced = cli("state", "set", str(backup), "-c", str(b), "--force")
    assert forced.exit_code == 0, forced.output
    asyncio.run(_seed(tmp_path / "b.db", {"state/cfg/z": b"3"}))
    other = tmp_path / "other.yaml"  # the same file under another cluster name
    other.write_text("cluster: search\nstore: {backend: sqlite, sqlite: {path: b.db}}\n")
    res = cli("state", "set", str(backup), "-c", str(other))
    assert res.exit_code == 2 and "cluster 'search'" in res.stderr
    assert cli("state", "set", str(backup), "-c", str(a)).exit_code == 0  # its own cluster


# -- read-only stores ---------------------------------------------------------------------------
@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Path]:
    db = tmp_path / "ro.db"
    asyncio.run(_seed(db))
    subprocess.run(["chattr", "+i", str(db)], check=True)
    try:
        yield db
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)


def test_state_get_opens_a_read_only_sqlite_file_read_only(
    tmp_path: Path, immutable: Path
) -> None:
    config = tmp_path / "ro.yaml"
    config.write_text(f"store: {{backend: sqlite, sqlite: {{path: {immutable}}}}}\n")
    res = cli("state", "get", "--config", str(config))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["documents"] == [{"namespace": "cfg", "key": "x", "value": 1}]
