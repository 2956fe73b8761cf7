"""Reading configuration data: the YAML file, ``SHOAL__*`` variables, overrides.

Everything here returns plain data plus a *source map* (key path -> where it
was set: ``node.yaml:12``, ``SHOAL__NODE__NAME``) so validation errors can
point at the line or the variable to fix. Validation itself is in
:mod:`shoal.config`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr

from shoal.config._errors import Loc, dotted, known_keys, suggest, walk
from shoal.config._yaml import load_yaml
from shoal.errors import ConfigError

ENV_PREFIX = "SHOAL__"
_RAW_TYPES = (str, SecretStr, Path)  # environment values used verbatim, never as JSON


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[Loc, str]]:
    """The mapping in ``path`` and the line of every key in it."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{name}: config file not found — check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{name}: is a directory — give the path of a YAML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not UTF-8 text (byte {exc.start}) — save it as UTF-8") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{name}: cannot read the config file ({reason})") from None
    try:
        root, data = load_yaml(text, name)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{name}:{mark.line + 1}" if mark else name
        column = f" (column {mark.column + 1})" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        context = ""
        if exc.context and exc.context_mark and exc.problem_mark:
            context = f", {exc.context} started on line {exc.context_mark.line + 1}"
        raise ConfigError(
            f"{where}: invalid YAML: {problem}{column}{context} — fix the syntax"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: invalid YAML: {exc}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"the value {str(data)[:40]!r}"
        raise ConfigError(
            f"{name}:1: the top level must be a mapping of sections (cluster:, node:, "
            f"store:, ...), not {kind}"
        )
    sources: dict[Loc, str] = {}
    _index(root, (), sources, name, set())
    result = _str_keys(data)
    assert isinstance(result, dict)
    return result, sources


def _index(node: Any, path: Loc, out: dict[Loc, str], name: str, stack: set[int]) -> None:
    """Record the line of every key and list item; refuse duplicate keys."""
    if id(node) in stack or len(path) > 50:
        return
    stack = stack | {id(node)}
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key == "<<":
                continue
            if key in seen:
                raise ConfigError(
                    f"{name}:{line}: duplicate key {dotted((*path, key))} — keep only one of them"
                )
            seen.add(key)
            out[(*path, key)] = f"{name}:{line}"
            _index(value_node, (*path, key), out, name, stack)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*path, i)] = f"{name}:{item.start_mark.line + 1}"
            _index(item, (*path, i), out, name, stack)


def _str_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _str_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_str_keys(v) for v in value]
    return value


def resolve_paths(data: dict[str, Any], base: Path, keys: Sequence[Sequence[str]]) -> None:
    """Make relative file paths at ``keys`` relative to ``base`` (in place)."""
    for key in keys:
        parent: Any = data
        for seg in key[:-1]:
            parent = parent.get(seg) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        value = parent.get(key[-1])
        if (
            isinstance(value, str)
            and value
            and not value.startswith((":", "file:"))
            and not os.path.isabs(os.path.expanduser(value))
        ):
            parent[key[-1]] = str(base / value)


def _set(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for seg in path[:-1]:
        child = tree.get(seg)
        if not isinstance(child, dict):
            child = tree[seg] = {}
        tree = child
    tree[path[-1]] = value


def _json_or_str(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _env_var(parts: Sequence[str]) -> str:
    return ENV_PREFIX + "__".join(parts).upper()


def env_tree(
    env: Mapping[str, str], model: type[BaseModel]
) -> tuple[dict[str, Any], dict[Loc, str]]:
    """The settings in ``SHOAL__SECTION__KEY`` variables, as nested data.

    Keys are case-insensitive (lower-cased). A value is parsed as JSON unless
    the setting is text (then it is used verbatim); a value that is not JSON
    is used as text. Variables naming no setting are errors.
    """
    tree: dict[str, Any] = {}
    sources: dict[Loc, str] = {}
    problems: list[str] = []
    for var in sorted(env):
        if not var.upper().startswith(ENV_PREFIX):
            continue
        parts = var[len(ENV_PREFIX) :].lower().split("__")
        if not all(parts):
            problems.append(
                f"{var}: empty key in the variable name — use SHOAL__SECTION__KEY, "
                "e.g. SHOAL__NODE__NAME"
            )
            continue
        tp, used, _ = walk(model, parts)
        if used < len(parts):
            problems.append(_unknown_env(var, parts, used, model))
            continue
        raw = env[var]
        _set(tree, parts, raw if tp in _RAW_TYPES else _json_or_str(raw))
        sources[tuple(parts)] = f"set by {var}"
    if problems:
        raise ConfigError("\n".join(problems))
    return tree, sources


def _unknown_env(var: str, parts: list[str], used: int, model: type[BaseModel]) -> str:
    known = known_keys(model, parts[:used])
    if not known:
        return (
            f"{var}: {dotted(parts[:used])} is a single value, not a section — "
            f"set {_env_var(parts[:used])} instead, or unset {var}"
        )
    guess = suggest(parts[used], known)
    fix = (
        f"did you mean {_env_var([*parts[:used], guess])}?"
        if guess
        else f"keys allowed in {dotted(parts[:used]) if used else 'the top level'}: "
        + ", ".join(known)
    )
    return f"{var}: unknown key {dotted(parts[: used + 1])} — {fix} (or unset {var})"


def _leaves(tree: Mapping[str, Any], path: Loc = ()) -> Iterator[Loc]:
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, (*path, key))
        else:
            yield (*path, key)


def merge(
    base: Mapping[str, Any],
    extra: Mapping[str, Any],
    sources: dict[Loc, str],
    extra_sources: Mapping[Loc, str],
) -> dict[str, Any]:
    """``extra`` deep-merged over ``base``; ``sources`` updated in place."""
    for loc, where in extra_sources.items():
        for old in [k for k in sources if k[: len(loc)] == loc]:
            del sources[old]
        sources[loc] = where
    return _deep_merge(base, extra)


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = _deep_merge(old, value)
        else:
            out[key] = value
    return out


def apply_overrides(
    data: Mapping[str, Any], overrides: Mapping[str, Any], sources: dict[Loc, str]
) -> dict[str, Any]:
    """``overrides`` (nested mappings or dotted keys like ``"node.name"``) over ``data``."""
    tree: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        plain = _str_keys(dict(value)) if isinstance(value, Mapping) else value
        old = tree.get(parts[0]) if len(parts) == 1 else None
        if isinstance(old, dict) and isinstance(plain, dict):
            tree[parts[0]] = _deep_merge(old, plain)
        else:
            _set(tree, parts, plain)
    return merge(data, tree, sources, {loc: "set by an override" for loc in _leaves(tree)})
