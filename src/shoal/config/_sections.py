"""The sections of a node's configuration (everything but the top level).

Each model is frozen and forbids unknown keys, so a typo is an error. The
validators raise ``ValueError("bad value 'x' — fix")``; :mod:`shoal.config`
turns those into one :class:`~shoal.ConfigError`.
"""

from __future__ import annotations

import re
import socket
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    create_model,
    field_validator,
    model_validator,
)

from shoal.config._secrets import MIN_SECRET_LENGTH as MIN_SECRET_LENGTH
from shoal.config._secrets import check_secret
from shoal.errors import ConfigError
from shoal.store.registry import Backend, backend_names, get_backend, load_backends
from shoal.store.registry import Section as Section

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_NAME_FIX = "use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"
_ROLE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,62}")


def check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(f"bad value {value!r} — {_NAME_FIX}")
    return value


def default_node_name() -> str:
    """This machine's host name, made into a valid node name."""
    host = socket.gethostname()
    if len(host) > 63:
        host = host.split(".")[0]
    host = re.sub(r"[^A-Za-z0-9._-]", "-", host).lstrip("._-")[:63]
    return host or "node"


def _split_csv(value: Any) -> Any:
    """Accept ``"a,b"`` (handy in environment variables) for a list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class NodeSection(Section):
    """Who this node is."""

    name: Annotated[str, AfterValidator(check_name)] = Field(default_factory=default_node_name)
    roles: list[str] = Field(default_factory=list)
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    zone: str = ""
    address: str = ""
    can_lead: bool = True
    prefer_newest_version: bool = False  # singletons follow the newest app version

    @field_validator("roles", mode="before")
    @classmethod
    def _roles_csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("zone")
    @classmethod
    def _check_zone(cls, zone: str) -> str:
        if zone and not _ROLE_RE.fullmatch(zone):
            raise ValueError(
                f"bad zone {zone!r} — use 1 to 63 letters, digits, '.', '_', ':' or '-', "
                "starting with a letter or digit (or \"\" for none)"
            )
        return zone

    @field_validator("roles")
    @classmethod
    def _check_roles(cls, roles: list[str]) -> list[str]:
        for role in roles:
            if not _ROLE_RE.fullmatch(role):
                raise ValueError(
                    f"bad role {role!r} — use letters, digits, '.', '_', ':' or '-', "
                    "starting with a letter or digit"
                )
        return list(dict.fromkeys(roles))


class StoreSectionBase(Section):
    """Which store backs the cluster, and how to reach it: ``backend`` names a
    registered backend (:mod:`shoal.store.registry`); each backend with
    settings adds its own section (``store.sqlite``, ``store.etcd``, ...)."""

    backend: str = "sqlite"

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, name: str) -> str:
        if name not in backend_names():
            names = [repr(n) for n in backend_names()]
            choice = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
            raise ValueError(f"bad value {name!r} — use one of {choice}")
        return name

    @property
    def descriptor(self) -> Backend:
        """The chosen backend's descriptor."""
        return get_backend(self.backend)

    @property
    def selected(self) -> Any:
        """The chosen backend's settings section (None when it has none)."""
        return getattr(self, self.backend, None)


def build_store_section() -> type[StoreSectionBase]:
    """The ``store`` model: the base plus one section per registered backend."""
    fields: dict[str, Any] = {
        b.name: (b.section, Field(default_factory=b.section))
        for b in load_backends() if b.section is not None
    }
    model: type[StoreSectionBase] = create_model(
        "StoreSection", __base__=StoreSectionBase, __module__=__name__, **fields
    )
    model.__doc__ = StoreSectionBase.__doc__
    return model


if TYPE_CHECKING:
    StoreSection = StoreSectionBase
else:
    StoreSection = build_store_section()


def path_keys() -> tuple[tuple[str, ...], ...]:
    """Keys holding file paths: relative paths written in a config file are
    resolved against that file's directory."""
    return tuple(("store", b.name, *key) for b in load_backends() for key in b.path_keys)


class DutyOverride(Section):
    """Per-node switch for one duty (``name``) or a family (``import:*``);
    ``cron`` / ``every`` (seconds) replace a schedule's timing."""

    enabled: bool = True
    per_node: int | None = Field(default=None, ge=1)
    cron: str | None = None
    every: float | None = Field(default=None, ge=1)
    prefer: bool | list[str] = False  # true: this node; [names]: those nodes

    @field_validator("prefer", mode="before")
    @classmethod
    def _prefer_names(cls, value: Any) -> Any:
        """true/false, or node names (a list, or ``"a,b"``), each a valid node name:
        one error naming the value, not one per branch of ``bool | list[str]``."""
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value
        names = _split_csv(value)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"bad value {value!r} — use true (this node) or a list of "
                             "node names, e.g. [node-a, node-b]")
        for name in names:
            if not _NAME_RE.fullmatch(name):
                raise ValueError(f"bad node name {name!r} — {_NAME_FIX}")
        return list(dict.fromkeys(names))

    @model_validator(mode="after")
    def _schedule(self) -> DutyOverride:
        from shoal.core.schedule import check_cron

        if self.cron is not None and self.every is not None:
            raise ValueError("set cron or every, not both")
        if self.cron is not None:
            check_cron(self.cron)
        return self


class ReaperSection(Section):
    enabled: bool = True


MIN_TOKEN_LENGTH = 32


class HttpSection(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    token: SecretStr | None = None

    @field_validator("token")
    @classmethod
    def _long_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
            length = len(token.get_secret_value())
            what = "empty" if not length else f"{length} characters"
            raise ValueError(
                f"bad value '***' (the token is {what}) — use at least {MIN_TOKEN_LENGTH} "
                "random characters (`shoal secret generate` makes one), or remove the key "
                "to refuse management calls"
            )
        return token


def _check_secret(secret: SecretStr, what: str) -> None:
    """The one secret check, shared with ``shoal run``
    (:func:`shoal.config._secrets.check_secret`)."""
    length = len(secret.get_secret_value())
    if length < MIN_SECRET_LENGTH:
        raise ValueError(
            f"bad value '***' ({what} is {length} characters) — use at least "
            f"{MIN_SECRET_LENGTH} random characters; make one with `shoal secret generate`"
        )
    try:
        check_secret(secret, what=what)
    except ConfigError as exc:
        raise ValueError(f"bad value '***' — {exc}") from None


class AuthSection(Section):
    """The shared session secret (and older ones still accepted, for rotation)."""

    secret: SecretStr | None = None
    previous_secrets: list[SecretStr] = Field(default_factory=list)

    @field_validator("previous_secrets", mode="before")
    @classmethod
    def _one_secret(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("secret")
    @classmethod
    def _long_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None:
            _check_secret(secret, "the secret")
        return secret

    @field_validator("previous_secrets")
    @classmethod
    def _long_previous(cls, secrets: list[SecretStr]) -> list[SecretStr]:
        for i, secret in enumerate(secrets):
            _check_secret(secret, f"previous secret #{i + 1}")
        return secrets
