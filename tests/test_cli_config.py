"""`shoal config check` and the CLI's error handling (one-line errors, exit codes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner, Result
from pydantic import BaseModel

from shoal.cli.main import ShoalGroup, exit_code_for, handle_errors, main
from shoal.config import NodeConfig
from shoal.config._errors import is_model, unwrap
from shoal.errors import (
    ConfigError,
    NotRunning,
    StoreAuthError,
    StoreUnavailable,
    UnsupportedBackend,
)

SECRET = "bRSTrWRpMZvcihnTlnK2WkU2qEamLKSkd4_RvhO9uKKZ2LyCPb3mDkQTkqFFL8MKK6nG3bboxY3DCs5l4MEULQ"
PREVIOUS = "jWQriUWU5e27mA2WALxX1hOSNLuJnwt-tSxVOEjK2_5GirZnnKK7VqQIitDnhiByl8qupPhjvEF4sOdL6tO30w"
ENDPOINT_FIX = "use http://HOST:PORT or https://HOST:PORT"


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    # CliRunner's env only adds variables: clear any SHOAL__* the outer shell has.
    clean: dict[str, str | None] = {k: None for k in os.environ if k.upper().startswith("SHOAL__")}
    clean.update(env or {})
    return CliRunner().invoke(main, list(args), env=clean)


def write(tmp_path: Path, text: str, name: str = "node.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def good_file(tmp_path: Path, backend: str = "memory") -> Path:
    return write(
        tmp_path,
        f"""\
cluster: test
node: {{name: n1, roles: [frontend]}}
store:
  backend: {backend}
  sqlite: {{path: store.db}}
  etcd: {{username: root, password: etcd-pass-123}}
