"""`shoal state get` / `shoal state set`: backup, restore, dry run, bad files, and the
sqlite -> etcd and sqlite -> postgres -> etcd migrations."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from shoal.cli.main import main
from shoal.errors import StateError
from shoal.runtime.app import App
from shoal.runtime.node import Node
from shoal.runtime.settings import NodeSettings
from shoal.store.sqlite import SqliteStore
from shoal.testing.pg_server import PgServer

pytestmark = pytest.mark.timeout(60)

DOCS: dict[tuple[str, str], Any] = {
    ("config", "feature-x"): {"on": True, "pct": 12.5, "zones": ["eu", "us"]},
    ("config", "limits"): {"b": 2, "a": 1, "nested": {"z": None, "y": "ü"}},
    ("users", "alice@example.org"): {"roles": ["admin"]},
    ("users", "bob:1/home"): 42,
}


def cli(*args: str, stdin: str | None = None) -> Result:
    clean: dict[str, str | None] = {k: None for k in os.environ if k.upper().startswith("SHOAL__")}
    return CliRunner().invoke(main, list(args), env=clean, input=stdin)


def sqlite_config(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"store: {{backend: sqlite, sqlite: {{path: {name}.db}}}}\n")
    return path


def etcd_config(tmp_path: Path, endpoints: list[str], prefix: str, timeout: float = 5) -> Path:
    path = tmp_path / "etcd.yaml"
    path.write_text(json.dumps({"store": {"backend": "etcd", "etcd": {
        "endpoints": endpoints, "prefix": prefix, "timeout": timeout}}}))
    return path


async def _raw(db: Path) -> tuple[dict[str, bytes], int]:
    store = await SqliteStore.open(db)
    try:
        res = await store.range("")
        return {kv.key: kv.value for kv in res.kvs}, res.revision
    finally:
        await store.aclose()


def raw(db: Path) -> tuple[dict[str, bytes], int]:
    return asyncio.run(_raw(db))


async def _populate(db: Path, docs: dict[tuple[str, str], Any], *, nodes: int = 2) -> None:
    """Write ``docs`` through the nodes of a small sqlite cluster (round-robin)."""
    stores = [await SqliteStore.open(db) for _ in range(nodes)]
    cluster = [
        Node(App("t"), NodeSettings(name=f"n{i}", ttl=5, drain_timeout=1.0), store=s)
        for i, s in enumerate(stores)
    ]
    try:
        for node in cluster:
            await node.start()
        for i, ((ns, key), value) in enumerate(sorted(docs.items())):
            rev = await cluster[i % nodes].state.put(ns, key, value)
            await cluster[i % nodes].state.wait_for(rev)
    finally:
        for node in cluster:
            await node.aclose()
        for store in stores:
            await store.aclose()


def populate(db: Path, docs: dict[tuple[str, str], Any]) -> None:
    asyncio.run(_populate(db, docs))


async def _write_raw(db: Path, items: dict[str, bytes]) -> None:
    store = await SqliteStore.open(db)
    try:
        for k, v in items.items():
            await store.put(k, v)
    finally:
        await store.aclose()


def get_ok(*args: str) -> str:
    res = cli("state", "get", *args)
    assert res.exit_code == 0, res.output
    return res.stdout


def documents(text: str) -> dict[tuple[str, str], Any]:
    return {(d["namespace"], d["key"]): d["value"] for d in json.loads(text)["documents"]}


# -- get ------------------------------------------------------------------------------------------
def test_get_prints_a_stable_self_describing_snapshot(tmp_path: Path) -> None:
    cfg = sqlite_config(tmp_path, "a")
    populate(tmp_path / "a.db", DOCS)
    out = get_ok("-c", str(cfg))
    snap = json.loads(out)
    assert list(snap) == ["format", "version", "source", "revision", "created_at", "namespaces",
                          "checksum", "documents"]
    assert snap["format"] == "shoal-state" and snap["version"] == 1
    assert snap["source"] == {"backend": "sqlite", "path": str((tmp_path / "a.db").resolve()),
                              "cluster": "shoal"}
    assert snap["revision"] == raw(tmp_path / "a.db")[1]
    assert snap["created_at"].endswith("Z") and snap["namespaces"] == ["config", "users"]
    assert [(d["namespace"], d["key"]) for d in snap["documents"]] == sorted(DOCS)
    assert documents(out) == DOCS
    assert '"limits",\n      "value": {\n        "a": 1,\n        "b": 2,' in out  # sorted keys
    assert out.endswith("}\n") and "ü" in out
    only = get_ok("-c", str(cfg), "--documents-only")
    assert only == get_ok("-c", str(cfg), "--documents-only")  # same state, same bytes
    assert "created_at" not in only and "source" not in only
    users = json.loads(get_ok("-c", str(cfg), "-n", "users", "-n", "nothing-here"))
    assert users["namespaces"] == ["nothing-here", "users"]
    assert {d["namespace"] for d in users["documents"]} == {"users"}


def test_get_skips_keys_that_are_not_documents(tmp_path: Path) -> None:
    cfg = sqlite_config(tmp_path, "a")
    populate(tmp_path / "a.db", {("config", "ok"): 1})
    asyncio.run(_write_raw(tmp_path / "a.db", {"state/junk": b"1", "state/config/raw": b"{nope",
                                               "nodes/x": b"not state"}))
    res = cli("state", "get", "-c", str(cfg))
    assert res.exit_code == 0
    assert documents(res.stdout) == {("config", "ok"): 1}
    assert "warning: skipped state/junk: not of the form state/NAMESPACE/KEY" in res.stderr
    assert "warning: skipped state/config/raw:" in res.stderr


def test_get_of_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    res = cli("state", "get", "-c", str(sqlite_config(tmp_path, "none")))
    assert res.exit_code == 2 and "does not exist" in res.stderr
    assert not (tmp_path / "none.db").exists()


def test_unreachable_store_exits_3(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = etcd_config(tmp_path, [f"http://127.0.0.1:{port}"], "/x", timeout=0.5)
    res = cli("state", "get", "-c", str(cfg))
    assert res.exit_code == 3, res.output
    assert res.stderr.startswith("error: ") and res.stdout == ""


# -- set ------------------------------------------------------------------------------------------
def test_round_trip_into_another_store_is_byte_identical(tmp_path: Path) -> None:
    a, b = sqlite_config(tmp_path, "a"), sqlite_config(tmp_path, "b")
    populate(tmp_path / "a.db", DOCS)
    backup = tmp_path / "backup.json"
    backup.write_text(get_ok("-c", str(a)))
    res = cli("state", "set", str(backup), "-c", str(b))
    assert res.exit_code == 0, res.output
    assert "4 added, 0 changed, 0 removed, 0 unchanged" in res.stdout
    assert "in one transaction (atomic)" in res.stdout
    assert get_ok("-c", str(b), "--documents-only") == get_ok("-c", str(a), "--documents-only")
    full_a, full_b = json.loads(get_ok("-c", str(a))), json.loads(get_ok("-c", str(b)))
    for header in ("source", "revision", "created_at"):
        full_a.pop(header), full_b.pop(header)
    assert full_a == full_b
    again = cli("state", "set", str(backup), "-c", str(b))  # idempotent: writes nothing
    assert again.exit_code == 0 and "nothing to do" in again.stdout
    assert "0 added, 0 changed, 0 removed, 4 unchanged" in again.stdout


def test_set_replaces_the_listed_namespaces_unless_merge(tmp_path: Path) -> None:
    cfg = sqlite_config(tmp_path, "a")
    populate(tmp_path / "a.db", DOCS | {("other", "keep"): "me"})
    backup = {
        "format": "shoal-state", "version": 1, "namespaces": ["config", "empty"],
        "documents": [
            {"namespace": "config", "key": "feature-x", "value": {"on": False}},
            {"namespace": "config", "key": "new", "value": [1]},
        ],
    }
    file = tmp_path / "edited.json"  # hand-written: no checksum, no header
    file.write_text(json.dumps(backup))
    merged = cli("state", "set", str(file), "-c", str(cfg), "--merge")
    assert merged.exit_code == 0, merged.output
    assert "(merge; namespaces: config, empty): 1 added, 1 changed, 0 removed" in merged.stdout
    after = documents(get_ok("-c", str(cfg)))
    assert after[("config", "limits")] == DOCS[("config", "limits")]  # merge keeps the rest
    replaced = cli("state", "set", str(file), "-c", str(cfg))
    assert replaced.exit_code == 0, replaced.output
    assert "0 added, 0 changed, 1 removed, 2 unchanged" in replaced.stdout
    after = documents(get_ok("-c", str(cfg)))
    assert {k for k in after if k[0] == "config"} == {("config", "feature-x"), ("config", "new")}
    assert after[("other", "keep")] == "me" and ("users", "bob:1/home") in after  # untouched


def test_dry_run_prints_the_diff_and_writes_nothing(tmp_path: Path) -> None:
    cfg = sqlite_config(tmp_path, "a")
    populate(tmp_path / "a.db", DOCS)
    snap = json.loads(get_ok("-c", str(cfg)))
    snap["documents"] = [d for d in snap["documents"] if d["key"] != "limits"]
    snap["documents"][0]["value"] = {"on": False}
    snap["documents"].append({"namespace": "users", "key": "carol", "value": 1})
    del snap["checksum"]
    file = tmp_path / "b.json"
    file.write_text(json.dumps(snap))
    before = raw(tmp_path / "a.db")
    res = cli("state", "set", str(file), "-c", str(cfg), "--dry-run")
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == [
        "dry run (replace; namespaces: config, users): 1 added, 1 changed, 1 removed, "
        "2 unchanged; nothing written",
        "  added    users/carol",
        "  changed  config/feature-x",
        "  removed  config/limits",
    ]
    assert raw(tmp_path / "a.db") == before


def test_a_large_restore_is_chunked_with_progress(tmp_path: Path) -> None:
    a, b = sqlite_config(tmp_path, "a"), sqlite_config(tmp_path, "b")
    docs = {("bulk", f"k{i:03}"): {"i": i} for i in range(25)}
    asyncio.run(_write_raw(tmp_path / "a.db", {
        f"state/{ns}/{k}": json.dumps(v).encode() for (ns, k), v in docs.items()}))
    backup = tmp_path / "backup.json"
    backup.write_text(get_ok("-c", str(a)))
    populate(tmp_path / "b.db", {("bulk", "old"): 0, ("bulk", "k000"): "x"})
    res = cli("state", "set", str(backup), "-c", str(b), "--max-txn-ops", "10", "--force")
    assert res.exit_code == 0, res.output
    assert "restoring (chunked, not atomic)" in res.stderr
    assert "24 added, 1 changed, 1 removed" in res.stdout
    assert "in 3 transactions (NOT atomic)" in res.stdout
    assert documents(get_ok("-c", str(b))) == docs


def test_set_reads_stdin(tmp_path: Path) -> None:
    a, b = sqlite_config(tmp_path, "a"), sqlite_config(tmp_path, "b")
    populate(tmp_path / "a.db", DOCS)
    res = cli("state", "set", "-", "-c", str(b), stdin=get_ok("-c", str(a)))
    assert res.exit_code == 0, res.output
    assert documents(get_ok("-c", str(b))) == DOCS


def _good() -> dict[str, Any]:
    return {"format": "shoal-state", "version": 1, "namespaces": ["config"], "documents": [
        {"namespace": "config", "key": "a", "value": {"x": 1}}]}


def _with(**changes: Any) -> str:
    snap = _good() | changes
    return json.dumps(snap)


def _doc(**changes: Any) -> str:
    snap = _good()
    snap["documents"][0] |= changes
    return json.dumps(snap)


BAD_FILES: list[tuple[str, str, str]] = [
    ("empty", "", "the file is empty"),
    ("malformed", '{"format": "shoal-state", "version": 1,, }', "not valid JSON: Expecting"),
    ("truncated", _with()[:-20], "the JSON ends early at line 1 (truncated file?)"),
    ("not an object", "[1, 2]", "the top level is not a JSON object"),
    ("wrong format", _with(format="etcd-dump"), "format is 'etcd-dump', not 'shoal-state'"),
    ("newer version", _with(version=2), "written by a newer shoal (format version 2)"),
    ("bad version", _with(version="1"), "bad format version '1'"),
    ("unknown field", _with(extra=1), "unknown field 'extra'"),
    ("no documents", json.dumps({"format": "shoal-state", "version": 1}),
     "'documents' is missing or not a list"),
    ("bad namespace", _doc(namespace="bad ns"), "documents[0]: bad namespace 'bad ns'"),
    ("bad key", _doc(key="-a"), "documents[0]: bad key '-a': a key must match"),
    ("unlisted namespace", _doc(namespace="other"), "namespace 'other' is not listed"),
    ("nan value", _doc(value=float("nan")), "NaN is not valid JSON"),
    ("missing value", json.dumps(_good() | {"documents": [{"namespace": "config", "key": "a"}]}),
     "must be an object with exactly namespace, key and value"),
    ("duplicate document", json.dumps(_good() | {"documents": _good()["documents"] * 2}),
     "document config/a appears twice"),
    ("duplicate field", '{"format": "shoal-state", "format": "x"}', "field 'format' appears twice"),
    ("too large", _doc(value="x" * 200), "document config/a is 202 bytes encoded as JSON; "
     "the limit is 100 bytes"),
]


@pytest.mark.parametrize(("text", "message"), [b[1:] for b in BAD_FILES],
                         ids=[b[0] for b in BAD_FILES])
def test_bad_backup_files_are_refused_with_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    cfg = sqlite_config(tmp_path, "a")
    populate(tmp_path / "a.db", DOCS)
    before = raw(tmp_path / "a.db")
    file = tmp_path / "bad.json"
    file.write_text(text)
    for extra in ((), ("--dry-run",)):
        res = cli("state", "set", str(file), "-c", str(cfg), "--max-doc-bytes", "100", *extra)
        assert res.exit_code == 2, res.output
        assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"error: {file}: ")
        assert message in res.stderr, res.stderr
        assert res.stdout == ""
    assert raw(tmp_path / "a.db") == before


def test_a_tampered_backup_fails_its_checksum(tmp_path: Path) -> None:
    cfg = sqlite_config(tmp_path, "a")
    populate(tmp_path / "a.db", DOCS)
    text = get_ok("-c", str(cfg))
    file = tmp_path / "t.json"
    file.write_text(text.replace('"admin"', '"root"'))
    before = raw(tmp_path / "a.db")
    res = cli("state", "set", str(file), "-c", str(cfg))
    assert res.exit_code == 2 and "checksum mismatch" in res.stderr
    assert raw(tmp_path / "a.db") == before
    missing = cli("state", "set", str(tmp_path / "nope.json"), "-c", str(cfg))
    assert missing.exit_code == 2 and "cannot read the file" in missing.stderr


def test_restore_refuses_a_state_that_keeps_changing(tmp_path: Path) -> None:
    """Every write of a restore requires its key unchanged since it was read."""
    from shoal.runtime._state_snapshot import parse, restore

    async def scenario() -> None:
        store = await SqliteStore.open(tmp_path / "r.db")
        snap = parse(_with().encode(), "f", max_doc_bytes=1 << 20)
        real_txn = store.txn

        async def racing_txn(compares: Any, *args: Any, **kwargs: Any) -> Any:
            await store.put("state/config/a", b'"someone else"')  # a writer gets in between
            return await real_txn(compares, *args, **kwargs)

        store.txn = racing_txn  # type: ignore[method-assign]
        try:
            with pytest.raises(StateError, match="kept changing during the restore"):
                await restore(store, snap, merge=False, max_ops=10, max_bytes=1 << 20)
        finally:
            await store.aclose()

    asyncio.run(scenario())


# -- migration: sqlite cluster -> etcd ----------------------------------------------------------
@pytest.mark.etcd
def test_migrate_a_sqlite_cluster_to_an_empty_etcd_prefix(
    tmp_path: Path, etcd_endpoints: list[str]
) -> None:
    lite = sqlite_config(tmp_path, "a")
    populate(tmp_path / "a.db", DOCS)
    backup = tmp_path / "backup.json"
    backup.write_text(get_ok("-c", str(lite)))
    etcd = etcd_config(tmp_path, etcd_endpoints, f"/migrate-{uuid.uuid4().hex[:8]}")
    dry = cli("state", "set", str(backup), "-c", str(etcd), "--dry-run")
    assert dry.exit_code == 0 and "4 added, 0 changed, 0 removed" in dry.stdout
    res = cli("state", "set", str(backup), "-c", str(etcd))
    assert res.exit_code == 0, res.output
    assert "in one transaction (atomic)" in res.stdout
    assert get_ok("-c", str(etcd), "--documents-only") == get_ok("-c", str(lite),
                                                                "--documents-only")
    from_etcd = json.loads(get_ok("-c", str(etcd)))
    assert from_etcd["source"]["backend"] == "etcd"
    assert documents(json.dumps(from_etcd)) == DOCS


# -- migration: sqlite -> postgres -> etcd -> sqlite ---------------------------------------------
def postgres_config(tmp_path: Path, pg: PgServer, schema: str) -> Path:
    path = tmp_path / "postgres.yaml"
    path.write_text(json.dumps({"store": {"backend": "postgres", "postgres": {
        "host": pg.host, "port": pg.port, "user": pg.user, "dbname": "postgres",
        "password": pg.password, "schema": schema}}}))
    return path


@pytest.mark.etcd
def test_migrate_sqlite_to_postgres_to_etcd_and_back_byte_identical(
    tmp_path: Path, etcd_endpoints: list[str], pg_server: PgServer
) -> None:
    lite = sqlite_config(tmp_path, "a")
    populate(tmp_path / "a.db", DOCS)
    original = get_ok("-c", str(lite), "--documents-only")
    pg = postgres_config(tmp_path, pg_server, f"migrate_{uuid.uuid4().hex[:8]}")
    etcd = etcd_config(tmp_path, etcd_endpoints, f"/migrate-{uuid.uuid4().hex[:8]}")
    back = sqlite_config(tmp_path, "back")
    source = lite
    for target in (pg, etcd, back):
        backup = tmp_path / f"from-{source.stem}.json"
        backup.write_text(get_ok("-c", str(source)))
        res = cli("state", "set", str(backup), "-c", str(target))
        assert res.exit_code == 0, res.output
        assert get_ok("-c", str(target), "--documents-only") == original
        source = target
    from_pg = json.loads(get_ok("-c", str(pg)))
    assert from_pg["source"]["backend"] == "postgres"
    assert pg_server.password not in json.dumps(from_pg)
    assert documents(json.dumps(from_pg)) == DOCS
