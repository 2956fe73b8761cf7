"""Store backends, each described in ONE place: its :class:`Backend` descriptor.

A descriptor says everything the rest of Shoal needs to know about a backend:
its config section (``store.<name>``), how to open it, how long opening may
take, how to name it in messages and backup headers, whether and how the
reaper revokes a lease on it, and the :class:`~shoal.store.Features` it really
has (checked when a store is opened). The factory, the configuration, the CLI
and the reaper read descriptors; nothing outside ``shoal.store`` compares
backend names.

Built-in backends are listed in :data:`BUILTIN` (name -> ``module:attribute``,
imported only when used, so a backend's driver is needed only by the nodes
that use it). Third-party backends register through the entry-point group
``shoal.backends``::

    # pyproject.toml of the plugin
    [project.entry-points."shoal.backends"]
    mystore = "mystore.shoal_backend:BACKEND"

and prove themselves by subclassing the public conformance suite
(:mod:`shoal.testing.conformance`). See docs/concepts.md, "Writing a backend".
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict

from shoal.errors import ConfigError, UnsupportedBackend
from shoal.store.protocol import Features, Store

if TYPE_CHECKING:
    from shoal.clock import Clock

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "Backend",
    "Section",
    "TlsFile",
    "backend_names",
    "get_backend",
    "load_backends",
    "require_features",
]

log = logging.getLogger("shoal.store")

ENTRY_POINT_GROUP = "shoal.backends"

# name -> "module:attribute" of its descriptor; imported lazily.
BUILTIN: dict[str, str] = {
    "memory": "shoal.store.memory:BACKEND",
    "sqlite": "shoal.store.sqlite:BACKEND",
    "etcd": "shoal.store.etcd:BACKEND",
    "postgres": "shoal.store.postgres:BACKEND",
}


def existing_file(path: Path | None) -> Path | None:
    """A section's path to a file that must exist (TLS files): checked at load."""
    if path is None:
        return None
    path = path.expanduser()
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ValueError(f"bad value '{path}' — the file {what}; fix the path or remove the key")
    return path


TlsFile = Annotated[Path | None, AfterValidator(existing_file)]


class Section(BaseModel):
    """Base of every configuration section: immutable, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _nothing(section: Any) -> None:
    return None


@dataclass(frozen=True)
class Backend:
    """Everything Shoal knows about one store backend.

    ``section`` is the pydantic model of ``store.<name>`` (None: no settings);
    the callables below receive an instance of it (or None).

    * ``open(section, clock)`` -> a connected :class:`~shoal.store.Store`
      (``clock`` drives leases of in-process backends; others keep their own time);
    * ``open_timeout(section)`` -> seconds a tool waits for ``open`` plus one read;
    * ``describe(section)`` -> where the store is, for humans (never a secret);
    * ``identity(section)`` -> plain data naming the cluster's store, written
      into backup headers so a backup is not restored into another cluster
      by mistake (never a secret);
    * ``reaper_info(section)`` -> plain data handed (over a pipe) to the reaper
      process; None in ``reaper`` means this backend has no reaper;
    * ``reaper``: the module (light to import) defining ``reaper_prepare(info)``
      (run when the reaper starts, while the node lives: import, connect and warm
      up what a revoke needs, so the revoke at the death is one request) and
      ``reaper_revoke(info, lease) -> str`` (run inside the reaper process when
      the node process died);
    * ``missing(section)`` -> a one-line reason when the store plainly holds no
      cluster (a sqlite file that does not exist), for read-only tools;
    * ``path_keys``: keys (inside the section) holding file paths, resolved
      against the config file's directory;
    * ``max_txn_ops`` / ``max_txn_bytes``: limits of one transaction (None: none);
    * ``extra``: the pip extra that brings the backend's driver.
    """

    name: str
    summary: str
    features: Features
    open: Callable[[Any, Clock | None], Awaitable[Store]]
    section: type[Section] | None = None
    open_timeout: Callable[[Any], float] = lambda section: 30.0
    describe: Callable[[Any], str] = lambda section: "the store"
    identity: Callable[[Any], dict[str, Any]] = lambda section: {}
    reaper: str | None = None
    reaper_info: Callable[[Any], dict[str, Any]] = lambda section: {}
    missing: Callable[[Any], str | None] = _nothing
    path_keys: tuple[tuple[str, ...], ...] = ()
    max_txn_ops: int | None = None
    max_txn_bytes: int | None = None
    extra: str | None = None
    driver_modules: frozenset[str] = field(default_factory=frozenset)

    @property
    def install_hint(self) -> str:
        if self.extra is None:
            return f"the {self.name} backend is not available in this installation"
        return (f"the {self.name} backend needs the {self.extra} extra: "
                f"pip install 'shoal[{self.extra}]'")

    def extra_missing(self, exc: ModuleNotFoundError) -> bool:
        """True when ``exc`` says this backend's driver (its extra) is not installed."""
        return (exc.name or "").split(".")[0] in self.driver_modules


