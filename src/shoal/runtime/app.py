"""Declarations: what duties an application has. No I/O here.

    app = shoal.App("optimize")

    @app.duty("import:{engine}", for_each="engines")     # one duty per engine
    async def importer(ctx): ...

    @app.duty("history-cleanup:{engine}", for_each="engines", with_duty="import:{engine}")
    def cleanup(ctx): ...                                 # sync: runs in a thread

    @app.duty("rule-engine", roles=["ingest"])            # balanced over ingest nodes
    @app.leader_duty("certificate-renewal")              # runs on the leader

    @app.duty("ingest", partitions=64, roles=["ingest"])  # ingest/0 .. ingest/63
    async def ingest(ctx): ...                            # ctx.partition: 0..63

    @app.workers("ingest-worker", per_node=4, roles=["ingest"])  # 4 copies per node
    async def worker(ctx): ...                            # ctx.worker_index: 0..3
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, TypeVar

from shoal.errors import ConfigError, InvalidArgument
from shoal.runtime.schedule import ScheduleSpec, make_schedule_fn, schedule_spec

LEADER = "leader"
MAX_PARTITIONS = 100_000
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
    partitions: int | None = None  # ``pattern/0`` .. ``pattern/{partitions-1}``
    schedule: ScheduleSpec | None = None  # a scheduled duty (``App.schedule``)
    for_each_doc: str | None = None  # one duty per document of this state namespace


@dataclass(frozen=True, slots=True)
class PoolDecl:
    """A declared worker pool: ``per_node`` concurrent copies on every eligible node."""

    name: str
    fn: Callable[..., Any]
    per_node: int
    roles: frozenset[str] = frozenset()
    needs_store: bool = False  # stop while the node has lost its lease


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
    item: Any = None  # the for_each item (or partition number) this duty was made for
    partition: int | None = None  # for a partitioned duty: its number
    schedule: ScheduleSpec | None = None  # for a scheduled duty: its declaration
    doc: tuple[str, str] | None = None  # for a for_each_doc duty: (namespace, key)


DocSource = Callable[[str], Mapping[str, Any]]
_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$")  # 2.4.1, 1.0.0-rc.1+build.7
log = logging.getLogger("shoal.app")


def _doc_duties(decl: DutyDecl, docs: Mapping[str, Any]) -> list[Duty]:
    """One duty per document of ``decl.for_each_doc`` (sorted by key)."""
    assert decl.for_each_doc is not None
    out = []
    for key in sorted(docs):
        value = docs[key]
        fields = dict(value) if isinstance(value, Mapping) else {}
        fields["key"] = key
        try:
            name = decl.pattern.format(**fields)
            with_duty = decl.with_duty.format(**fields) if decl.with_duty else None
        except (KeyError, IndexError, ValueError) as exc:
            log.warning("document %s/%s: no value for %s needed by duty %r; no duty made",
                        decl.for_each_doc, key, exc, decl.pattern)
            continue
        if not _NAME.match(name):
            log.warning("document %s/%s makes bad duty name %r; no duty made",
                        decl.for_each_doc, key, name)
            continue
        out.append(Duty(name, family_of(decl.pattern), decl.fn, decl.roles, with_duty,
                        decl.sticky, decl.leader_bound, value, schedule=decl.schedule,
                        doc=(decl.for_each_doc, key)))
    return out


def family_of(name: str) -> str:
    return name.split(":", 1)[0]


def _placeholders(pattern: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(pattern) if f]


def _check_partitions(
    name: str, partitions: int, for_each: str | None, with_duty: str | None
) -> None:
    if isinstance(partitions, bool) or not isinstance(partitions, int):
        raise InvalidArgument(f"duty {name!r}: partitions must be an int, got {partitions!r}")
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise InvalidArgument(
            f"duty {name!r}: partitions must be between 1 and {MAX_PARTITIONS}, got {partitions}"
        )
    if for_each is not None:
        raise InvalidArgument(f"duty {name!r}: use partitions= or for_each=, not both")
    if with_duty is not None:
        raise InvalidArgument(
            f"duty {name!r}: partitions are placed independently; with_duty= is not supported"
        )


def _unmatched(key: str, names: list[str], app: str) -> str:
    shown = sorted(names)
    guesses = difflib.get_close_matches(key.rstrip("*").replace("_", "-"), shown, n=1, cutoff=0.5)
    guesses = guesses or difflib.get_close_matches(key, shown, n=1, cutoff=0.5)
    if guesses:
        fix = f"did you mean {guesses[0]!r}?"
        if any(c in guesses[0] for c in "-:"):
            fix += (" (from the environment, names with '-' or ':' go in JSON: "
                    f"SHOAL__DUTIES='{{\"{guesses[0]}\": false}}')")
    else:
        listed = ", ".join(shown[:10]) + (", ..." if len(shown) > 10 else "")
        fix = f"the duties and pools of app {app!r} are: {listed or 'none'}"
    return f"duties.{key}: matches no duty or worker pool of app {app!r} — {fix}"


class App:
    """A named set of duty declarations shared by every node of a cluster.

    ``management_role(session) -> bool``: which user sessions may change the
    cluster through the node's HTTP API (state writes, drain). Default: none;
    a plain session never gets management rights (docs/http.md "Authority")."""

    def __init__(
        self, name: str, version: str = "", *,
        management_role: Callable[[Any], bool] | None = None,
    ) -> None:
        if not isinstance(version, str) or (version and not _VERSION.match(version)):
            raise InvalidArgument(
                f"App version {version!r}: use 1 to 64 letters, digits, '.', '+', '_' or '-', "
                "starting with a letter or digit (e.g. '2.4.1'), or '' for none")
        self.name = name
        self.version = version  # the app's own version, in every node record
        self.management_role = management_role
        self._decls: dict[str, DutyDecl] = {}
        self._pools: dict[str, PoolDecl] = {}

    @property
    def declarations(self) -> list[DutyDecl]:
        return list(self._decls.values())

    @property
    def pools(self) -> list[PoolDecl]:
        """Declared worker pools (see :meth:`workers`)."""
        return list(self._pools.values())

    @property
    def doc_namespaces(self) -> frozenset[str]:
        """State namespaces whose documents make duties (``for_each_doc``)."""
        return frozenset(d.for_each_doc for d in self._decls.values() if d.for_each_doc)

    @property
    def schedules(self) -> dict[str, ScheduleSpec]:
        """Declared schedule (pattern) -> its declaration (see :meth:`schedule`)."""
        return {n: d.schedule for n, d in self._decls.items() if d.schedule is not None}

    @property
    def partitioned(self) -> dict[str, int]:
        """Partitioned duty name -> partition count."""
        return {n: d.partitions for n, d in self._decls.items() if d.partitions is not None}

    def duty(
        self,
        name: str,
        *,
        roles: list[str] | tuple[str, ...] = (),
        for_each: str | None = None,
        with_duty: str | None = None,
        sticky: bool = False,
        partitions: int | None = None,
        for_each_doc: str | None = None,
    ) -> Callable[[F], F]:
        """Declare a duty: exactly one node runs it at a time.

        ``roles``: only nodes with one of these roles may run it (empty: any).
        ``for_each``: a config parameter (``params.<name>``, a list) — one duty
        per item, ``{placeholder}`` in the name filled from the item.
        ``with_duty``: run on the node that owns that duty (co-located).
        ``sticky``: never moved while its owner lives (default: balanced).
        ``partitions``: N independent singleton duties ``name/0`` ..
        ``name/{N-1}`` (family ``name``), each with its own fencing token; the
        function gets its number as ``ctx.partition`` (and ``ctx.item``). The
        count of a running cluster cannot change (see docs/scaling.md).
        ``for_each_doc``: a replicated-state namespace — one duty per document,
        created when the document appears and stopped and released when it is
        deleted, without a restart; ``{key}`` in the name is the document's key
        (other placeholders come from the document's fields); ``ctx.item`` is
        the document's value and ``ctx.changes()`` yields its new values."""
        if for_each_doc is not None:
            if for_each is not None or partitions is not None:
                raise InvalidArgument(f"duty {name!r}: for_each_doc= goes with neither for_each= "
                                 "nor partitions=")
            if not _placeholders(name):
                raise InvalidArgument(f"duty {name!r} uses for_each_doc={for_each_doc!r} but has "
                                 "no {key} placeholder")
            if not _NAMESPACE.match(for_each_doc):
                raise InvalidArgument(f"duty {name!r}: bad namespace {for_each_doc!r}")
        if partitions is not None:
            _check_partitions(name, partitions, for_each, with_duty)
        if for_each is None and for_each_doc is None and _placeholders(name):
            raise InvalidArgument(f"duty {name!r} has a placeholder but no for_each=")
        if for_each is not None and not _placeholders(name):
            raise InvalidArgument(
                f"duty {name!r} uses for_each={for_each!r} but has no {{placeholder}}"
            )
        if not _NAME.match(name.replace("{", "a").replace("}", "a")):
            raise InvalidArgument(f"invalid duty name {name!r}: use letters, digits and ._:/-")
        if name == LEADER:
            raise InvalidArgument("'leader' is reserved; use app.leader_duty(...) for leader work")
        if name in self._decls or name in self._pools:
            raise InvalidArgument(f"duty {name!r} is declared twice")

        def register(fn: F) -> F:
            self._decls[name] = DutyDecl(
                name, fn, frozenset(roles), for_each, with_duty, sticky,
                leader_bound=with_duty == LEADER, partitions=partitions,
                for_each_doc=for_each_doc,
            )
            return fn

        return register

    def schedule(
        self,
        name: str,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        tz: str = "UTC",
        missed: str = "run_once",
        retry: bool = True,
        max_runtime: timedelta | float | None = None,
        jitter: timedelta | float = 0.0,
        misfire_grace: timedelta | float = 60.0,
        roles: list[str] | tuple[str, ...] = (),
        for_each: str | None = None,
        with_duty: str | None = None,
    ) -> Callable[[F], F]:
        """Declare a schedule: ``fn(ctx)`` runs once per slot across the cluster.

        ``cron="m h dom mon dow"`` in time zone ``tz`` (IANA name), or
        ``every=`` a timedelta or seconds (slots at multiples of it since the
        epoch). The schedule is a duty (placed, fenced and moved like one; same
        ``roles``, ``for_each``, ``with_duty`` and per-node switches); its owner
        claims each slot with a fenced write of the schedule's record before
        running it. ``missed``: ``"run_once"`` runs the newest slot that was
        missed while no node could run it (older ones are skipped),
        ``"skip"`` skips slots more than ``misfire_grace`` late. ``retry``: a
        run whose node died mid-run runs once more on the new owner.
        ``max_runtime``: a run longer than this is stopped (``ctx.stopping``;
        async functions are cancelled) and recorded as ``timeout``.
        ``jitter``: each run starts up to this much after its slot (the same
        offset on every node). ``ctx`` is a :class:`~shoal.runtime.schedule.RunContext`
        (``ctx.slot``, ``ctx.attempt``, fenced ``ctx.put``, ``ctx.stopping``).
        Config may replace the timing per node: ``duties: {NAME: {cron: ...}}``."""
        spec = schedule_spec(name, cron=cron, every=every, tz=tz, missed=missed, retry=retry,
                             max_runtime=max_runtime, jitter=jitter, misfire_grace=misfire_grace)
        declare = self.duty(name, roles=roles, for_each=for_each, with_duty=with_duty)

        def register(fn: F) -> F:
            declare(make_schedule_fn(fn, spec))
            self._decls[name] = replace(self._decls[name], schedule=spec)
            return fn

        return register

    def workers(
        self, name: str, *, per_node: int, roles: list[str] | tuple[str, ...] = (),
        needs_store: bool = False,
    ) -> Callable[[F], F]:
        """Declare a worker pool: ``per_node`` concurrent copies of the function
        on EVERY eligible node (roles match, not disabled in the node's config).

        Not a singleton: no ownership key, no fencing token. Each copy gets a
        context with ``ctx.worker_index`` (0 .. per_node-1), ``ctx.stopping``
        and ``ctx.sleep``; a copy that raises is restarted with backoff. A node
        may override the count: ``duties: {NAME: {per_node: 2}}``.

        Copies keep running through a store outage (they need no coordination)
        unless ``needs_store=True``: then they stop when the node loses its lease
        and start again when it rejoins."""
        if not _NAME.match(name) or "{" in name:
            raise InvalidArgument(
                f"invalid worker pool name {name!r}: use letters, digits and ._:/-"
            )
        if name == LEADER:
            raise InvalidArgument("'leader' is reserved")
        if isinstance(per_node, bool) or not isinstance(per_node, int) or per_node < 1:
            raise InvalidArgument(
                f"worker pool {name!r}: per_node must be an int >= 1, got {per_node!r}"
            )
        if name in self._decls or name in self._pools:
            raise InvalidArgument(
                f"{name!r} is declared twice (duty and worker pool names are shared)"
            )

        def register(fn: F) -> F:
            self._pools[name] = PoolDecl(name, fn, per_node, frozenset(roles), needs_store)
            return fn

        return register

    def leader_duty(self, name: str, **kwargs: Any) -> Callable[[F], F]:
        """Declare a duty that runs on whichever node is the leader."""
        return self.duty(name, with_duty=LEADER, **kwargs)

    def check_config(self, config: Any) -> list[Duty]:
        """The app's concrete duties for ``config`` (a NodeConfig); ConfigError,
        one line per problem, when a ``duties:`` key names no duty or pool of
        this app (a typo would otherwise silently do nothing). A key matches a
        duty or pool name, a family (``import`` or ``import:*``) or, ending in
        ``*``, any duty name."""
        duties = self.expand(config.params)
        names = [d.name for d in duties if d.name != LEADER] + [p.name for p in self.pools]
        # families of every declaration too: data-driven duties (for_each_doc) have
        # no concrete names until their documents exist
        families = {d.family for d in duties} | {family_of(d.pattern) for d in self.declarations}
        families |= {f"{f}:*" for f in families}
        problems = []
        for key in config.duties:
            if key in names or key in families or (
                key.endswith("*") and any(fnmatch.fnmatchcase(n, key) for n in names)
            ):
                continue
            problems.append(_unmatched(key, names, self.name))
        if problems:
            raise ConfigError("\n".join(problems))
        return duties

    def expand(
        self, params: Mapping[str, Any], docs: DocSource | None = None
    ) -> list[Duty]:
        """Concrete duties for these config params, plus the ``leader`` duty.

        ``docs(namespace)``: the documents ({key: value}) for ``for_each_doc``
        duties (none without it). A document whose key or fields make a bad
        duty name is left out (logged), never an error: documents come and go
        while the cluster runs."""
        out = [Duty(LEADER, LEADER, None, frozenset(), None, True, True)]
        for decl in self._decls.values():
            if decl.for_each_doc is not None:
                if docs is not None:
                    out.extend(_doc_duties(decl, docs(decl.for_each_doc)))
                continue
            if decl.partitions is not None:
                out.extend(
                    Duty(f"{decl.pattern}/{i}", decl.pattern, decl.fn, decl.roles, None,
                         decl.sticky, decl.leader_bound, i, i)
                    for i in range(decl.partitions)
                )
                continue
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
                         decl.sticky, decl.leader_bound, item, schedule=decl.schedule)
                )
        counts = Counter(d.name for d in out)  # O(n): 100,000 partitions are common
        dupes = {n for n, k in counts.items() if k > 1}
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
