"""The sections of a node's configuration (everything but the top level).

Each model is frozen and forbids unknown keys, so a typo is an error. The
validators raise ``ValueError("bad value 'x' — fix")``; :mod:`shoal.config`
turns those into one :class:`~shoal.ConfigError`.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_NAME_FIX = "use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"
_ROLE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,62}")
_ENDPOINT_FIX = "use http://HOST:PORT or https://HOST:PORT"
MIN_SECRET_LENGTH = 64
# Keys holding file paths: relative paths written in a config file are
# resolved against that file's directory.
PATH_KEYS = (
    ("store", "sqlite", "path"),
    ("store", "etcd", "tls", "ca"),
    ("store", "etcd", "tls", "cert"),
    ("store", "etcd", "tls", "key"),
)


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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

    @field_validator("roles", mode="before")
    @classmethod
    def _roles_csv(cls, value: Any) -> Any:
        return _split_csv(value)

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


class SqliteSection(Section):
    path: str = "shoal.db"

    @field_validator("path")
    @classmethod
    def _check_path(cls, path: str) -> str:
        if not path.strip():
            raise ValueError("bad value '' — give a file path, e.g. shoal.db")
        return os.path.expanduser(path)


def _check_file(path: Path | None) -> Path | None:
    if path is None:
        return None
    path = path.expanduser()
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ValueError(f"bad value '{path}' — the file {what}; fix the path or remove the key")
    return path


TlsFile = Annotated[Path | None, AfterValidator(_check_file)]


class TlsSection(Section):
    """TLS towards etcd. Files must exist when the config is validated."""

    ca: TlsFile = None
    cert: TlsFile = None
    key: TlsFile = None
    skip_verify: bool = False

    @model_validator(mode="after")
    def _pair(self) -> TlsSection:
        if (self.cert is None) != (self.key is None):
            given = "cert" if self.key is None else "key"
            raise ValueError(
                f"bad value: only {given} is set — a client certificate needs both "
                "cert and key; set both or neither"
            )
        return self


def _check_endpoint(value: str) -> str:
    from urllib.parse import urlsplit

    problem = f"{value!r} is not an etcd endpoint; {_ENDPOINT_FIX}"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(f"{problem} (PORT is 1-65535)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        raise ValueError(problem)
    if port == 0:
        raise ValueError(f"{problem} (PORT is 1-65535)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(problem)
    return value.rstrip("/")


class EtcdSection(Section):
    endpoints: list[Annotated[str, AfterValidator(_check_endpoint)]] = Field(
        default_factory=lambda: ["http://127.0.0.1:2379"]
    )
    prefix: str = "/shoal"
    timeout: float = Field(default=5.0, gt=0, le=300, allow_inf_nan=False)
    tls: TlsSection = Field(default_factory=TlsSection)
    username: str | None = None
    password: SecretStr | None = None

    @field_validator("endpoints", mode="before")
    @classmethod
    def _endpoints_csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("endpoints")
    @classmethod
    def _some_endpoints(cls, endpoints: list[str]) -> list[str]:
        if not endpoints:
            raise ValueError(
                "bad value [] — list at least one endpoint, e.g. http://127.0.0.1:2379"
            )
        return endpoints

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, prefix: str) -> str:
        clean = prefix.rstrip("/")
        if not clean.startswith("/") or any(c.isspace() for c in clean):
            raise ValueError(
                f"bad value {prefix!r} — use a key prefix starting with '/' and without "
                "spaces, e.g. /shoal or /apps/billing"
            )
        return clean

    @model_validator(mode="after")
    def _consistent(self) -> EtcdSection:
        if (self.username is None) != (self.password is None):
            given = "username" if self.password is None else "password"
            raise ValueError(
                f"bad value: only {given} is set — set both username and password, or neither"
            )
        schemes = {ep.split(":", 1)[0] for ep in self.endpoints}
        if len(schemes) > 1:
            raise ValueError(
                "bad value: endpoints mix http:// and https:// — use one scheme for all"
            )
        tls = self.tls
        if "http" in schemes and (tls.ca or tls.cert or tls.skip_verify):
            raise ValueError(
                f"bad value: tls is set but the endpoints use http:// ({self.endpoints[0]}) — "
                "use https:// endpoints, or remove tls"
            )
        return self


class StoreSection(Section):
    """Which store backs the cluster, and how to reach it."""

    backend: Literal["memory", "sqlite", "etcd"] = "sqlite"
    sqlite: SqliteSection = Field(default_factory=SqliteSection)
    etcd: EtcdSection = Field(default_factory=EtcdSection)


class DutyOverride(Section):
    """Per-node switch for one duty (``name``) or a family (``import:*``)."""

    enabled: bool = True
    per_node: int | None = Field(default=None, ge=1)


class ReaperSection(Section):
    enabled: bool = True


class HttpSection(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    token: SecretStr | None = None


def _check_secret(secret: SecretStr, what: str) -> None:
    length = len(secret.get_secret_value())
    if length < MIN_SECRET_LENGTH:
        raise ValueError(
            f"bad value '***' ({what} is {length} characters) — use at least "
            f"{MIN_SECRET_LENGTH} random characters; make one with `shoal secret generate`"
        )


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
