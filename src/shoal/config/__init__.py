"""Node configuration: one YAML file, overridable by ``SHOAL__SECTION__KEY`` variables.

::

    cluster: shoal
    node:     {name, roles, weight, zone, address, can_lead}
    store:    {backend, sqlite: {path}, etcd: {endpoints, prefix, timeout, tls, username,
               password}, ... one section per backend (shoal.store.registry)}
    timings:  {preset, ttl, keepalive_interval, safety_margin, rebalance_delay,
               drain_timeout, grace, retry_backoff_max}
    duties:   {NAME or FAMILY:*: {enabled, per_node}}
    params:   {free-form application parameters}
    reaper:   {enabled}
    http:     {host, port, token}
    auth:     {secret, previous_secrets}

:func:`load_config` reads the file, applies the environment and validates;
every problem is reported at once in one :class:`~shoal.ConfigError`, one line
per problem naming the key, the bad value and the fix. Every key, its
variable, default and meaning: ``docs/configuration.md``.
"""

from __future__ import annotations

import contextvars
import fnmatch
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator

from shoal.config._errors import Sources, problem_lines
from shoal.config._load import apply_overrides, env_tree, merge, read_yaml, resolve_paths
from shoal.config._sections import (
    MIN_SECRET_LENGTH,
    AuthSection,
    DutyOverride,
    HttpSection,
    NodeSection,
    ReaperSection,
    Section,
    StoreSection,
    StoreSectionBase,
    check_name,
    default_node_name,
    path_keys,
)
from shoal.config._timings import EffectiveTimings, Timings
from shoal.errors import ConfigError

# Where each value of the data being validated came from (for error messages).
_SOURCES: contextvars.ContextVar[Sources | None] = contextvars.ContextVar(
    "shoal_config_sources", default=None
)

__all__ = [
    "MIN_SECRET_LENGTH",
    "AuthSection",
    "DutyOverride",
    "EffectiveTimings",
    "HttpSection",
    "NodeConfig",
    "NodeSection",
    "ReaperSection",
    "StoreSection",
    "StoreSectionBase",
    "Timings",
    "default_node_name",
    "load_config",
    "parse_config",
]


class NodeConfig(Section):
    """The whole configuration of one node. Immutable.

    Constructing it directly raises :class:`~shoal.ConfigError` (never a
    pydantic error) when something is invalid.
    """

    cluster: Annotated[str, AfterValidator(check_name)] = "shoal"
    node: NodeSection = Field(default_factory=NodeSection)
    store: StoreSection = Field(default_factory=StoreSection)
    timings: Timings = Field(default_factory=Timings)
    duties: dict[str, DutyOverride] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    reaper: ReaperSection = Field(default_factory=ReaperSection)
    http: HttpSection = Field(default_factory=HttpSection)
    auth: AuthSection = Field(default_factory=AuthSection)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            lines = problem_lines(exc, NodeConfig, _SOURCES.get())
            raise ConfigError("\n".join(lines)) from None

    @field_validator("duties", mode="before")
    @classmethod
    def _duty_shorthand(cls, value: Any) -> Any:
        """``duties: {cleanup: false}`` means ``{cleanup: {enabled: false}}``."""
        if isinstance(value, Mapping):
            return {k: {"enabled": v} if isinstance(v, bool) else v for k, v in value.items()}
        return value

    @field_validator("duties")
    @classmethod
    def _duty_keys(cls, duties: dict[str, DutyOverride]) -> dict[str, DutyOverride]:
        for key in duties:
            if not key.strip() or "*" in key[:-1] or any(c.isspace() for c in key):
                raise ValueError(
                    f"bad key {key!r} — use a duty name (history-cleanup) or a family "
                    "pattern ending in '*' (import:*)"
                )
        return duties

    # -- derived views --------------------------------------------------
    def effective_timings(self) -> EffectiveTimings:
        """Every timing with the preset's formulas filled in."""
        return self.timings.effective()

    def duty_override(self, duty: str) -> DutyOverride:
        """The override for ``duty``: its exact key, else the longest matching
        family pattern (``import:*``), else the default (enabled)."""
        if duty in self.duties:
            return self.duties[duty]
        patterns = [k for k in self.duties if k.endswith("*") and fnmatch.fnmatchcase(duty, k)]
        if patterns:
            return self.duties[max(patterns, key=len)]
        return DutyOverride()

    def to_data(self, *, reveal_secrets: bool = False) -> dict[str, Any]:
        """The effective configuration as plain data (timings resolved)."""
        data: dict[str, Any] = _plain(self.model_dump(), reveal_secrets)
        data["timings"] = self.effective_timings().as_dict()
        return data

    def masked(self) -> dict[str, Any]:
        """Like :meth:`to_data`, with every secret shown as ``"***"``."""
        return self.to_data(reveal_secrets=False)

    def to_yaml(self, *, reveal_secrets: bool = False) -> str:
        """The effective configuration as YAML; secrets masked unless asked."""
        return yaml.safe_dump(
            self.to_data(reveal_secrets=reveal_secrets), sort_keys=False, allow_unicode=True
        )


def _plain(value: Any, reveal: bool) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value() if reveal else "***"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v, reveal) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, reveal) for v in value]
    return value


def parse_config(data: Mapping[str, Any], *, sources: Sources | None = None) -> NodeConfig:
    """Validate plain data into a :class:`NodeConfig`; ``sources`` maps key
    paths to where they were set, for the error message."""
    token = _SOURCES.set(sources)
    try:
        return NodeConfig(**data)
    finally:
        _SOURCES.reset(token)


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> NodeConfig:
    """Read ``path`` (YAML; None = no file), apply ``SHOAL__SECTION__KEY``
    variables from ``env`` (default ``os.environ``), then ``overrides``
    (nested mappings or dotted keys like ``"node.name"``), and validate.

    Relative file paths written in the file are resolved against the file's
    directory. Raises :class:`~shoal.ConfigError` listing every problem.
    """
    data: dict[str, Any] = {}
    sources: dict[tuple[str | int, ...], str] = {}
    if path is not None:
        path = Path(path)
        data, sources = read_yaml(path)
        resolve_paths(data, path.parent, path_keys())
    env_data, env_sources = env_tree(os.environ if env is None else env, NodeConfig)
    data = merge(data, env_data, sources, env_sources)
    if overrides:
        data = apply_overrides(data, overrides, sources)
    return parse_config(data, sources=sources)
