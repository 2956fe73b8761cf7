"""State backups: read, write, validate and restore ``shoal-state`` snapshots.

Works on a :class:`~shoal.store.protocol.Store` directly (no running node), for
``shoal state get`` / ``shoal state set``. The file format (version 1)::

    {
      "format": "shoal-state",
      "version": 1,
      "source": {"backend": "sqlite", "path": "/srv/shoal.db", "cluster": "shoal"},
      "revision": 42,                                            # informational
      "created_at": "2024-05-01T12:00:00Z",                      # informational
      "namespaces": ["config", "users"],     # what a restore replaces
      "checksum": "sha256:...",              # over namespaces + documents
      "documents": [{"namespace": "config", "key": "a", "value": ...}, ...]
    }

Documents are sorted by (namespace, key) and every object's keys are sorted,
so the same state always gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shoal.errors import InvalidArgument, InvalidDocument, InvalidSnapshot, StateError
from shoal.runtime._state_model import (
    PREFIX,
    TooDeep,
    canonical,
    check_key,
    check_namespace,
    decode_value,
    encode_value,
    split_key,
    store_key,
)
from shoal.store.protocol import Compare, Delete, Op, Put, Store, TxnOp

FORMAT = "shoal-state"
VERSION = 1
_FIELDS = {"format", "version", "source", "revision", "created_at", "namespaces", "checksum",
           "documents"}
_DOC_FIELDS = {"namespace", "key", "value"}
Document = tuple[str, str, Any]  # namespace, key, value


@dataclass(frozen=True)
class Snapshot:
    namespaces: tuple[str, ...]
    documents: tuple[Document, ...]  # sorted by (namespace, key)
    source: dict[str, Any] | None = None
    revision: int | None = None
    created_at: str | None = None


def checksum(namespaces: Sequence[str], documents: Sequence[Document]) -> str:
    body = canonical({"namespaces": list(namespaces), "documents": [list(d) for d in documents]})
    return "sha256:" + hashlib.sha256(body.encode("utf-8")).hexdigest()


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def render(snap: Snapshot, *, documents_only: bool = False) -> str:
    """The snapshot as stable, indented JSON text (ends with a newline).

    ``documents_only`` leaves out source, revision and created_at, so the same
    documents give the same bytes whatever store they came from."""
    out: dict[str, Any] = {"format": FORMAT, "version": VERSION}
    if not documents_only:
        out["source"] = _sorted(snap.source or {})
        out["revision"] = snap.revision
        out["created_at"] = snap.created_at
    out["namespaces"] = list(snap.namespaces)
    out["checksum"] = checksum(snap.namespaces, snap.documents)
    out["documents"] = [
        {"namespace": ns, "key": key, "value": _sorted(value)} for ns, key, value in snap.documents
    ]
    return json.dumps(out, indent=2, ensure_ascii=False) + "\n"


# -- reading the store ------------------------------------------------------------------
@dataclass
class Current:
    """What the store holds under ``state/``: (ns, key) -> (canonical value or None
    when not a valid document, mod_revision), plus problems found."""

    docs: dict[tuple[str, str], tuple[str | None, int]] = field(default_factory=dict)
    values: dict[tuple[str, str], Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    revision: int = 0
    too_deep: list[str] = field(default_factory=list)  # documents over MAX_DEPTH


async def read_current(store: Store, *, limit: int = 1 << 62) -> Current:
    """Everything under ``state/`` at one revision (one range)."""
    res = await store.range(PREFIX)
    cur = Current(revision=res.revision)
    for kv in res.kvs:
        name = kv.key[len(PREFIX) :]
        parts = split_key(name)
        if parts is None:
            cur.skipped.append(f"{kv.key}: not of the form state/NAMESPACE/KEY")
            continue
        try:
            check_namespace(parts[0])
            check_key(parts[1])
            value = decode_value(kv.value)
            encode_value(value, kv.key, limit)
        except (ValueError, InvalidDocument) as exc:
            cur.docs[parts] = (None, kv.mod_revision)
            cur.skipped.append(f"{kv.key}: {exc}")
            if isinstance(exc, TooDeep):
                cur.too_deep.append(kv.key)
            continue
        cur.docs[parts] = (canonical(value), kv.mod_revision)
        cur.values[parts] = value
    return cur


def take(cur: Current, namespaces: Sequence[str] | None) -> tuple[tuple[str, ...], list[Document]]:
    """The namespaces and documents a backup holds (all namespaces when None)."""
    if namespaces is None:
        chosen = sorted({ns for ns, _ in cur.values})
    else:
        chosen = sorted({check_namespace(ns) for ns in namespaces})
    wanted = set(chosen)
    docs = [(ns, key, v) for (ns, key), v in sorted(cur.values.items()) if ns in wanted]
    return tuple(chosen), docs


# -- validating a file ----------------------------------------------------------------------
def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise InvalidArgument(f"field {k!r} appears twice in one object")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise InvalidArgument(f"{name} is not valid JSON")


def parse(data: bytes, name: str, *, max_doc_bytes: int) -> Snapshot:
    """Validate a whole backup file; raises InvalidSnapshot (one line) on any problem."""

    def bad(msg: str) -> InvalidSnapshot:
        return InvalidSnapshot(f"{name}: {msg}")

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"not UTF-8 text (bad byte at offset {exc.start})") from None
    if not text.strip():
        raise bad("the file is empty")
    try:
        obj = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()):
            raise bad(f"the JSON ends early at line {exc.lineno} (truncated file?)") from None
        raise bad(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise bad(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise bad("not a shoal state backup: the top level is not a JSON object")
    if obj.get("format") != FORMAT:
        raise bad(f"not a shoal state backup: format is {obj.get('format')!r}, not {FORMAT!r}")
    version = obj.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise bad(f"bad format version {version!r}: expected {VERSION}")
    if version > VERSION:
        raise bad(f"written by a newer shoal (format version {version}); this one reads {VERSION}")
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise bad(f"unknown field {unknown[0]!r} in a version {VERSION} backup")
    documents = obj.get("documents")
    if not isinstance(documents, list):
        raise bad("'documents' is missing or not a list")
    docs = _documents(documents, bad, max_doc_bytes)
    raw_ns = obj.get("namespaces", sorted({ns for ns, _, _ in docs}))
    if not isinstance(raw_ns, list):
        raise bad("'namespaces' is not a list")
    namespaces: list[str] = []
    for i, ns in enumerate(raw_ns):
        try:
            namespaces.append(check_namespace(ns))
        except InvalidDocument as exc:
            raise bad(f"namespaces[{i}]: {exc}") from None
    if len(set(namespaces)) < len(namespaces):
        raise bad("a namespace is listed twice in 'namespaces'")
    listed = set(namespaces)
    for ns, key, _ in docs:
        if ns not in listed:
            raise bad(f"document {ns}/{key}: namespace {ns!r} is not listed in 'namespaces'")
    namespaces.sort()
    if "checksum" in obj and obj["checksum"] != checksum(namespaces, docs):
        raise bad(
            "checksum mismatch: the documents changed after the backup was written (or the "
            "file is damaged); remove the 'checksum' field to restore an edited file on purpose"
        )
    source, revision, created = obj.get("source"), obj.get("revision"), obj.get("created_at")
    if source is not None and not isinstance(source, dict):
        raise bad("'source' is not an object")
    if revision is not None and (isinstance(revision, bool) or not isinstance(revision, int)):
        raise bad("'revision' is not an integer")
    if created is not None and not isinstance(created, str):
        raise bad("'created_at' is not a string")
    return Snapshot(tuple(namespaces), tuple(docs), source, revision, created)


def _documents(
    documents: list[Any], bad: Callable[[str], InvalidSnapshot], limit: int
) -> list[Document]:
    seen: set[tuple[str, str]] = set()
    out: list[Document] = []
    for i, doc in enumerate(documents):
        if not isinstance(doc, dict) or set(doc) != _DOC_FIELDS:
            got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
            raise bad(f"documents[{i}]: must be an object with exactly namespace, key and "
                      f"value (got {got})")
        try:
            ns, key = check_namespace(doc["namespace"]), check_key(doc["key"])
            encode_value(doc["value"], f"document {ns}/{key}", limit)
        except InvalidDocument as exc:
            raise bad(f"documents[{i}]: {exc}") from None
        if (ns, key) in seen:
            raise bad(f"document {ns}/{key} appears twice")
        seen.add((ns, key))
        out.append((ns, key, doc["value"]))
    out.sort(key=lambda d: (d[0], d[1]))
    return out


# -- restoring ---------------------------------------------------------------------------------
@dataclass
class Diff:
    added: list[tuple[str, str]] = field(default_factory=list)
    changed: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    unchanged: int = 0

    @property
    def total(self) -> int:
        return len(self.added) + len(self.changed) + len(self.removed)


def diff(snap: Snapshot, cur: Current, *, merge: bool) -> Diff:
    """What a restore would change: per key, compared as canonical JSON."""
    out = Diff()
    wanted = {(ns, key): canonical(v) for ns, key, v in snap.documents}
    for k, text in sorted(wanted.items()):
        have = cur.docs.get(k)
        if have is None:
            out.added.append(k)
        elif have[0] != text:
            out.changed.append(k)
        else:
            out.unchanged += 1
    if not merge:
        scope = set(snap.namespaces)
        out.removed = sorted(k for k in cur.docs if k[0] in scope and k not in wanted)
    return out


@dataclass
class Restored:
    diff: Diff
    revision: int  # store revision after the last write (0 when nothing was written)
    transactions: int

    @property
    def atomic(self) -> bool:
        return self.transactions <= 1


_Step = tuple[Compare, TxnOp, int]  # guard on the key, the write, its size


def _steps(snap: Snapshot, cur: Current, d: Diff) -> list[_Step]:
    values = {(ns, key): v for ns, key, v in snap.documents}
    steps: list[_Step] = []
    for k in [*d.added, *d.changed]:  # writes first: nothing vanishes before its time
        skey = store_key(*k)
        data = encode_value(values[k], f"{k[0]}/{k[1]}", 1 << 62)
        rev = cur.docs[k][1] if k in cur.docs else 0
        steps.append((Compare.mod_revision(skey, Op.EQUAL, rev), Put(skey, data), len(data)))
    for k in d.removed:
        skey = store_key(*k)
        steps.append((Compare.mod_revision(skey, Op.EQUAL, cur.docs[k][1]), Delete(skey), 0))
    return steps


def _chunks(steps: list[_Step], max_ops: int, max_bytes: int) -> list[list[_Step]]:
    chunks: list[list[_Step]] = []
    size = 0
    for step in steps:
        cost = len(step[1].key) + step[2]
        if not chunks or len(chunks[-1]) >= max_ops or (chunks[-1] and size + cost > max_bytes):
            chunks.append([])
            size = 0
        chunks[-1].append(step)
        size += cost
    return chunks


async def restore(
    store: Store,
    snap: Snapshot,
    *,
    merge: bool,
    max_ops: int,
    max_bytes: int,
    progress: Callable[[int, int], None] | None = None,
    attempts: int = 3,
) -> Restored:
    """Make the store hold ``snap``: one transaction when it fits in ``max_ops``
    operations and ``max_bytes``, else several (then NOT atomic: writes first,
    removals last). Every write requires its key unchanged since it was read;
    if another writer got in between, the rest is re-read and re-planned (up to
    ``attempts`` times). ``progress(done, total)`` is called after each chunk
    of a multi-chunk restore."""
    first: Diff | None = None
    txns, revision = 0, 0
    for _ in range(attempts):
        cur = await read_current(store)
        d = diff(snap, cur, merge=merge)
        first = first or d
        chunks = _chunks(_steps(snap, cur, d), max_ops, max_bytes)
        if not chunks:
            return Restored(first, revision, txns)
        total, done = sum(len(c) for c in chunks), 0
        for chunk in chunks:
            res = await store.txn([s[0] for s in chunk], [s[1] for s in chunk])
            if not res.succeeded:
                break
            txns, revision, done = txns + 1, res.revision, done + len(chunk)
            if progress is not None and len(chunks) > 1:
                progress(done, total)
        else:
            return Restored(first, revision, txns)
    partly = f"; {txns} transaction(s) were already written" if txns else "; nothing was written"
    raise StateError(
        f"the state kept changing during the restore ({attempts} attempts){partly}. "
        "Stop the writers and run it again (a restore is idempotent)"
    )
