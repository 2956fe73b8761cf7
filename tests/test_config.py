"""shoal.config: models, timing formulas, loading (file, env, overrides), messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import shoal.errors as _errors
from shoal.config import (
    DutyOverride,
    NodeConfig,
    default_node_name,
    load_config,
    parse_config,
)

ConfigError = _errors.ConfigError
SECRET = "gR4j9Qjxan4arkfszebe06BfpzVGsFvr7hzvAhKHHM_AbBU_iIaiOMu58I7EaP4jk6ma2SpzEPOhFVNIUb3pTA"
ENV_SECRET = "mSA9djG0otvAFnpX6A2BUvu87nFRAHZ480u8mF7cDo7qSvyLG8oOVqcs6FZRcYZtBewrUxJ0TdowVZZbKa"
PREVIOUS = "X2dnP-uy1u8YfYqdJWS9hUILhQcdSzXyLm1nMB0vGaZQ4roQxpIzNDVPmE1IaOOEa2oRhVbj62xeZFQ93Mfc_g"
ENDPOINT_FIX = "use http://HOST:PORT or https://HOST:PORT"


def problems(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


def write(tmp_path: Path, text: str, name: str = "node.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def assert_clean(message: str) -> None:
    """No pydantic boilerplate in a message meant for a person."""
    for noise in ("pydantic", "errors.pydantic.dev", "Input should", "validation error", "[type="):
        assert noise not in message


# -- defaults and timings ----------------------------------------------------


def test_defaults_are_valid() -> None:
    config = NodeConfig()
    assert config.cluster == "shoal"
    assert config.store.backend == "sqlite"
    assert config.store.etcd.endpoints == ["http://127.0.0.1:2379"]
    assert config.node.name == default_node_name()
    assert config.node.weight == 1.0 and config.node.can_lead
    assert config.http.port == 0 and config.auth.secret is None
    assert config.reaper.enabled


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("local", (2, 0.667, 0.2, 2.0, 10.0, 1.0, 0.667)),
        ("lan", (5, 1.667, 0.5, 5.0, 15.0, 2.5, 1.667)),
        ("wan", (15, 5.0, 1.5, 15.0, 45.0, 7.5, 5.0)),
    ],
)
def test_presets(preset: str, expected: tuple[float, ...]) -> None:
    t = NodeConfig(timings={"preset": preset}).effective_timings()
    got = (
        t.ttl,
        t.keepalive_interval,
        t.safety_margin,
        t.rebalance_delay,
        t.drain_timeout,
        t.grace,
        t.retry_backoff_max,
    )
    assert got == expected
    assert t.preset == preset


def test_explicit_ttl_drives_the_derived_timings_and_explicit_values_win() -> None:
    t = NodeConfig(timings={"preset": "wan", "ttl": 10, "grace": 0}).effective_timings()
    assert (t.ttl, t.keepalive_interval, t.safety_margin, t.drain_timeout) == (10, 3.333, 1.0, 30.0)
    assert t.grace == 0.0
    t = NodeConfig(timings={"ttl": "4", "keepalive_interval": 1}).effective_timings()
    assert (t.ttl, t.keepalive_interval) == (4, 1.0)
    assert NodeConfig(timings={"ttl": 7.0}).effective_timings().ttl == 7


@given(st.integers(min_value=1, max_value=3600), st.sampled_from(["local", "lan", "wan"]))
def test_derived_timings_always_satisfy_the_rules(ttl: int, preset: str) -> None:
    t = NodeConfig(timings={"preset": preset, "ttl": ttl}).effective_timings()
    assert 0 < t.safety_margin < ttl / 2
    assert 0 < t.keepalive_interval < ttl - t.safety_margin
    assert t.grace >= 0 and t.rebalance_delay >= 0
    assert t.drain_timeout > 0 and t.retry_backoff_max > 0


@pytest.mark.parametrize(
    ("ttl", "fix"),
    [
        (0, "use a whole number of seconds from 1 to 3600"),
        (-5, "use a whole number of seconds from 1 to 3600"),
        (2.5, "etcd leases are whole seconds; use 2 or 3"),
        (0.5, "use a whole number of seconds from 1 to 3600"),
        (86400, "use at most 3600"),
        ("abc", "use a whole number of seconds"),
        (True, "use a whole number of seconds"),
        ([5], "use a whole number of seconds"),
    ],
)
def test_invalid_ttl(ttl: Any, fix: str) -> None:
    message = problems({"timings": {"ttl": ttl}})
    assert message.startswith("timings.ttl: bad value ")
    shown = "true" if ttl is True else repr(ttl) if isinstance(ttl, str) else str(ttl)
    assert shown in message
    assert fix in message
    assert_clean(message)


def test_keepalive_must_fit_before_the_local_deadline() -> None:
    message = problems({"timings": {"ttl": 5, "keepalive_interval": 4.6}})
    assert message.startswith("timings.keepalive_interval: bad value 4.6 — ")
    assert "ttl - safety_margin (5 - 0.5 = 4.5 s)" in message and "raise timings.ttl" in message
    message = problems({"timings": {"ttl": 5, "safety_margin": 3}})
    assert message.startswith("timings.safety_margin: bad value 3 — ")
    assert "less than half the TTL" in message
    message = problems({"timings": {"keepalive_interval": 0}})
    assert "timings.keepalive_interval: bad value 0 — use a value greater than 0" in message


# -- validation messages ------------------------------------------------------


def test_unknown_backend_lists_the_allowed_names() -> None:
    message = problems({"store": {"backend": "mysql"}})
    assert message == (
        "store.backend: bad value 'mysql' — use one of 'memory', 'sqlite', 'etcd' or 'postgres'"
    )


@pytest.mark.parametrize(
    "endpoint",
    [
        "foo",
        "127.0.0.1",
        "127.0.0.1:2379",
        "ftp://x:1",
        "http://host",
        "http://host:0",
        "http://host:70000",
        "http://host:port",
        "http://host:2379/v3",
        "https://:2379",
    ],
)
def test_malformed_endpoint(endpoint: str) -> None:
    message = problems({"store": {"etcd": {"endpoints": ["http://ok:2379", endpoint]}}})
    expected = f"store.etcd.endpoints[1]: {endpoint!r} is not an etcd endpoint; {ENDPOINT_FIX}"
    assert message.startswith(expected)
    assert "\n" not in message


def test_good_endpoints() -> None:
    config = NodeConfig(
        store={"etcd": {"endpoints": "https://a:2379, https://b.example:2380/ ,https://[::1]:1"}}
    )
    assert config.store.etcd.endpoints == [
        "https://a:2379",
        "https://b.example:2380",
        "https://[::1]:1",
    ]
    assert "list at least one endpoint" in problems({"store": {"etcd": {"endpoints": []}}})


def test_tls_files_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "ca.pem"
    message = problems({"store": {"etcd": {"tls": {"ca": str(missing)}}}})
    assert message.startswith(f"store.etcd.tls.ca: bad value '{missing}' — the file does not exist")
    assert "fix the path or remove the key" in message
    message = problems({"store": {"etcd": {"tls": {"key": str(tmp_path)}}}})
    assert message.startswith("store.etcd.tls.key: ") and "is not a file" in message

    ca, cert, key = (write(tmp_path, "x", n) for n in ("ca.pem", "c.pem", "k.pem"))
    etcd = {"endpoints": ["https://e:2379"], "tls": {"ca": ca, "cert": cert, "key": key}}
    tls = NodeConfig(store={"etcd": etcd}).store.etcd.tls
    assert (tls.ca, tls.cert, tls.key, tls.skip_verify) == (ca, cert, key, False)
    message = problems({"store": {"etcd": {"tls": {"cert": str(cert)}}}})
    assert message.startswith("store.etcd.tls: ") and "needs both cert and key" in message
    message = problems({"store": {"etcd": {"tls": {"ca": str(ca)}}}})
    assert message.startswith("store.etcd: bad value: tls is set but the endpoints use http://")
    assert "use https:// endpoints" in message
    message = problems({"store": {"etcd": {"endpoints": ["http://a:1", "https://b:2"]}}})
    assert "endpoints mix http:// and https://" in message


def test_etcd_prefix_and_credentials() -> None:
    assert NodeConfig(store={"etcd": {"prefix": "/apps/x/"}}).store.etcd.prefix == "/apps/x"
    for bad in ("shoal", "/", "/a b"):
        message = problems({"store": {"etcd": {"prefix": bad}}})
        assert message.startswith(f"store.etcd.prefix: bad value {bad!r} — ")
    message = problems({"store": {"etcd": {"username": "root"}}})
    assert message.startswith("store.etcd: ") and "set both username and password" in message


def test_unknown_keys_suggest_the_right_one() -> None:
    message = problems({"node": {"nmae": "n1"}, "stroe": {}})
    lines = message.splitlines()
    assert lines[0].startswith("node.nmae: unknown key 'nmae' — did you mean 'name'?")
    assert "keys allowed in node: name, roles, weight" in lines[0]
    assert lines[1].startswith("stroe: unknown key 'stroe' — did you mean 'store'?")
    message = problems({"store": {"etcd": {"tls": {"zzz": 1}}}})
    assert "store.etcd.tls.zzz: unknown key 'zzz' — remove it or fix its spelling" in message


def test_every_problem_is_reported_at_once() -> None:
    message = problems(
        {
            "node": {"name": "bad name!", "weight": 0, "can_lead": "maybe"},
            "store": {"backend": "redis"},
            "timings": {"ttl": 0},
            "http": {"port": 70000},
        }
    )
    lines = message.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "node.name",
        "node.weight",
        "node.can_lead",
        "store.backend",
        "timings.ttl",
        "http.port",
    ]
    assert "node.can_lead: bad value 'maybe' — use true or false" in lines
    assert "http.port: bad value 70000 — use a value of at most 65535" in lines
    assert_clean(message)


def test_direct_construction_raises_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^node\.weight: bad value -1 — "):
        NodeConfig(node={"weight": -1})
    with pytest.raises(ConfigError, match=r"^cluster: bad value '' — "):
        NodeConfig(cluster="")


def test_config_is_frozen() -> None:
    config = NodeConfig()
    with pytest.raises(ValueError):
        config.cluster = "other"


def test_roles_and_duties() -> None:
    config = NodeConfig(
        node={"roles": "frontend, ingestion,frontend"},
        duties={"import:*": {"per_node": 2}, "import:b": False, "cleanup": {"enabled": False}},
        params={"engines": ["a", "b"]},
    )
    assert config.node.roles == ["frontend", "ingestion"]
    assert config.duty_override("import:a") == DutyOverride(enabled=True, per_node=2)
    assert config.duty_override("import:b") == DutyOverride(enabled=False)
    assert not config.duty_override("cleanup").enabled
    assert config.duty_override("leader") == DutyOverride()
    assert config.params["engines"] == ["a", "b"]
    assert "duties: bad key 'a*b'" in problems({"duties": {"a*b": True}})
    assert "duties.x.per_node: bad value 0 — use a value of at least 1" in problems(
        {"duties": {"x": {"per_node": 0}}}
    )
    assert "node.roles: bad role 'a b'" in problems({"node": {"roles": ["a b"]}})




def test_zones_and_preferred_nodes_follow_the_naming_rules() -> None:
    assert NodeConfig(node={"zone": "eu-west-1a"}).node.zone == "eu-west-1a"
    assert NodeConfig(node={"zone": ""}).node.zone == ""
    for zone in ("a b", "z" * 64, "-x"):
        message = problems({"node": {"zone": zone}})
        assert message.startswith(f"node.zone: bad zone {zone!r} — use 1 to 63 letters"), message
    prefer = NodeConfig(duties={"x": {"prefer": "n1, n2,n1"}}).duty_override("x").prefer
    assert prefer == ["n1", "n2"]
    assert NodeConfig(duties={"x": {"prefer": "true"}}).duty_override("x").prefer is True
    assert NodeConfig(duties={"x": {"prefer": False}}).duty_override("x").prefer is False
    message = problems({"duties": {"x": {"prefer": [""]}}})
    assert message.startswith("duties.x.prefer: bad node name '' — use 1 to 63 letters"), message
    for bad in (5, ["n1", {"a": 1}], {"n1": True}):
        message = problems({"duties": {"x": {"prefer": bad}}})
        assert message == (f"duties.x.prefer: bad value {bad!r} — use true (this node) or a list "
                           "of node names, e.g. [node-a, node-b]"), message  # one line
        assert_clean(message)
# -- secrets ------------------------------------------------------------------


def test_secrets_are_masked_and_never_echoed() -> None:
    short = "hunter2-short"
    message = problems({"auth": {"secret": short}, "http": {"token": 12345}})
    assert short not in message and "12345" not in message
    assert "auth.secret: bad value '***' (the secret is 13 characters)" in message
    assert "at least 64" in message and "shoal secret generate" in message
    config = NodeConfig(
        auth={"secret": SECRET, "previous_secrets": [PREVIOUS]},
        http={"token": "tok-" + "0123456789" * 3},
        store={"etcd": {"username": "u", "password": "pw"}},
    )
    data = config.masked()
    assert data["auth"] == {"secret": "***", "previous_secrets": ["***"]}
    assert data["http"]["token"] == "***" and data["store"]["etcd"]["password"] == "***"
    text = config.to_yaml()
    assert SECRET not in text and "pw" not in text.replace("password", "")
    assert config.to_data(reveal_secrets=True)["auth"]["secret"] == SECRET
    assert config.auth.secret is not None and config.auth.secret.get_secret_value() == SECRET


def test_to_yaml_round_trips(tmp_path: Path) -> None:
    config = NodeConfig(
        node={"name": "n1", "roles": ["a"]},
        auth={"secret": SECRET},
        timings={"preset": "local"},
        duties={"x": {"enabled": False}},
        params={"k": [1, 2]},
        store={"sqlite": {"path": str(tmp_path / "s.db")}},
    )
    assert yaml.safe_load(config.to_yaml())["timings"]["ttl"] == 2
    path = write(tmp_path, config.to_yaml(reveal_secrets=True))
    again = load_config(path, env={})
    assert again.to_data(reveal_secrets=True) == config.to_data(reveal_secrets=True)


# -- loading: file, environment, overrides -------------------------------------

GOOD_FILE = """\
cluster: prod
node:
  name: n1
  roles: [frontend]
