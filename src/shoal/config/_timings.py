"""The ``timings:`` section: presets, the formulas behind each default, checks.

Only ``ttl`` is taken from the preset; every other timing left out is derived
from the TTL in effect (the preset's or the one given)::

    preset   ttl      keepalive_interval = ttl / 3
    local      2 s    safety_margin      = max(0.2, ttl / 10)
    lan        5 s    rebalance_delay    = ttl
    wan       15 s    drain_timeout      = max(10, 3 * ttl)
                      grace              = ttl / 2
                      retry_backoff_max  = ttl / 3

Rules: ``ttl`` is a whole number of seconds from 1 to 3600 (etcd leases are
whole seconds); ``0 < safety_margin < ttl / 2``;
``0 < keepalive_interval < ttl - safety_margin``; ``rebalance_delay >= 0``;
``grace >= 0``; ``drain_timeout > 0``; ``retry_backoff_max > 0``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from shoal.config._errors import show

Preset = Literal["local", "lan", "wan"]
PRESET_TTL: dict[str, int] = {"local": 2, "lan": 5, "wan": 15}
MAX_TTL = 3600
_TTL_FIX = f"use a whole number of seconds from 1 to {MAX_TTL} (the presets use 2, 5 and 15)"


@dataclass(frozen=True, slots=True)
class EffectiveTimings:
    """Every timing resolved to a number (seconds)."""

    preset: str
    ttl: int
    keepalive_interval: float
    safety_margin: float
    rebalance_delay: float
    drain_timeout: float
    grace: float
    retry_backoff_max: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def derive(ttl: int) -> dict[str, float]:
    """The default of every timing for a lease of ``ttl`` seconds."""
    return {
        "keepalive_interval": round(ttl / 3, 3),
        "safety_margin": round(max(0.2, ttl / 10), 3),
        "rebalance_delay": float(ttl),
        "drain_timeout": float(max(10, 3 * ttl)),
        "grace": round(ttl / 2, 3),
        "retry_backoff_max": round(ttl / 3, 3),
    }


def _ttl_in(info: ValidationInfo) -> int | None:
    """The TTL in effect, or None when the TTL itself was invalid."""
    if "ttl" not in info.data:
        return None
    ttl = info.data["ttl"]
    if ttl is None:
        return PRESET_TTL.get(str(info.data.get("preset", "lan")))
    return int(ttl)


class Timings(BaseModel):
    """Lease and scheduling timings. Unset values follow ``preset``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: Preset = "lan"
    ttl: int | None = None
    safety_margin: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    keepalive_interval: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    rebalance_delay: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    drain_timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    grace: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    retry_backoff_max: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    @field_validator("ttl", mode="before")
    @classmethod
    def _check_ttl(cls, value: Any) -> Any:
        if value is None:
            return None
        number: float
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"bad value {show(value)} — {_TTL_FIX}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"bad value {show(value)} — {_TTL_FIX}") from None
        if not math.isfinite(number) or number < 1:
            raise ValueError(f"bad value {show(value)} — {_TTL_FIX}")
        if number > MAX_TTL:
            raise ValueError(
                f"bad value {show(value)} — a dead node would keep its duties for up to "
                f"{show(value)} s; use at most {MAX_TTL} (the presets use 2, 5 and 15)"
            )
        if not number.is_integer():
            low = math.floor(number)
            raise ValueError(
                f"bad value {show(value)} — etcd leases are whole seconds; use {low} or {low + 1}"
            )
        return int(number)

    @field_validator("safety_margin")
    @classmethod
    def _check_margin(cls, margin: float | None, info: ValidationInfo) -> float | None:
        ttl = _ttl_in(info)
        if margin is not None and ttl is not None and margin >= ttl / 2:
            raise ValueError(
                f"bad value {margin:g} — must be less than half the TTL ({ttl / 2:g} s "
                f"for ttl {ttl}); lower it or raise timings.ttl"
            )
        return margin

    @field_validator("keepalive_interval")
    @classmethod
    def _check_keepalive(cls, interval: float | None, info: ValidationInfo) -> float | None:
        ttl = _ttl_in(info)
        if interval is None or ttl is None or "safety_margin" not in info.data:
            return interval
        margin = info.data["safety_margin"]
        if margin is None:
            margin = derive(ttl)["safety_margin"]
        limit = ttl - margin
        if interval >= limit:
            raise ValueError(
                f"bad value {interval:g} — must be less than ttl - safety_margin "
                f"({ttl} - {margin:g} = {limit:g} s), or the lease is not refreshed before "
                "this node gives its duties up; lower it or raise timings.ttl"
            )
        return interval

    def effective(self) -> EffectiveTimings:
        """Every timing, with the preset's formulas filling the gaps."""
        ttl = self.ttl if self.ttl is not None else PRESET_TTL[self.preset]
        derived = derive(ttl)
        given = {k: getattr(self, k) for k in derived}
        values = {k: float(v) if v is not None else derived[k] for k, v in given.items()}
        return EffectiveTimings(preset=self.preset, ttl=ttl, **values)
