"""The one YAML reader of Shoal: safe tags only, aliases bounded.

YAML aliases (``*a``) share a node, so a few hundred bytes can describe a
document of billions of values ("billion laughs"), and ``a: &a [*a]`` refers
to itself. :func:`load_yaml` composes the node graph (linear in the text),
measures what constructing it would produce — at most :data:`MAX_VALUES`
values, nested at most :data:`MAX_NESTING` deep, no alias inside itself — and
only then builds the Python data. Every refusal is one :class:`ConfigError`
line naming the file and line.
"""

from __future__ import annotations

from typing import Any

import yaml

from shoal.errors import ConfigError

__all__ = ["MAX_NESTING", "MAX_VALUES", "load_yaml"]

MAX_VALUES = 100_000  # scalars, lists and mappings after alias expansion
MAX_NESTING = 64


class _Refused(Exception):
    def __init__(self, node: yaml.Node, problem: str) -> None:
        self.node = node
        self.problem = problem


def _measure(node: yaml.Node, depth: int, sizes: dict[int, int], open_: set[int]) -> int:
    """How many values ``node`` expands to (memoised per shared node)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise _Refused(node, "an alias refers to a node that contains it (a recursive alias)")
    if depth > MAX_NESTING:
        raise _Refused(node, f"values are nested more than {MAX_NESTING} levels deep")
    total = 1
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
        open_.add(key)
        children = (
            [v for pair in node.value for v in pair]
            if isinstance(node, yaml.MappingNode) else list(node.value)
        )
        for child in children:
            total += _measure(child, depth + 1, sizes, open_)
            if total > MAX_VALUES:
                raise _Refused(
                    node, f"aliases expand to more than {MAX_VALUES} values (an alias bomb?)"
                )
        open_.discard(key)
    sizes[key] = total
    return total


def load_yaml(text: str, name: str) -> tuple[yaml.Node | None, Any]:
    """The composed root node and the data of ``text`` (one document).

    Raises ConfigError for a recursive alias, an expansion over
    :data:`MAX_VALUES` values or :data:`MAX_NESTING` levels; YAML syntax errors
    propagate as :class:`yaml.YAMLError` for the caller to word."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except RecursionError:
            raise ConfigError(
                f"{name}: invalid YAML: values are nested too deeply — flatten the file"
            ) from None
        if root is None:
            return None, None
        try:
            _measure(root, 0, {}, set())
        except _Refused as refused:
            line = refused.node.start_mark.line + 1
            raise ConfigError(f"{name}:{line}: refused YAML: {refused.problem}") from None
        return root, loader.construct_document(root)
    finally:
        loader.dispose()
