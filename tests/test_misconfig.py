"""No silent misconfiguration (issue #12 section 5)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from shoal._errors import ConfigError
from shoal.cli.main import main
from shoal.config import NodeConfig
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
    res = cli("run", "shoal.demo_app:app", "-c", str(path))
    assert res.exit_code == 2 and "not random enough" in res.stderr


def test_a_millisecond_timeout_is_told_the_unit_is_seconds() -> None:
    with pytest.raises(ConfigError) as err:
        NodeConfig(store={"etcd": {"timeout": 10000}})
    assert str(err.value) == (
        "store.etcd.timeout: bad value 10000 — use a value of at most 300 seconds (the unit is "
        "seconds, not milliseconds: for 10000 ms write 10)"
    )
