"""Declarations: what duties an application has. No I/O here.

    app = shoal.App("optimize")

    @app.duty("import:{engine}", for_each="engines")     # one duty per engine
    async def importer(ctx): ...

    @app.duty("history-cleanup:{engine}", for_each="engines", with_duty="import:{engine}")
    def cleanup(ctx): ...                                 # sync: runs in a thread

    @app.duty("rule-engine", roles=["ingest"])            # balanced over ingest nodes
    @app.leader_duty("certificate-renewal")              # runs on the leader
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from shoal._errors import ConfigError

LEADER = "leader"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class DutyDecl:
    """A declared duty (a pattern when ``for_each`` is set)."""

    pattern: str
    fn: Callable[..., Any] | None
    roles: frozenset[str] = frozenset()
    for_each: str | None = None
    with_duty: str | None = None
    sticky: bool = False
    leader_bound: bool = False


@dataclass(frozen=True, slots=True)
class Duty:
    """A concrete duty after ``for_each`` expansion."""

    name: str
    family: str
    fn: Callable[..., Any] | None
    roles: frozenset[str]
    with_duty: str | None
    sticky: bool
    leader_bound: bool
    item: Any = None  # the for_each item this duty was made for


def family_of(name: str) -> str:
    return name.split(":", 1)[0]


def _placeholders(pattern: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(pattern) if f]


class App:
    """A named set of duty declarations shared by every node of a cluster."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._decls: dict[str, DutyDecl] = {}

    @property
    def declarations(self) -> list[DutyDecl]:
        return list(self._decls.values())

    def duty(
        self,
        name: str,
        *,
        roles: list[str] | tuple[str, ...] = (),
        for_each: str | None = None,
        with_duty: str | None = None,
        sticky: bool = False,
    ) -> Callable[[F], F]:
        """Declare a duty: exactly one node runs it at a time.

        ``roles``: only nodes with one of these roles may run it (empty: any).
        ``for_each``: a config parameter (``params.<name>``, a list) — one duty
        per item, ``{placeholder}`` in the name filled from the item.
        ``with_duty``: run on the node that owns that duty (co-located).
        ``sticky``: never moved while its owner lives (default: balanced)."""
        if for_each is None and _placeholders(name):
            raise ValueError(f"duty {name!r} has a placeholder but no for_each=")
        if for_each is not None and not _placeholders(name):
            raise ValueError(f"duty {name!r} uses for_each={for_each!r} but has no {{placeholder}}")
        if not _NAME.match(name.replace("{", "a").replace("}", "a")):
            raise ValueError(f"invalid duty name {name!r}: use letters, digits and ._:/-")
        if name == LEADER:
            raise ValueError("'leader' is reserved; use app.leader_duty(...) for leader work")
        if name in self._decls:
            raise ValueError(f"duty {name!r} is declared twice")

        def register(fn: F) -> F:
            self._decls[name] = DutyDecl(
                name, fn, frozenset(roles), for_each, with_duty, sticky,
                leader_bound=with_duty == LEADER,
            )
            return fn

        return register

    def leader_duty(self, name: str, **kwargs: Any) -> Callable[[F], F]:
        """Declare a duty that runs on whichever node is the leader."""
        return self.duty(name, with_duty=LEADER, **kwargs)

    def expand(self, params: Mapping[str, Any]) -> list[Duty]:
        """Concrete duties for these config params, plus the ``leader`` duty."""
        out = [Duty(LEADER, LEADER, None, frozenset(), None, True, True)]
        for decl in self._decls.values():
            items: list[Any] = [None]
            if decl.for_each is not None:
                raw = params.get(decl.for_each)
                if not isinstance(raw, list | tuple) or not raw:
                    raise ConfigError(
                        f"params.{decl.for_each}: duty {decl.pattern!r} needs a non-empty list "
                        f"here (got {raw!r}); e.g. params: {{{decl.for_each}: [a, b]}}"
                    )
                items = list(raw)
            for item in items:
                name, with_duty = self._fill(decl, item)
                out.append(
                    Duty(name, family_of(decl.pattern), decl.fn, decl.roles, with_duty,
                         decl.sticky, decl.leader_bound, item)
                )
        names = [d.name for d in out]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ConfigError(f"duplicate duty names after expansion: {sorted(dupes)}")
        return out

    @staticmethod
    def _fill(decl: DutyDecl, item: Any) -> tuple[str, str | None]:
        if decl.for_each is None:
            return decl.pattern, decl.with_duty
        fields = _placeholders(decl.pattern)
        values = dict(item) if isinstance(item, Mapping) else dict.fromkeys(fields, item)
        try:
            name = decl.pattern.format(**values)
            with_duty = decl.with_duty.format(**values) if decl.with_duty else None
        except (KeyError, IndexError) as exc:
            raise ConfigError(
                f"params.{decl.for_each}: item {item!r} has no value for {exc} "
                f"needed by duty {decl.pattern!r}"
            ) from None
        if not _NAME.match(name):
            raise ConfigError(f"params.{decl.for_each}: item {item!r} makes bad duty name {name!r}")
        return name, with_duty
