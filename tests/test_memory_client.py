"""MemoryStore.client(): separate client objects over one shared store."""

from __future__ import annotations

from contextlib import aclosing

import pytest

from shoal.errors import NotRunning
from shoal.store.memory import MemoryStore
from shoal.testing.clock import FakeClock


async def test_closing_a_client_ends_its_watch_and_refuses_its_calls() -> None:
    store = MemoryStore(FakeClock())
    a, b = store.client(), store.client()
    assert a is not b
    start = await store.revision() + 1
    async with aclosing(a.watch("k", start)) as wa, aclosing(b.watch("k", start)) as wb:
        await b.put("k1", b"1")
        assert (await anext(wa)).kv.key == "k1"
        assert (await anext(wb)).kv.key == "k1"
        await a.aclose()
        with pytest.raises(StopAsyncIteration):
            await anext(wa)  # a's watch ended with a
        with pytest.raises(NotRunning):
            await a.get("k1")
        await b.put("k2", b"2")  # b and the store carry on
        assert (await anext(wb)).kv.key == "k2"
    kv = await store.get("k2")
    assert kv is not None and kv.value == b"2"
    await store.aclose()