http: {{token: http-token-123-0123456789-abcdefghij}}
auth: {{secret: {SECRET}, previous_secrets: [{PREVIOUS}]}}
""",
    )


def assert_one_error(result: Result, expected: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert expected in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_check_prints_the_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    result = run("config", "check", str(good_file(tmp_path)))
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.stdout)
    assert data["cluster"] == "test" and data["node"]["roles"] == ["frontend"]
    assert data["timings"]["ttl"] == 5 and data["timings"]["keepalive_interval"] == 1.667
    assert data["auth"] == {"secret": "***", "previous_secrets": ["***"]}
    assert data["http"]["token"] == "***" and data["store"]["etcd"]["password"] == "***"
    for secret in (SECRET, PREVIOUS, "etcd-pass-123", "http-token-123-0123456789-abcdefghij"):
        assert secret not in result.output
    assert result.stderr == ""


def test_check_json(tmp_path: Path) -> None:
    result = run("config", "check", "--json", str(good_file(tmp_path)))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["auth"]["secret"] == "***" and data["store"]["backend"] == "memory"


def test_check_applies_the_environment(tmp_path: Path) -> None:
    env = {
        "SHOAL__STORE__BACKEND": "etcd",
        "SHOAL__STORE__ETCD__ENDPOINTS": '["http://10.1.1.1:2379"]',
        "SHOAL__NODE__NAME": "n9",
    }
    result = run("config", "check", "--json", str(good_file(tmp_path)), env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["store"]["etcd"]["endpoints"] == ["http://10.1.1.1:2379"]
    assert (data["store"]["backend"], data["node"]["name"]) == ("etcd", "n9")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("store: {backend: mysql}\n", "store.backend: bad value 'mysql' — use one of 'memory',"),
        (
            "store: {etcd: {endpoints: [foo]}}\n",
            f"store.etcd.endpoints[0]: 'foo' is not an etcd endpoint; {ENDPOINT_FIX}",
        ),
        (
            "store: {etcd: {tls: {ca: missing-ca.pem}}}\n",
            "store.etcd.tls.ca: bad value '{dir}/missing-ca.pem' — the file does not exist",
        ),
        ("timings: {ttl: 0}\n", "timings.ttl: bad value 0 — use a whole number of seconds"),
        ("timings: {ttl: 1.5}\n", "timings.ttl: bad value 1.5 — etcd leases are whole seconds"),
        ("node: {nmae: n1}\n", "node.nmae: unknown key 'nmae' — did you mean 'name'?"),
        ("node:\n  name: [x\n", "node.yaml:3: invalid YAML: expected ',' or ']'"),
        ("- a\n", "node.yaml:1: the top level must be a mapping"),
        ("auth: {secret: short-one}\n", "auth.secret: bad value '***' (the secret is 9 char"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, text: str, expected: str) -> None:
    result = run("config", "check", str(write(tmp_path, text)))
    assert_one_error(result, expected.replace("{dir}", str(tmp_path)))
    assert "short-one" not in result.output


def test_bad_environment_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {"SHOAL__NODE__NAEM": "x"}
    result = run("config", "check", str(good_file(tmp_path)), env=env)
    assert_one_error(result, "SHOAL__NODE__NAEM: unknown key node.naem — did you mean ")
    env = {"SHOAL__STORE__ETCD__ENDPOINTS": '["127.0.0.1"]'}
    result = run("config", "check", str(good_file(tmp_path)), env=env)
    assert_one_error(result, "(set by SHOAL__STORE__ETCD__ENDPOINTS)")


def test_missing_file_and_several_problems(tmp_path: Path) -> None:
    assert_one_error(run("config", "check", str(tmp_path / "nope.yaml")), "config file not found")
    result = run("config", "check", str(write(tmp_path, "node: {weight: 0}\ntimings: {ttl: -1}\n")))
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert lines[0].startswith("error: node.weight: ") and lines[1].startswith("error: timings.ttl")


def test_usage_errors_exit_2() -> None:
    result = run("config", "check")
    assert result.exit_code == 2 and "Missing argument 'FILE'" in result.stderr


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.startswith("shoal, version ")


def test_connect_sqlite(tmp_path: Path) -> None:
    result = run("config", "check", "--connect", str(good_file(tmp_path, "sqlite")))
    assert result.exit_code == 0, result.output
    assert f"ok: store sqlite at {tmp_path / 'store.db'} is reachable (revision" in result.stderr
    assert (tmp_path / "store.db").exists()


def test_connect_memory(tmp_path: Path) -> None:
    result = run("config", "check", "--connect", str(good_file(tmp_path, "memory")))
    assert result.exit_code == 0, result.output
    assert "ok: store memory is reachable (revision " in result.stderr


def test_connect_store_unavailable_exits_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def unreachable(config: object, *, clock: object = None) -> object:
        raise StoreUnavailable("connection refused")

    monkeypatch.setattr("shoal.store.factory.open_store", unreachable)
    result = run("config", "check", "--connect", str(good_file(tmp_path)))
    assert result.exit_code == 3
    assert result.stderr.splitlines()[-1] == (
        "error: store memory is unreachable: connection refused"
    )
    assert "Traceback" not in result.output


@pytest.mark.etcd
def test_connect_etcd(tmp_path: Path, etcd_endpoints: list[str]) -> None:
    path = write(tmp_path, f"store: {{backend: etcd, etcd: {{endpoints: {etcd_endpoints}}}}}\n")
    result = run("config", "check", "--connect", str(path))
    assert result.exit_code == 0, result.output
    assert f"ok: store etcd at {etcd_endpoints[0]}" in result.stderr
    assert "is reachable (revision " in result.stderr


def test_connect_etcd_unreachable_exits_3(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    text = f"store: {{backend: etcd, etcd: {{endpoints: [http://127.0.0.1:{port}], timeout: 1}}}}\n"
    result = run("config", "check", "--connect", str(write(tmp_path, text)))
    assert result.exit_code == 3, result.output
    assert result.stderr.splitlines()[-1].startswith(
        f"error: store etcd at http://127.0.0.1:{port} (prefix /shoal) "
    )
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("bad key"), 2),
        (UnsupportedBackend("no such backend"), 2),
        (StoreAuthError("bad password"), 2),
        (StoreUnavailable("etcd is down"), 3),
        (NotRunning("closed"), 1),
    ],
)
def test_every_shoal_error_becomes_an_exit_code(error: Exception, code: int) -> None:
    group = ShoalGroup("shoal")
    sub = group.group("sub")(lambda: None)  # nested groups handle errors too

    @sub.command("boom")
    def boom() -> None:
        raise error

    @click.command()
    @handle_errors
    def standalone() -> None:
        raise error

    for command, args in ((group, ["sub", "boom"]), (standalone, [])):
        result = CliRunner().invoke(command, args)
        assert exit_code_for(error) == code
        assert result.exit_code == code
        assert result.stderr == f"error: {error}\n"
        assert "Traceback" not in result.output


def test_real_process_gives_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SHOAL__")}
    cmd = [sys.executable, "-c", "from shoal.cli.main import main; main()", "config", "check"]
    bad = write(tmp_path, "store:\n  etcd:\n    endpoints: [127.0.0.1]\n")
    proc = subprocess.run(
        [*cmd, str(bad)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        f"error: store.etcd.endpoints[0]: '127.0.0.1' is not an etcd endpoint; "
        f"{ENDPOINT_FIX} ({bad}:3)\n"
    )
    proc = subprocess.run(
        [*cmd, str(good_file(tmp_path))],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["auth"]["secret"] == "***"


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["node.yaml", "etcd-node.yaml"])
def test_examples_are_valid(name: str) -> None:
    result = run("config", "check", str(ROOT / "examples" / name))
    assert result.exit_code == 0, result.output


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out: list[str] = []
    for name, field in model.model_fields.items():
        tp = unwrap(field.annotation)
        if is_model(tp):
            out += _keys(tp, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def test_every_key_and_variable_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    keys = _keys(NodeConfig)
    assert "store.etcd.tls.skip_verify" in keys and "timings.grace" in keys
    for key in keys:
        if key in ("duties", "params"):
            key += ".<"
        variable = "SHOAL__" + key.replace(".<", "__<").replace(".", "__").upper()
        assert f"`{key}" in doc, key
        assert f"`{variable}" in doc, variable


def test_etcd_without_the_extra_is_an_unsupported_backend(tmp_path: Path) -> None:
    # A fresh process where etcd3aio cannot be imported (as without shoal[etcd]).
    script = "import sys; sys.modules['etcd3aio'] = None\nfrom shoal.cli.main import main; main()\n"
    path = write(tmp_path, "store: {backend: etcd}\n")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SHOAL__")}
    proc = subprocess.run(
        [sys.executable, "-c", script, "config", "check", "--connect", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        "error: the etcd backend needs the etcd extra: pip install 'shoal[etcd]'\n"
    )
