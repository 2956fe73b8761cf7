"""Replicated state: names, documents, operations and the JSON rules (no I/O).

A document lives at ``state/{namespace}/{key}`` as compact UTF-8 JSON. Every
check here runs BEFORE anything is sent to the store, so a bad name or value
never writes anything.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from typing import Any, Literal

from shoal.errors import DocumentTooLarge, InvalidArgument, InvalidDocument

PREFIX = "state/"
DEFAULT_MAX_DOC_BYTES = 1 << 20  # 1 MiB per document
# Nesting depth limit of a document (objects and arrays inside each other), the
# same on every path: the HTTP API, node.state, ctx.put, state set and state get.
MAX_DEPTH = 100
# etcd refuses a transaction with more than --max-txn-ops (default 128) operations
# or a request over --max-request-bytes (default 1.5 MiB): stay under both.
DEFAULT_MAX_TXN_OPS = 128
DEFAULT_MAX_TXN_BYTES = 1_400_000

NAMESPACE_RULE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
KEY_RULE = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,511}$"
_NAMESPACE = re.compile(NAMESPACE_RULE[1:-1])
_KEY = re.compile(KEY_RULE[1:-1])


@dataclass(frozen=True, slots=True)
class Doc:
    """One document as this node last saw it. Treat ``value`` as read-only: it
    is shared by every reader (copy it before changing it)."""

    value: Any  # the parsed JSON value
    revision: int  # mod_revision: the store revision of its last write
    version: int  # writes since it was created (1 = just created)
    create_revision: int


@dataclass(frozen=True, slots=True)
class Change:
    """What a subscriber receives.

    ``kind`` is ``"put"`` (``value`` is the new value), ``"delete"`` (``value`` is
    None) or ``"reload"``: the node reloaded the whole state (after the store's
    history was compacted, or because this subscriber fell behind) — re-read
    :meth:`~shoal.runtime.state.ReplicatedState.items`. A reload carries the
    subscribed namespace (None when subscribed to all) and ``key=None``."""

    kind: Literal["put", "delete", "reload"]
    namespace: str | None
    key: str | None
    value: Any
    revision: int


@dataclass(frozen=True, slots=True)
class PutDoc:
    """Transaction op: write ``value``. ``expect_revision``: the document's
    current revision must be this (0 = it must not exist)."""

    namespace: str
    key: str
    value: Any
    expect_revision: int | None = None


@dataclass(frozen=True, slots=True)
class DeleteDoc:
    """Transaction op: delete the document (no-op when absent, unless
    ``expect_revision`` says otherwise)."""

    namespace: str
    key: str
    expect_revision: int | None = None


@dataclass(frozen=True, slots=True)
class CheckDoc:
    """Transaction op: only require the document's revision to be ``revision``
    (0 = absent); writes nothing."""

    namespace: str
    key: str
    revision: int


StateOp = PutDoc | DeleteDoc | CheckDoc


def store_key(namespace: str, key: str) -> str:
    return f"{PREFIX}{namespace}/{key}"


def short_repr(value: object, limit: int = 80) -> str:
    """``repr`` of a caller's value for a message, cut to ``limit`` characters."""
    shown = repr(value)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(shown)} characters)"


def check_namespace(namespace: object) -> str:
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise InvalidDocument(
            f"bad namespace {short_repr(namespace)}: a namespace must match {NAMESPACE_RULE} "
            "(1-128 letters, digits, '.', '_' or '-', starting with a letter or digit)"
        )
    return namespace


def check_key(key: object) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidDocument(
            f"bad key {short_repr(key)}: a key must match {KEY_RULE} "
            "(1-512 letters, digits, '.', '_', ':', '/', '@' or '-', starting with a "
            "letter or digit)"
        )
    return key


def check_names(namespace: object, key: object) -> tuple[str, str]:
    return check_namespace(namespace), check_key(key)


class _Bad(Exception):
    def __init__(self, reason: str) -> None:
        self.path: list[str] = []
        self.reason = reason


_ALLOWED = "use dict (with str keys), list, str, int, float, bool or None"


class _TooDeep(Exception):
    pass


