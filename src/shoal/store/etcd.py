"""The etcd v3 backend: its descriptor and configuration (``store.etcd``).

The backend itself (:class:`EtcdStore`, on ``etcd3aio``/gRPC) lives in
:mod:`shoal.store._etcd_store` and is imported only when a store is opened,
so this module, and a configuration naming etcd, load without the ``etcd``
extra installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator

from shoal.store.protocol import Features, Store
from shoal.store.registry import Backend, Section, TlsFile

if TYPE_CHECKING:
    from shoal.clock import Clock
    from shoal.store._etcd_store import EtcdStore

__all__ = ["BACKEND", "EtcdSection", "EtcdStore", "TlsSection"]

_ENDPOINT_FIX = "use http://HOST:PORT or https://HOST:PORT"
# etcd's default --max-txn-ops and request size limit (1.5 MiB, less framing)
MAX_TXN_OPS = 128
MAX_TXN_BYTES = 1_400_000


def _split_csv(value: Any) -> Any:
    """Accept ``"a,b"`` (handy in environment variables) for a list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value




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


def __getattr__(name: str) -> Any:
    if name == "EtcdStore":  # the implementation, imported on first use
        from shoal.store._etcd_store import EtcdStore

        return EtcdStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def _open(section: EtcdSection, clock: Clock | None) -> Store:
    from shoal.store._etcd_store import EtcdStore

    password = section.password.get_secret_value() if section.password is not None else None
    tls = section.tls
    return await EtcdStore.open(
        list(section.endpoints),
        prefix=section.prefix,
        timeout=section.timeout,
        ca_file=str(tls.ca) if tls.ca else None,
        cert_file=str(tls.cert) if tls.cert else None,
        key_file=str(tls.key) if tls.key else None,
        skip_verify=tls.skip_verify,
        username=section.username,
        password=password,
    )


def _reaper_info(section: EtcdSection) -> dict[str, Any]:
    tls = section.tls
    return {
        "endpoints": list(section.endpoints), "prefix": section.prefix,
        "timeout": section.timeout,
        "ca": str(tls.ca) if tls.ca else None,
        "cert": str(tls.cert) if tls.cert else None,
        "key": str(tls.key) if tls.key else None,
        "skip_verify": tls.skip_verify, "username": section.username,
        "password": section.password.get_secret_value() if section.password else None,
    }


BACKEND = Backend(
    name="etcd",
    summary="etcd v3: real clusters across machines (1, 3 or 5 members)",
    features=Features(name="etcd", multi_process=True, multi_machine=True, linearizable=True),
    open=_open,
    section=EtcdSection,
    open_timeout=lambda s: float(s.timeout) * 2,
    describe=lambda s: f"etcd at {', '.join(s.endpoints)} (prefix {s.prefix})",
    identity=lambda s: {"backend": "etcd", "endpoints": list(s.endpoints), "prefix": s.prefix},
    reaper="shoal.store._etcd_gateway",
    reaper_info=_reaper_info,
    path_keys=(("tls", "ca"), ("tls", "cert"), ("tls", "key")),
    max_txn_ops=MAX_TXN_OPS,
    max_txn_bytes=MAX_TXN_BYTES,
    extra="etcd",
    driver_modules=frozenset({"etcd3aio", "grpc", "google"}),
)
