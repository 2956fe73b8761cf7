"""Turn pydantic's validation errors into Shoal's one-line-per-problem messages.

Every problem becomes ``dotted.key: bad value 'x' — fix (where it was set)``:
no pydantic boilerplate, no URLs, and secrets are never echoed. The schema
walk used here (:func:`walk`) is shared with the environment-variable loader.
"""

from __future__ import annotations

import difflib
import json
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError

Loc = tuple[str | int, ...]
# Where each value came from: key path -> "node.yaml:12", "SHOAL__NODE__NAME", ...
Sources = Mapping[Loc, str]

_FIXES: dict[str, str] = {
    "missing": "this key is required; add it",
    "bool_type": "use true or false",
    "bool_parsing": "use true or false",
    "int_type": "use a whole number",
    "int_parsing": "use a whole number",
    "int_from_float": "use a whole number",
    "float_type": "use a number",
    "float_parsing": "use a number",
    "finite_number": "use a finite number",
    "string_type": "use a text value",
    "list_type": "use a list, e.g. [a, b]",
    "dict_type": "use a mapping of keys to values",
    "model_type": "use a mapping of keys to values",
    "model_attributes_type": "use a mapping of keys to values",
    "greater_than": "use a value greater than {gt}",
    "greater_than_equal": "use a value of at least {ge}",
    "less_than": "use a value less than {lt}",
    "less_than_equal": "use a value of at most {le}",
    "literal_error": "use one of {expected}",
    "path_type": "use a file path",
}


_CTX_KEYS = ("gt", "ge", "lt", "le", "expected")
# Settings measured in seconds: their range errors say so (operators coming from
# tools that count milliseconds write 10000 for 10 s).
SECONDS_KEYS = frozenset({
    "timeout", "ttl", "keepalive_interval", "safety_margin", "rebalance_delay",
    "drain_timeout", "grace", "retry_backoff_max",
})
_RANGE_KINDS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def _with_unit(fix: str, loc: Loc, kind: str, value: Any) -> str:
    if not loc or str(loc[-1]) not in SECONDS_KEYS or kind not in _RANGE_KINDS:
        return fix
    fix += " seconds"
    if kind.startswith("less") and isinstance(value, int | float) and value >= 1000:
        seconds = _num(value / 1000)
        fix += f" (the unit is seconds, not milliseconds: for {value} ms write {seconds})"
    return fix


def _num(value: Any) -> Any:
    """``0.0`` -> ``0`` in messages."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def unwrap(tp: Any) -> Any:
    """Strip ``Annotated[...]`` and ``X | None`` down to ``X``."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def walk(model: type[BaseModel], path: Sequence[str | int]) -> tuple[Any, int, bool]:
    """Follow ``path`` through the schema of ``model``.

    Returns ``(type reached, segments consumed, secret)``. Fewer segments
    consumed than given means the next segment is not a key there (an
    unknown key under a model, or a key under a plain value). ``secret`` is
    true when a field on the way holds a :class:`SecretStr`.
    """
    tp: Any = model
    secret = False
    for i, seg in enumerate(path):
        tp = unwrap(tp)
        origin = get_origin(tp)
        if is_model(tp):
            field = tp.model_fields.get(str(seg))
            if field is None:
                return tp, i, secret
            tp = field.annotation
            secret = secret or _mentions(tp, SecretStr)
        elif origin is dict:
            args = get_args(tp)
            tp = args[1] if len(args) == 2 else Any
        elif origin is list and isinstance(seg, int):
            args = get_args(tp)
            tp = args[0] if args else Any
        elif tp is Any:
            continue
        else:
            return tp, i, secret
    return unwrap(tp), len(path), secret


def _mentions(tp: Any, target: type) -> bool:
    if tp is target:
        return True
    return any(_mentions(arg, target) for arg in get_args(tp))


def known_keys(model: type[BaseModel], path: Sequence[str | int]) -> list[str]:
    """The keys allowed at ``path`` (empty when it is not a model)."""
    tp, used, _ = walk(model, path)
    if used == len(path) and is_model(tp):
        return list(tp.model_fields)
    return []


def dotted(loc: Sequence[str | int]) -> str:
    """``("store", "etcd", "endpoints", 0)`` -> ``store.etcd.endpoints[0]``."""
    out = ""
    for seg in loc:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            out += f".{seg}" if out else str(seg)
    return out or "(top level)"


def show(value: Any, *, secret: bool = False) -> str:
    """A short, safe rendering of a bad value."""
    if secret and value not in (None, "", [], {}):
        return "'***'"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, int | float):
        text = str(value)
    else:
        try:
            text = json.dumps(value, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def suggest(word: str, choices: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_key_problem(model: type[BaseModel], loc: Loc) -> str:
    """Text for a key that does not exist (without the location prefix)."""
    parent, name = loc[:-1], str(loc[-1])
    keys = known_keys(model, parent)
    where = dotted(parent) if parent else "the top level"
    guess = suggest(name, keys)
    fix = f"did you mean {guess!r}?" if guess else "remove it or fix its spelling"
    listing = f" (keys allowed in {where}: {', '.join(keys)})" if keys else ""
    return f"unknown key {name!r} — {fix}{listing}"


def locate(loc: Loc, sources: Sources | None) -> str:
    """`` (node.yaml:12)`` for the longest prefix of ``loc`` with a known source."""
    if not sources:
        return ""
    for end in range(len(loc), 0, -1):
        where = sources.get(loc[:end])
        if where:
            return f" ({where})"
    return ""


def problem_lines(
    exc: ValidationError, model: type[BaseModel], sources: Sources | None = None
) -> list[str]:
    """One line per problem in ``exc``."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(err["loc"])
        kind = err["type"]
        ctx = err.get("ctx") or {}
        if kind == "extra_forbidden":
            text = unknown_key_problem(model, loc)
        elif kind == "value_error":
            text = str(ctx.get("error", err["msg"]))
        else:
            secret = walk(model, loc)[2]
            fix = _FIXES.get(kind)
            if fix is None:
                fix = str(err["msg"])
                fix = fix[:1].lower() + fix[1:]
            else:
                fix = fix.format(**{k: _num(ctx.get(k, "")) for k in _CTX_KEYS})
                fix = _with_unit(fix, loc, kind, err.get("input"))
            text = f"bad value {show(err.get('input'), secret=secret)} — {fix}"
        line = f"{dotted(loc)}: {text}{locate(loc, sources)}"
        if line not in lines:
            lines.append(line)
    return lines
