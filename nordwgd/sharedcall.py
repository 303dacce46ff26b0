"""Look-ups that callers share: one call per key at a time, its result kept briefly.

Any local user may ask the daemon to list servers or to diagnose; each answer costs a call to
the provider's API and some parsing. ``SharedResults`` makes such asking cheap to absorb: callers
that ask the same while a call runs wait for that call, a result is reused for ``ttl`` seconds,
at most ``limit`` different calls run at once, and at most ``max_entries`` results are kept.
A failure is given to every caller waiting on it and is not kept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedResults(Generic[K, V]):
    def __init__(
        self,
        *,
        ttl: float,
        limit: int = 1,
        max_entries: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._slots = asyncio.Semaphore(limit)
        self._kept: dict[K, tuple[float, V]] = {}  # key -> (expiry, result), oldest first
        self._running: dict[K, asyncio.Task[V]] = {}

    async def get(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        """The result of ``fetch()`` for ``key``: kept, being fetched, or fetched now."""
        now = self._clock()
        for stale in [k for k, (expiry, _) in self._kept.items() if expiry <= now]:
            del self._kept[stale]
        if key in self._kept:
            return self._kept[key][1]
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(key, fetch))
            self._running[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        # A caller that is cancelled leaves the call running for the others.
        return await asyncio.shield(task)

    async def _fetch(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        async with self._slots:
            result = await fetch()
        self._kept.pop(key, None)
        self._kept[key] = (self._clock() + self._ttl, result)
        while len(self._kept) > self._max_entries:
            del self._kept[next(iter(self._kept))]
        return result

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # its callers have it; no "never retrieved" warning

    def clear(self) -> None:
        """Forget every kept result (calls running now still finish for their callers)."""
        self._kept.clear()
