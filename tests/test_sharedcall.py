"""SharedResults: one call per key at a time, results kept for a while, a bounded number at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from nordwgd.sharedcall import SharedResults


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_callers_asking_together_share_one_call() -> None:
    calls = 0
    release = asyncio.Event()

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 7

    shared: SharedResults[str, int] = SharedResults(ttl=10)
    waiting = [asyncio.ensure_future(shared.get("a", fetch)) for _ in range(50)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiting) == [7] * 50
    assert calls == 1


async def test_results_are_kept_for_ttl_seconds_and_bounded_in_number() -> None:
    clock = Clock()
    calls: list[str] = []

    def fetcher(key: str) -> Callable[[], Awaitable[str]]:
        async def fetch() -> str:
            calls.append(key)
            return key.upper()

        return fetch

    shared: SharedResults[str, str] = SharedResults(ttl=10, max_entries=2, clock=clock)
    assert await shared.get("a", fetcher("a")) == "A"
    clock.now = 9.9
    assert await shared.get("a", fetcher("a")) == "A"
    assert calls == ["a"]
    clock.now = 10.0
    await shared.get("a", fetcher("a"))
    assert calls == ["a", "a"]
    for key in "bc":  # "a" is the oldest of three: it goes
        await shared.get(key, fetcher(key))
    await shared.get("a", fetcher("a"))
    assert calls == ["a", "a", "b", "c", "a"]


async def test_at_most_limit_calls_run_at_once() -> None:
    running = 0
    most = 0

    async def fetch() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1

    shared: SharedResults[int, None] = SharedResults(ttl=10, limit=2, max_entries=100)
    await asyncio.gather(*(shared.get(key, fetch) for key in range(20)))
    assert most == 2


async def test_a_failure_reaches_every_waiter_and_is_not_kept() -> None:
    attempts = 0

    async def fetch() -> int:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0)
        if attempts == 1:
            raise ValueError("first attempt fails")
        return 1

    shared: SharedResults[str, int] = SharedResults(ttl=10)
    results = await asyncio.gather(
        *(shared.get("k", fetch) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(result, ValueError) for result in results)
    assert await shared.get("k", fetch) == 1
    assert attempts == 2


async def test_a_cancelled_caller_leaves_the_call_to_the_others() -> None:
    release = asyncio.Event()

    async def fetch() -> str:
        await release.wait()
        return "done"

    shared: SharedResults[str, str] = SharedResults(ttl=10)
    first = asyncio.ensure_future(shared.get("k", fetch))
    second = asyncio.ensure_future(shared.get("k", fetch))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second == "done"
    with pytest.raises(asyncio.CancelledError):
        await first
