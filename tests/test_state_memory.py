"""Replicated state keeps each document once (parsed), not raw bytes as well;
a full load never holds every raw record next to every parsed document; keys
of same-shaped documents share one string."""

from __future__ import annotations

import gc
import json
import tracemalloc
from pathlib import Path

from shoal.clock import SYSTEM_CLOCK
from shoal.runtime.state import ReplicatedState
from shoal.store.protocol import KeyValue, Put
from shoal.store.sqlite import SqliteStore


def doc(i: int) -> bytes:
    body = {"seq": i, "name": f"item-{i:06d}", "tags": ["a", "b"], "pad": "x" * 900}
    return json.dumps(body, separators=(",", ":")).encode()


async def test_each_document_is_held_once_and_loading_does_not_double_it(
    tmp_path: Path,
) -> None:
    store = await SqliteStore.open(tmp_path / "s.db", wake=False)
    count, encoded = 3000, 0
    for start in range(0, count, 100):
        batch = [Put(f"state/docs/k{i:05d}", doc(i)) for i in range(start, start + 100)]
        encoded += sum(len(p.value) for p in batch)
        await store.txn([], batch)
    state = ReplicatedState(store, SYSTEM_CLOCK)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        state.start()
        await state.wait_ready()
        gc.collect()
        held, peak = (m - base for m in tracemalloc.get_traced_memory())
    finally:
        tracemalloc.stop()
    try:
        assert state.size == count
        assert state._mirror.items == {}  # no raw copy kept by the watch
        # raw bytes alongside the parsed values would be >= 1x more on top of this
        assert held < 2.0 * encoded, (held, encoded)
        assert peak < 1.25 * held, (peak, held)  # the load frees raw records as it parses
        first, second = state.get("docs", "k00001"), state.get("docs", "k00002")
        assert first is not None and second is not None
        key_a = next(k for k in first.value if k == "pad")
        key_b = next(k for k in second.value if k == "pad")
        assert key_a is key_b  # interned across documents
        await state.put("docs", "k00001", {"seq": 1})
        assert state._mirror.items == {}  # nor after a change
    finally:
        await state.aclose()
        await store.aclose()


def test_short_string_values_are_shared_and_long_ones_are_not() -> None:
    from shoal.runtime._state_model import SHARED_VALUE_CHARS, decode_value

    short, long = "s" * SHARED_VALUE_CHARS, "l" * (SHARED_VALUE_CHARS + 1)

    def parse() -> dict[str, object]:
        # built at run time so the parser, not the compiler, makes the strings
        body = {"status": short, "note": long, "tags": [short, long, 1], "n": {"x": short}}
        text = json.dumps(body)
        value = decode_value(text.encode())
        assert isinstance(value, dict)
        return value

    a, b = parse(), parse()
    assert a == b == json.loads(json.dumps(a))  # values unchanged
    assert a["status"] is b["status"] and a["n"]["x"] is b["n"]["x"]  # type: ignore[index]
    assert a["tags"][0] is b["tags"][0]  # type: ignore[index]
    assert a["note"] is not b["note"]
    assert a["tags"][1] is not b["tags"][1]  # type: ignore[index]


async def test_a_document_written_once_keeps_one_revision_int(tmp_path: Path) -> None:
    """Written once (create revision == mod revision): the Doc holds ONE int object
    for both; written again: two, with their own values."""
    store = await SqliteStore.open(tmp_path / "s.db", wake=False)
    state = ReplicatedState(store, SYSTEM_CLOCK)
    try:
        # equal values in distinct int objects, as a store's decoder makes them
        # (ints above 256 are not shared by the interpreter)
        created, modified = int("1000001"), int("1000001")
        assert created is not modified
        once = state._decode("docs/once", KeyValue("state/docs/once", doc(1), created,
                                                   modified, 1, 0))
        assert once is not None
        assert once.create_revision is once.revision and once.revision == 1000001
        twice = state._decode("docs/twice", KeyValue("state/docs/twice", doc(2), created,
                                                     int("1000005"), 2, 0))
        assert twice is not None
        assert (twice.create_revision, twice.revision, twice.version) == (1000001, 1000005, 2)
    finally:
        await state.aclose()
        await store.aclose()
