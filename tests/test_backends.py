"""Backend descriptors: one place per backend, read by config, factory, CLI and reaper."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import shoal.store.registry as registry
from shoal.config import parse_config
from shoal.errors import ConfigError, UnsupportedBackend
from shoal.runtime.settings import NodeSettings
from shoal.store import Features
from shoal.store.factory import open_store, opened_store
from shoal.store.registry import BUILTIN, Backend, backend_names, get_backend

SRC = Path(__file__).resolve().parents[1] / "src" / "shoal"


def test_every_builtin_descriptor_loads_and_names_itself() -> None:
    for name in BUILTIN:
        backend = get_backend(name)
        assert backend.name == name
        assert backend.features.name == name
    assert backend_names()[:3] == ["memory", "sqlite", "etcd"]


def test_config_sections_come_from_descriptors(tmp_path: Path) -> None:
    config = parse_config({"store": {"backend": "etcd", "etcd": {"prefix": "/x"}}})
    assert config.store.descriptor is get_backend("etcd")
    assert config.store.selected.prefix == "/x"
    with pytest.raises(ConfigError, match=r"store\.etcd\.timeout"):
        parse_config({"store": {"etcd": {"timeout": 0}}})


def test_reaper_settings_come_from_the_descriptor(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    sqlite = NodeSettings.from_config(parse_config({"store": {"sqlite": {"path": db}}}))
    assert sqlite.reaper is True
    assert sqlite.reaper_store == {
        "backend": "sqlite", "reaper": "shoal.store._sqlite_reaper", "path": db}
    memory = NodeSettings.from_config(parse_config({"store": {"backend": "memory"}}))
    assert memory.reaper is False  # declared: the memory backend has no reaper module
    assert get_backend("memory").reaper is None
    off = NodeSettings.from_config(
        parse_config({"store": {"sqlite": {"path": db}}, "reaper": {"enabled": False}})
    )
    assert off.reaper is False


async def test_features_are_checked_when_a_store_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    section = parse_config({"store": {"backend": "memory"}}).store
    store = await open_store(section)
    assert store.features == get_backend("memory").features
    await store.aclose()
    with pytest.raises(UnsupportedBackend, match="memory is private to one process — use --url"):
        await open_store(section, require={"multi_process": "use --url"})

    liar = Backend(
        name="memory", summary="claims more than it has",
        features=Features("memory", multi_process=True, multi_machine=True, linearizable=True),
        open=get_backend("memory").open,
    )
    monkeypatch.setitem(registry._loaded, "memory", liar)
    with pytest.raises(UnsupportedBackend, match="fix the backend's descriptor"):
        await open_store(section)


async def test_a_missing_extra_is_named_at_open(monkeypatch: pytest.MonkeyPatch) -> None:
    etcd = get_backend("etcd")

    async def no_driver(section: Any, clock: Any) -> Any:
        raise ModuleNotFoundError("No module named 'etcd3aio'", name="etcd3aio")

    monkeypatch.setitem(registry._loaded, "etcd", Backend(**{**etcd.__dict__, "open": no_driver}))
    with pytest.raises(UnsupportedBackend, match=r"pip install 'shoal\[etcd\]'"):
        await open_store(parse_config({"store": {"backend": "etcd"}}))


async def test_tools_refuse_a_store_that_holds_no_cluster(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.db"
    config = parse_config({"store": {"sqlite": {"path": str(missing)}}})
    with pytest.raises(ConfigError, match="does not exist"):
        async with opened_store(config, must_exist=True):
            pass
    assert not missing.exists()  # refusing must not create the file


def test_no_backend_name_is_compared_outside_store() -> None:
    """Backend knowledge lives in descriptors: no `backend ==` anywhere else."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.parent.name == "store" or "testing" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                names = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
                consts = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant)}
                if "backend" in names and consts & {"memory", "sqlite", "etcd", "postgres"}:
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []


PLUGIN = '''
from shoal.store.memory import MemoryStore
from shoal.store.protocol import Features
from shoal.store.registry import Backend, Section


class ToySection(Section):
    greeting: str = "hello"


class ToyStore(MemoryStore):
    features = Features("toy", multi_process=False, multi_machine=False, linearizable=True)


async def _open(section, clock):
    return ToyStore(clock=clock)


BACKEND = Backend(
    name="toy", summary="a toy", features=ToyStore.features, open=_open, section=ToySection,
    describe=lambda s: f"toy ({s.greeting})",
)
'''


def test_a_third_party_backend_registers_through_the_entry_point_group(tmp_path: Path) -> None:
    """A plugin installed elsewhere: one module plus one entry point, and every
    surface (config, factory, CLI) knows it."""
    (tmp_path / "toy_backend.py").write_text(PLUGIN)
    dist = tmp_path / "toy_backend-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[shoal.backends]\ntoy = toy_backend:BACKEND\n")
    config = tmp_path / "node.yaml"
    config.write_text("store:\n  backend: toy\n  toy:\n    greeting: bonjour\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(SRC.parent)])}
    code = textwrap.dedent("""
        import sys
        from shoal.cli.main import main
        sys.exit(main(["config", "check", "--connect", sys.argv[1]]))
    """)
    done = subprocess.run(
        [sys.executable, "-c", code, str(config)], env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "greeting: bonjour" in done.stdout
    assert "ok: store toy (bonjour) is reachable" in done.stderr
    config.write_text("store:\n  backend: toy\n  toy:\n    greting: typo\n")
    done = subprocess.run(
        [sys.executable, "-c", code, str(config)], env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "store.toy.greting" in done.stderr
    assert "Traceback" not in done.stderr