_loaded: dict[str, Backend] = {}
_plugins: dict[str, str] | None = None


def _plugin_table() -> dict[str, str]:
    global _plugins
    if _plugins is None:
        found: dict[str, str] = {}
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in BUILTIN:
                log.warning("ignoring plugin backend %r (%s): a built-in has that name",
                            ep.name, ep.value)
                continue
            found[ep.name] = ep.value
        _plugins = found
    return _plugins


def backend_names() -> list[str]:
    """Every backend name known here: built-ins first, then plugins."""
    return [*BUILTIN, *sorted(n for n in _plugin_table() if n not in BUILTIN)]


def _import(target: str, name: str) -> Backend:
    module_name, _, attr = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr or "BACKEND")
    except Exception as exc:  # a plugin's bug must not take every command down
        raise UnsupportedBackend(
            f"store backend {name!r}: cannot load its descriptor {target} ({exc})"
        ) from exc
    if not isinstance(obj, Backend) or obj.name != name:
        raise UnsupportedBackend(
            f"store backend {name!r}: {target} is not a shoal.store.registry.Backend named "
            f"{name!r}"
        )
    return obj


def get_backend(name: str) -> Backend:
    """The descriptor of backend ``name``; :class:`~shoal.ConfigError` when unknown."""
    backend = _loaded.get(name)
    if backend is not None:
        return backend
    target = BUILTIN.get(name) or _plugin_table().get(name)
    if target is None:
        raise ConfigError(
            f"store.backend: bad value {name!r} — use one of {', '.join(backend_names())}"
        )
    backend = _loaded[name] = _import(target, name)
    return backend


def load_backends() -> list[Backend]:
    """Every backend whose descriptor loads (a broken plugin is logged and left out)."""
    found = []
    for name in backend_names():
        try:
            found.append(get_backend(name))
        except UnsupportedBackend as exc:
            log.warning("%s", exc)
    return found


_FEATURE_WHY = {
    "multi_process": "is private to one process",
    "multi_machine": "cannot be shared by several machines",
    "linearizable": "is not linearizable",
}


def require_features(backend: Backend, needs: Mapping[str, str] | tuple[str, ...]) -> None:
    """Raise :class:`~shoal.UnsupportedBackend` unless ``backend`` has every
    feature in ``needs`` (names of :class:`~shoal.store.Features` flags; a
    mapping gives, per feature, what needs it and how to fix it)."""
    items = needs.items() if isinstance(needs, Mapping) else ((n, "") for n in needs)
    for feature, why in items:
        if not getattr(backend.features, feature):
            what = _FEATURE_WHY.get(feature, f"lacks {feature}")
            raise UnsupportedBackend(
                f"store.backend: {backend.name} {what}" + (f" — {why}" if why else "")
            )