class TooDeep(InvalidDocument):
    """A document nested more than :data:`MAX_DEPTH` levels deep."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what}: the value is nested more than {MAX_DEPTH} levels deep — flatten it "
            f"(at most {MAX_DEPTH} objects/arrays inside each other)"
        )


def _walk(value: Any, depth: int = 0) -> None:
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Bad(f"float {value!r} is not allowed in JSON")
        return
    if isinstance(value, dict | list | tuple) and depth >= MAX_DEPTH:
        raise _TooDeep()
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise _Bad(
                    f"dict key {k!r} of type {type(k).__name__} is not a string "
                    "(JSON object keys must be strings)"
                )
            try:
                _walk(item, depth + 1)
            except _Bad as bad:
                bad.path.append(f"[{k!r}]")
                raise
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            try:
                _walk(item, depth + 1)
            except _Bad as bad:
                bad.path.append(f"[{i}]")
                raise
        return
    raise _Bad(f"type {type(value).__name__} is not JSON-serialisable ({_ALLOWED})")


def encode_value(value: Any, what: str, limit: int) -> bytes:
    """``value`` as compact UTF-8 JSON, or InvalidDocument / DocumentTooLarge
    (also when it is nested more than :data:`MAX_DEPTH` levels deep).

    ``what`` names the document in the message (``"cfg/a"``). Tuples are
    stored as lists."""
    try:
        _walk(value)
        data = json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")
    except _Bad as bad:
        where = "value" + "".join(reversed(bad.path))
        raise InvalidDocument(f"{what}: {where}: {bad.reason}") from None
    except (_TooDeep, RecursionError):
        raise TooDeep(what) from None
    except UnicodeEncodeError:
        raise InvalidDocument(
            f"{what}: the value holds a string that is not valid Unicode (a lone surrogate)"
        ) from None
    if len(data) > limit:
        raise DocumentTooLarge(f"document {what}", len(data), limit)
    return data


def _no_constant(name: str) -> Any:
    raise InvalidArgument(f"{name} is not valid JSON")


# String values up to this many characters are interned too (in objects, and in
# arrays held by objects): status words, codes and tags repeat across the
# documents of one shape. Names and ids are mostly longer and mostly unique; a
# unique interned string costs its slot in the interpreter's intern table, so
# longer strings stay as parsed.
SHARED_VALUE_CHARS = 8


def _interned(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # One loop, no call per value: this runs for every object of every document.
    intern, limit, out = sys.intern, SHARED_VALUE_CHARS, {}
    for k, v in pairs:
        if type(v) is str:
            if len(v) <= limit:
                v = intern(v)
        elif type(v) is list:
            for i, item in enumerate(v):
                if type(item) is str and len(item) <= limit:
                    v[i] = intern(item)
        out[intern(k)] = v
    return out


_DECODER = json.JSONDecoder(parse_constant=_no_constant, object_pairs_hook=_interned)


def decode_value(data: bytes) -> Any:
    """Parse a stored document (strict JSON: no NaN/Infinity). Raises ValueError,
    or :class:`TooDeep` when the parser runs out of stack.

    Object keys are interned: documents of one shape share their key strings,
    which is a large part of their memory when a node holds many of them."""
    try:
        return _DECODER.decode(data.decode("utf-8"))
    except RecursionError:
        raise TooDeep("the stored value") from None


def check_raw(key: str, data: bytes, limit: int = DEFAULT_MAX_DOC_BYTES) -> None:
    """A raw write to a document key ``state/NS/KEY`` must be a valid document
    (JSON, size, depth): InvalidDocument / DocumentTooLarge otherwise. Keys that
    are not documents pass (replicated state ignores them)."""
    parts = split_key(key[len(PREFIX):]) if key.startswith(PREFIX) else None
    if parts is None:
        return
    try:
        ns, name = check_names(*parts)
    except InvalidDocument:
        return
    try:
        value = decode_value(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidDocument(f"{ns}/{name}: the value is not JSON ({exc})") from None
    encode_value(value, f"{ns}/{name}", limit)


def canonical(value: Any) -> str:
    """One text per JSON value (sorted keys): to compare values exactly (``1`` is not
    ``1.0`` is not ``true``)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def split_key(name: str) -> tuple[str, str] | None:
    """``"ns/key"`` (a store key without ``state/``) -> (ns, key), None if not a document."""
    ns, sep, key = name.partition("/")
    if not sep or not ns or not key:
        return None
    return ns, key