store:
  backend: etcd
  etcd:
    endpoints:
      - http://10.0.0.1:2379
params:
  engines: [camunda-a, camunda-b]
"""


def test_load_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD_FILE), env={})
    assert config.cluster == "prod" and config.node.name == "n1"
    assert config.store.etcd.endpoints == ["http://10.0.0.1:2379"]
    assert config.params == {"engines": ["camunda-a", "camunda-b"]}
    assert load_config(write(tmp_path, "", "empty.yaml"), env={}).cluster == "shoal"
    assert load_config(None, env={"SHOAL__NODE__NAME": "solo"}).node.name == "solo"


def test_env_overrides_file(tmp_path: Path) -> None:
    env = {
        "SHOAL__STORE__ETCD__ENDPOINTS": '["http://127.0.0.1:2379", "http://b:2380"]',
        "SHOAL__NODE__NAME": "n2",
        "shoal__node__can_lead": "false",
        "SHOAL__NODE__WEIGHT": "2.5",
        "SHOAL__NODE__ZONE": "123",
        "SHOAL__AUTH__SECRET": ENV_SECRET,
        "SHOAL__TIMINGS__TTL": "3",
        "SHOAL__DUTIES__CLEANUP__ENABLED": "false",
        "SHOAL__PARAMS__ENGINES": '["x"]',
        "SHOAL__PARAMS__LABEL": "not json",
        "SHOAL_SINGLE_UNDERSCORE": "ignored",
        "PATH": "/usr/bin",
    }
    config = load_config(write(tmp_path, GOOD_FILE), env=env)
    assert config.store.etcd.endpoints == ["http://127.0.0.1:2379", "http://b:2380"]
    assert (config.node.name, config.node.can_lead, config.node.weight) == ("n2", False, 2.5)
    assert config.node.zone == "123"  # text settings are taken verbatim
    assert config.auth.secret is not None and config.auth.secret.get_secret_value() == ENV_SECRET
    assert config.effective_timings().ttl == 3
    assert not config.duty_override("cleanup").enabled
    assert config.params == {"engines": ["x"], "label": "not json"}
    assert config.node.roles == ["frontend"]  # untouched file keys stay


def test_env_comma_lists() -> None:
    env = {"SHOAL__STORE__ETCD__ENDPOINTS": "http://a:1,http://b:2", "SHOAL__NODE__ROLES": "x,y"}
    config = load_config(env=env)
    assert config.store.etcd.endpoints == ["http://a:1", "http://b:2"]
    assert config.node.roles == ["x", "y"]


def test_env_unknown_key_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"SHOAL__STORE__ETCD__ENDPIONTS": "x", "SHOAL__NODE__NAME__X": "1"})
    lines = str(info.value).splitlines()
    assert lines == [
        "SHOAL__NODE__NAME__X: node.name is a single value, not a section — set "
        "SHOAL__NODE__NAME instead, or unset SHOAL__NODE__NAME__X",
        "SHOAL__STORE__ETCD__ENDPIONTS: unknown key store.etcd.endpionts — did you mean "
        "SHOAL__STORE__ETCD__ENDPOINTS? (or unset SHOAL__STORE__ETCD__ENDPIONTS)",
    ]
    with pytest.raises(
        ConfigError, match=r"^SHOAL__QQQ: unknown key qqq — keys allowed in the top"
    ):
        load_config(env={"SHOAL__QQQ": "1"})
    with pytest.raises(ConfigError, match=r"^SHOAL__NODE____NAME: empty key"):
        load_config(env={"SHOAL__NODE____NAME": "1"})


def test_errors_point_at_the_file_line_or_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_FILE.replace("http://10.0.0.1:2379", "foo"))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"SHOAL__NODE__WEIGHT": "-1"})
    lines = str(info.value).splitlines()
    assert lines[0] == (
        "node.weight: bad value -1 — use a value greater than 0 (set by SHOAL__NODE__WEIGHT)"
    )
    assert lines[1] == (
        f"store.etcd.endpoints[0]: 'foo' is not an etcd endpoint; {ENDPOINT_FIX} ({path}:9)"
    )
    # a value replaced by the environment is blamed on the variable, not the file
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"SHOAL__STORE__ETCD__ENDPOINTS": '["bar"]'})
    assert str(info.value).endswith("(set by SHOAL__STORE__ETCD__ENDPOINTS)")


def test_overrides_beat_env_and_file(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, GOOD_FILE),
        env={"SHOAL__NODE__NAME": "from-env", "SHOAL__NODE__ZONE": "z1"},
        overrides={"node.name": "from-override", "store": {"etcd": {"prefix": "/o"}}},
    )
    assert (config.node.name, config.node.zone) == ("from-override", "z1")
    assert config.store.etcd.prefix == "/o"
    assert config.store.etcd.endpoints == ["http://10.0.0.1:2379"]
    with pytest.raises(ConfigError, match=r"\(set by an override\)$"):
        load_config(env={}, overrides={"node.weight": 0})


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    write(tmp_path, "x", "certs/ca.pem")
    path = write(
        tmp_path,
        "store:\n  sqlite: {path: data/s.db}\n"
        "  etcd: {endpoints: https://e:1, tls: {ca: certs/ca.pem}}\n",
    )
    config = load_config(path, env={})
    assert config.store.sqlite.path == str(tmp_path / "data" / "s.db")
    assert config.store.etcd.tls.ca == tmp_path / "certs" / "ca.pem"
    # from the environment: relative to the working directory
    config = load_config(path, env={"SHOAL__STORE__SQLITE__PATH": "x.db"})
    assert config.store.sqlite.path == "x.db"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node:\n  name: [x\n", "node.yaml:3: invalid YAML: expected ',' or ']'"),
        ("a: b: c\n", "node.yaml:1: invalid YAML: mapping values are not allowed here"),
        ("node: {}\nnode: {}\n", "node.yaml:2: duplicate key node — keep only one of them"),
        ("- a\n- b\n", "node.yaml:1: the top level must be a mapping of sections"),
        ("just text\n", "node.yaml:1: the top level must be a mapping of sections"),
    ],
)
def test_bad_yaml(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    message = str(info.value)
    assert message.startswith(str(tmp_path / expected))
    assert "\n" not in message


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found — check the path$"):
        load_config(tmp_path / "nope.yaml", env={})
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, env={})
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"node:\n  name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(binary, env={})


@pytest.mark.parametrize("name", ["n1\n", "", "-n1", "a" * 64, "n 1", "nö"])
def test_bad_node_names(name: str) -> None:
    message = problems({"node": {"name": name}})
    assert message == (
        f"node.name: bad value {name!r} — use 1 to 63 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit"
    )
    assert NodeConfig(node={"name": "a" * 63}).node.name == "a" * 63
