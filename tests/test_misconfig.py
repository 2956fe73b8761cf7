"""No silent misconfiguration (issue #12 section 5)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from shoal.cli.main import main
from shoal.config import NodeConfig
from shoal.errors import ConfigError
from shoal.runtime.app import App
from shoal.sessions import SessionManager

pytestmark = pytest.mark.timeout(60)

APP_SOURCE = '''
import shoal

app = shoal.App("cti")

@app.duty("rule-engine")
async def rules(ctx): ...

@app.duty("import:{engine}", for_each="engines")
async def importer(ctx): ...

@app.workers("ingest-worker", per_node=2)
async def worker(ctx): ...
'''


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    clean: dict[str, str | None] = {k: None for k in os.environ if k.upper().startswith("SHOAL__")}
    return CliRunner().invoke(main, list(args), env={**clean, **(env or {})})


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "cti_app.py").write_text(APP_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("cti_app", None)
    return "cti_app:app"


def config(tmp_path: Path, duties: str) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(f"store: {{backend: memory}}\nparams: {{engines: [a, b]}}\nduties: {duties}\n")
    return path


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_duty_key_that_matches_nothing_stops_the_start(
    tmp_path: Path, app_module: str, command: str
) -> None:
    path = config(tmp_path, "{rule-engin: false}")
    args = (["run", app_module, "-c", str(path)] if command == "run"
            else ["config", "check", str(path), "--app", app_module])
    res = cli(*args)
    assert res.exit_code == 2, res.output
    assert "duties.rule-engin: matches no duty or worker pool of app 'cti'" in res.stderr
    assert "did you mean 'rule-engine'?" in res.stderr and "Traceback" not in res.output


def test_the_environment_spelling_of_a_dashed_name_is_caught(
    tmp_path: Path, app_module: str
) -> None:
    path = config(tmp_path, "{}")
    res = cli("config", "check", str(path), "--app", app_module,
              env={"SHOAL__DUTIES__RULE_ENGINE__ENABLED": "false"})
    assert res.exit_code == 2
    assert "duties.rule_engine: matches no duty" in res.stderr
    assert "SHOAL__DUTIES='{\"rule-engine\": false}'" in res.stderr
    ok = cli("config", "check", str(path), "--app", app_module,
             env={"SHOAL__DUTIES": '{"rule-engine": false, "import:*": {"enabled": false}}'})
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize("duties", [
    "{rule-engine: false}", "{'import:*': false}", "{import: false}", "{'import:a': false}",
    "{ingest-worker: {per_node: 1}}", "{'rule-*': false}",
])
def test_keys_that_name_a_duty_family_or_pool_pass(
    tmp_path: Path, app_module: str, duties: str
) -> None:
    res = cli("config", "check", str(config(tmp_path, duties)), "--app", app_module)
    assert res.exit_code == 0, res.output


def test_app_check_config_lists_every_unmatched_key() -> None:
    app = App("x")
    app.duty("cleanup")(lambda ctx: None)
    cfg = NodeConfig(duties={"clenup": False, "nothing:*": False})
    with pytest.raises(ConfigError) as err:
        app.check_config(cfg)
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and "did you mean 'cleanup'" in lines[0]
    assert lines[1].startswith("duties.nothing:*: matches no duty")


def test_config_check_and_run_share_one_secret_check(tmp_path: Path) -> None:
    weak = "a" * 64
    with pytest.raises(ConfigError, match="not random enough"):
        SessionManager(weak)
    path = tmp_path / "node.yaml"
    path.write_text(f"store: {{backend: memory}}\nauth: {{secret: {weak}}}\n")
    res = cli("config", "check", str(path))
    assert res.exit_code == 2 and "auth.secret: bad value '***'" in res.stderr
    assert "not random enough" in res.stderr and weak not in res.output
    res = cli("run", "shoal.cli.demo_app:app", "-c", str(path))
    assert res.exit_code == 2 and "not random enough" in res.stderr


def test_a_millisecond_timeout_is_told_the_unit_is_seconds() -> None:
    with pytest.raises(ConfigError) as err:
        NodeConfig(store={"etcd": {"timeout": 10000}})
    assert str(err.value) == (
        "store.etcd.timeout: bad value 10000 — use a value of at most 300 seconds (the unit is "
        "seconds, not milliseconds: for 10000 ms write 10)"
    )


# -- session secrets that differ between nodes --------------------------------------------------
async def test_a_node_with_a_secret_the_others_lack_is_shown_everywhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from shoal.cli.status import render
    from shoal.config._secrets import generate_secret, key_id
    from shoal.http._view import cluster_view
    from shoal.runtime.node import Node
    from shoal.runtime.settings import NodeSettings
    from shoal.store.memory import MemoryStore
    from shoal.testing.clock import FakeClock

    old, new = generate_secret(), generate_secret()
    configs = {
        "a": NodeConfig(node={"name": "a"}, auth={"secret": old}),
        "b": NodeConfig(node={"name": "b"}, auth={"secret": new, "previous_secrets": [old]}),
        "c": NodeConfig(node={"name": "c"}, auth={"secret": new}),
    }
    settings = {n: NodeSettings.from_config(c) for n, c in configs.items()}
    assert settings["b"].key_ids == (key_id(new), key_id(old))
    assert all(old not in repr(s) and new not in repr(s) for s in settings.values())
    clock = FakeClock()
    store = MemoryStore(clock)
    caplog.set_level(logging.WARNING, "shoal.node")
    nodes = [Node(App("t"), s, store=store, clock=clock) for s in settings.values()]
    try:
        for node in nodes:
            await node.start()
        await clock.run_for(1.0, step=0.1)
        view = cluster_view(nodes[0].status())
        assert {n["name"]: n["keys"] for n in view["nodes"]}["b"] == [key_id(new), key_id(old)]
        assert view["warnings"] == [
            f"node a signs sessions with key {key_id(old)}, which c does not accept — give "
            "every node the same auth.secret (list the old one in auth.previous_secrets while "
            "rotating)",
            f"node b signs sessions with key {key_id(new)}, which a does not accept — give "
            "every node the same auth.secret (list the old one in auth.previous_secrets while "
            "rotating)",
            f"node c signs sessions with key {key_id(new)}, which a does not accept — give "
            "every node the same auth.secret (list the old one in auth.previous_secrets while "
            "rotating)",
        ]
        assert f"WARNING: node a signs sessions with key {key_id(old)}" in render(view)
        logged = [r.getMessage() for r in caplog.records if "signs sessions" in r.getMessage()]
        assert any(m.startswith("node a: node c signs") for m in logged)
        assert old not in caplog.text and new not in caplog.text
    finally:
        for node in nodes:
            await node.aclose()


def test_matching_secrets_and_nodes_without_sessions_give_no_warning() -> None:
    from shoal.primitives.membership import Member
    from shoal.runtime._keys import secret_warnings

    members = {"a": Member("a", keys=("k1", "k0")), "b": Member("b", keys=("k1",)),
               "c": Member("c")}  # c: no auth.secret, no sessions
    assert secret_warnings(members) == []
    members["d"] = Member("d", keys=("k0", "k1"))  # rotating: signs with the old one
    assert secret_warnings(members) == [
        "node d signs sessions with key k0, which b does not accept — give every node the "
        "same auth.secret (list the old one in auth.previous_secrets while rotating)"]


def test_duplicate_duty_names_after_expansion_are_named_in_one_line() -> None:
    app = App("t")

    @app.duty("import:{engine}", for_each="engines")
    async def importer(ctx: object) -> None: ...

    with pytest.raises(ConfigError, match=r"duplicate duty names after expansion: \['import:x'\]"):
        app.expand({"engines": ["x", "y", "x"]})
    assert [d.name for d in app.expand({"engines": ["x", "y"]})] == [
        "leader", "import:x", "import:y"]
