"""Is the tunnel alive? A monitor that runs while connected.

Every ``tick`` seconds it reads the peer statistics: a handshake older than
``handshake_max_age`` fails the check. While traffic flows (the transmitted counter grew since
the last look) it looks every ``fast_tick`` seconds instead: when the peer has received
everything and answered nothing for ``stall_after`` seconds of sending, the probe URLs get one
short chance (``stall_probe_timeout``) to answer through the tunnel; when none does (or none is
configured) the peer is silent and ``on_failure`` is called at once, without waiting for
``attempts`` checks: a dead server is noticed in seconds, not minutes. Every ``interval``
seconds (or at once after ``trigger()``, e.g. when the uplink changed or the machine resumed) it
fetches the configured URLs; since the tunnel routes everything, a plain request from this
process goes through it. A probe passes when any URL answers with any HTTP status. ``attempts``
failed checks in a row call ``on_failure``; the machine decides what to do (fail over, without
flapping).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import httpx

from nordwgd.config import HealthConfig
from nordwgd.wireguard import PeerStats

log = logging.getLogger(__name__)

Prober = Callable[[str, float], Awaitable[str | None]]
"""``prober(url, timeout)`` -> None when the URL answered, else why it did not."""


async def http_probe(url: str, timeout: float) -> str | None:  # noqa: ASYNC109 (per request)
    """Fetch ``url``; any HTTP answer means the path works."""
    try:
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            response = await client.get(url)
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    log.debug("probe %s: HTTP %d", url, response.status_code)
    return None


class HealthMonitor:
    """Periodic checks of one connection; create per connection, ``start()``, ``stop()``."""

    def __init__(
        self,
        config: HealthConfig,
        stats: Callable[[], Awaitable[PeerStats]],
        on_failure: Callable[[str], None],
        *,
        tick: float = 5.0,
        fast_tick: float = 1.0,
        stall_after: float | None = None,
        stall_probe_timeout: float = 1.0,
        prober: Prober = http_probe,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._stats = stats
        self._on_failure = on_failure
        self._tick = min(tick, config.interval) if config.interval > 0 else tick
        self._fast_tick = min(fast_tick, self._tick)
        # Two looks after the first one that saw sending without receiving.
        self._stall_after = 2 * self._fast_tick if stall_after is None else stall_after
        self._stall_probe_timeout = min(stall_probe_timeout, config.timeout)
        self._prober = prober
        self._wall_clock = wall_clock
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._failures = 0
        self._last: PeerStats | None = None
        self._next_probe = 0.0
        self._sending = False  # the last look saw the transmitted counter grow
        self._stall_since: float | None = None  # first look that saw sending without receiving

    @property
    def failures(self) -> int:
        """Failed checks in a row so far."""
        return self._failures

    def start(self) -> None:
        self._next_probe = self._clock() + self._config.interval
        self._task = asyncio.get_running_loop().create_task(self._run(), name="nordwgd-health")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def trigger(self) -> None:
        """Probe at the next opportunity (uplink change, resume from sleep)."""
        self._wake.set()

    async def check_now(self) -> tuple[bool, dict[str, object]]:
        """Run a full check (handshake and probes) now; it counts toward ``attempts``."""
        return await self._check(probe=True)

    async def _run(self) -> None:
        # A first look at the counters, so that the next one can already tell traffic.
        try:
            self._last = await self._stats()
        except Exception:
            log.debug("first statistics read failed", exc_info=True)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), timeout=self._fast_tick if self._sending else self._tick
                )
            triggered = self._wake.is_set()
            self._wake.clear()
            probe = triggered or self._clock() >= self._next_probe
            try:
                await self._check(probe=probe)
            except Exception:
                log.exception("health check failed unexpectedly")

    async def _check(self, *, probe: bool) -> tuple[bool, dict[str, object]]:
        async with self._lock:
            stats = await self._stats()
            details: dict[str, object] = {
                "rx_bytes": stats.rx_bytes,
                "tx_bytes": stats.tx_bytes,
            }
            problems: list[str] = []
            age = self._handshake_age(stats)
            details["handshake_age"] = age
            if age < 0 or age > self._config.handshake_max_age:
                problems.append("no handshake" if age < 0 else f"last handshake {age:.0f}s ago")
            stalled_for = self._track_stall(stats)
            self._last = stats
            silent = False
            if stalled_for is not None and stalled_for >= self._stall_after:
                silent = await self._confirm_silence(details)
                probe = False  # just probed
                if silent:
                    problems.append(f"nothing received for {stalled_for:.1f}s of sending")
            if probe and self._config.urls:
                self._next_probe = self._clock() + self._config.interval
                results = await asyncio.gather(
                    *(self._prober(url, self._config.timeout) for url in self._config.urls)
                )
                details["probes"] = {
                    url: "ok" if result is None else result
                    for url, result in zip(self._config.urls, results, strict=True)
                }
                if all(result is not None for result in results):
                    problems.append("no probe URL answered")
            healthy = not problems
            if healthy:
                self._failures = 0
            else:
                self._failures += 1
            details["failures"] = self._failures
            details["reason"] = "; ".join(problems)
            if not healthy:
                log.warning(
                    "health check %d/%d failed: %s",
                    self._failures,
                    self._config.attempts,
                    details["reason"],
                )
            if self._failures >= max(1, self._config.attempts) or silent:
                self._failures = 0
                self._on_failure(str(details["reason"]))
            return healthy, details

    def _handshake_age(self, stats: PeerStats) -> float:
        if stats.latest_handshake <= 0:
            return -1.0
        return max(0.0, self._wall_clock() - stats.latest_handshake)

    def _track_stall(self, stats: PeerStats) -> float | None:
        """Seconds the peer has answered nothing while we kept sending, else None."""
        last = self._last
        self._sending = last is not None and stats.tx_bytes > last.tx_bytes
        if last is None or not self._sending or stats.rx_bytes != last.rx_bytes:
            # A lone keepalive, an idle link or any answer ends a stall.
            self._stall_since = None
            return None
        now = self._clock()
        if self._stall_since is None:
            self._stall_since = now
        return now - self._stall_since

    async def _confirm_silence(self, details: dict[str, object]) -> bool:
        """After a stall: True unless a probe URL answers within a short timeout (a one-way
        flow, such as an upload over UDP, gets no WireGuard answers from a live peer)."""
        self._stall_since = None  # the next verdict needs a new stall
        if not self._config.urls:
            return True
        results = await asyncio.gather(
            *(self._prober(url, self._stall_probe_timeout) for url in self._config.urls)
        )
        details["probes"] = {
            url: "ok" if result is None else result
            for url, result in zip(self._config.urls, results, strict=True)
        }
        return all(result is not None for result in results)
