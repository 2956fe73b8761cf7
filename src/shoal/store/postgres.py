"""The PostgreSQL backend: its descriptor and configuration (``store.postgres``).

The store itself (:class:`PostgresStore`, on psycopg 3) lives in
:mod:`shoal.store._pg_store`; psycopg is imported only when a store is opened,
so this module, and a configuration naming postgres, load without the
``postgres`` extra installed. The reaper's revoke lives in
:mod:`shoal.store._pg_reaper`.

Why psycopg 3 and not asyncpg: one driver gives both the async store and the
reaper's synchronous revoke (asyncpg has no synchronous API, and the reaper
must not start an event loop when its node dies); it speaks libpq's connection
strings, ``sslmode`` (including ``verify-full``) and client certificates
exactly as every other PostgreSQL tool does; ``LISTEN`` notifications are
buffered by the connection while a query runs, so none is dropped between the
poller's reads. See docs/configuration.md, "PostgreSQL".
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from shoal.errors import InvalidArgument
from shoal.store._pg_sql import check_schema_name
from shoal.store.protocol import Features, Store
from shoal.store.registry import Backend, Section, TlsFile

if TYPE_CHECKING:
    from shoal.clock import Clock
    from shoal.store._pg_store import PostgresStore

__all__ = ["BACKEND", "PostgresSection", "PostgresStore"]


SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


def parse_dsn(dsn: str) -> dict[str, str]:
    """The keywords of a libpq connection string or URI (a light parser, no driver)."""
    dsn = dsn.strip()
    if not dsn:
        return {}
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        out: dict[str, str] = {}
        if parts.hostname:
            out["host"] = parts.hostname
        try:
            if parts.port:
                out["port"] = str(parts.port)
        except ValueError:
            raise InvalidArgument(f"bad value {dsn!r} — the port is not 1-65535") from None
        if parts.username:
            out["user"] = unquote(parts.username)
        if parts.password is not None:
            out["password"] = unquote(parts.password)
        if parts.path.strip("/"):
            out["dbname"] = unquote(parts.path.strip("/"))
        for item in parts.query.split("&"):
            if "=" in item:
                key, value = item.split("=", 1)
                out[unquote(key)] = unquote(value)
        return out
    out = {}
    for item in dsn.split():
        if "=" not in item:
            raise InvalidArgument(
                f"bad value {dsn!r} — use 'host=H port=P dbname=D user=U' or "
                "postgresql://USER@HOST:PORT/DB"
            )
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip().strip("'")
    return out


# ``schema`` is the natural key name, and pydantic warns that it shadows the deprecated
# ``BaseModel.schema()``; nothing calls that method on this section.
warnings.filterwarnings(
    "ignore", message='Field name "schema" in "PostgresSection"', category=UserWarning
)


class PostgresSection(Section):
    """Where the cluster's PostgreSQL is. Keys given here override the ``dsn``'s."""

    dsn: str = ""
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    dbname: str | None = None
    user: str | None = None
    password: SecretStr | None = None
    sslmode: SslMode | None = None
    sslrootcert: TlsFile = None
    sslcert: TlsFile = None
    sslkey: TlsFile = None
    schema: str = "shoal"  # type: ignore[assignment]
    timeout: float = Field(default=5.0, gt=0, le=300, allow_inf_nan=False)

    @field_validator("dsn")
    @classmethod
    def _check_dsn(cls, dsn: str) -> str:
        if "password" in parse_dsn(dsn):
            raise ValueError(
                "bad value: the dsn holds a password — remove it from the dsn and set "
                "SHOAL__STORE__POSTGRES__PASSWORD (masked everywhere) instead"
            )
        return dsn

    @field_validator("schema")
    @classmethod
    def _check_schema(cls, schema: str) -> str:
        try:
            return check_schema_name(schema)
        except Exception:
            raise ValueError(
                f"bad value {schema!r} — use 1-40 lower-case letters, digits or '_', "
                "starting with a letter or '_' (e.g. shoal or billing_cluster)"
            ) from None

    @model_validator(mode="after")
    def _pair(self) -> PostgresSection:
        if (self.sslcert is None) != (self.sslkey is None):
            given = "sslcert" if self.sslkey is None else "sslkey"
            raise ValueError(
                f"bad value: only {given} is set — a client certificate needs both "
                "sslcert and sslkey; set both or neither"
            )
        return self

    @property
    def schema_name(self) -> str:
        return str(self.schema)

    def conninfo(self) -> dict[str, Any]:
        """libpq keywords that override the dsn (None: not set)."""
        return {
            "host": self.host, "port": self.port, "dbname": self.dbname, "user": self.user,
            "password": self.password.get_secret_value() if self.password else None,
            "sslmode": self.sslmode,
            "sslrootcert": str(self.sslrootcert) if self.sslrootcert else None,
            "sslcert": str(self.sslcert) if self.sslcert else None,
            "sslkey": str(self.sslkey) if self.sslkey else None,
        }  # fmt: skip

    def place(self) -> tuple[str, str, str]:
        """(host, port, dbname) as libpq will use them (defaults filled in)."""
        given = {**parse_dsn(self.dsn), **{k: str(v) for k, v in self.conninfo().items() if v}}
        host = given.get("host") or given.get("hostaddr") or "localhost"
        return host, given.get("port") or "5432", given.get("dbname") or given.get("user") or ""


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":  # the implementation, imported on first use
        from shoal.store._pg_store import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def _open(section: PostgresSection, clock: Clock | None) -> Store:
    from shoal.store._pg_store import PostgresStore

    return await PostgresStore.open(
        section.dsn, schema=section.schema_name, timeout=section.timeout, clock=clock,
        **section.conninfo(),
    )  # fmt: skip


def _describe(section: PostgresSection) -> str:
    host, port, db = section.place()
    return f"postgres at {host}:{port}/{db or '(default database)'} (schema {section.schema_name})"


def _identity(section: PostgresSection) -> dict[str, Any]:
    host, port, db = section.place()
    return {"backend": "postgres", "host": host, "port": port, "dbname": db,
            "schema": section.schema_name}  # fmt: skip


def _reaper_info(section: PostgresSection) -> dict[str, Any]:
    return {"dsn": section.dsn, "conninfo": section.conninfo(), "schema": section.schema_name,
            "timeout": section.timeout}  # fmt: skip


BACKEND = Backend(
    name="postgres",
    summary="PostgreSQL: clusters across machines on the database a team already runs",
    features=Features(name="postgres", multi_process=True, multi_machine=True, linearizable=True),
    open=_open,
    section=PostgresSection,
    open_timeout=lambda s: float(s.timeout) * 2,
    describe=_describe,
    identity=_identity,
    reaper="shoal.store._pg_reaper",
    reaper_info=_reaper_info,
    path_keys=(("sslrootcert",), ("sslcert",), ("sslkey",)),
    extra="postgres",
    driver_modules=frozenset({"psycopg", "psycopg_binary", "psycopg_c"}),
)
