"""Benchmark: what a server list look-up costs the daemon's event loop, and many callers at once.

Two figures, each against a baseline run side by side in this process:

- the longest the event loop stalls while ListServers looks a server up by name: now the list
  of the server's country (2,000 servers, as many as the largest country has) parsed in a
  worker thread, against before: the whole fleet (6,000 servers) parsed on the loop itself.
  The same country list parsed on the loop is shown too: the thread cannot remove the part of
  the stall spent in the C JSON decoder, which holds the interpreter lock;
- 50 callers asking for the same look-up at once (ListServers by name from many local users):
  shared through ``SharedResults``, against each parsing its own copy.

Run directly (`python -m bench.bench_lookups`) or import `run()` from a bench runner.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from nordwgd.provider.nordvpn.parse import parse_servers
from nordwgd.sharedcall import SharedResults
from nordwgd.testing.fakeapi import ServerIndex
from nordwgd.testing.fleet import large_fleet

CALLERS = 50


def _body(n: int) -> bytes:
    index = ServerIndex(large_fleet(n))
    return b"[" + b",".join(entry.body for entry in index.entries) + b"]"


async def _longest_stall(work: Callable[[], Awaitable[object]]) -> float:
    """Seconds of the longest gap between ticks of a 1 ms timer while ``work`` runs."""
    loop = asyncio.get_running_loop()
    longest = 0.0
    done = False

    async def ticker() -> None:
        nonlocal longest
        last = loop.time()
        while not done:
            await asyncio.sleep(0.001)
            now = loop.time()
            longest = max(longest, now - last)
            last = now

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.01)
    try:
        await work()
    finally:
        done = True
        await task
    return longest


async def _stalls(country: bytes, fleet: bytes, repeats: int) -> dict[str, list[float]]:
    async def fleet_on_loop() -> object:
        return parse_servers(fleet, "bench")

    async def country_on_loop() -> object:
        return parse_servers(country, "bench")

    async def country_off_loop() -> object:
        return await asyncio.to_thread(parse_servers, country, "bench")

    kinds = {"before": fleet_on_loop, "on_loop": country_on_loop, "now": country_off_loop}
    stalls: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(repeats):  # alternating, so all see the same load on the machine
        for kind, work in kinds.items():
            stalls[kind].append(await _longest_stall(work))
    return stalls


async def _callers(body: bytes) -> tuple[float, float, int]:
    """(seconds shared, seconds unshared, parses when shared) for CALLERS look-ups at once."""
    parses = 0

    async def fetch() -> object:
        nonlocal parses
        parses += 1
        return await asyncio.to_thread(parse_servers, body, "bench")

    shared: SharedResults[str, object] = SharedResults(ttl=60, limit=1)
    start = time.perf_counter()
    await asyncio.gather(*(shared.get("de1001", fetch) for _ in range(CALLERS)))
    shared_seconds = time.perf_counter() - start
    shared_parses = parses
    start = time.perf_counter()
    await asyncio.gather(*(fetch() for _ in range(CALLERS)))
    return shared_seconds, time.perf_counter() - start, shared_parses


def run(n: int = 2000, fleet: int = 6000, repeats: int = 5) -> dict[str, object]:
    body = _body(n)
    stalls = asyncio.run(_stalls(body, _body(fleet), repeats))
    median = {kind: statistics.median(values) for kind, values in stalls.items()}
    shared_s, unshared_s, parses = asyncio.run(_callers(body))
    result: dict[str, object] = {
        "name": "lookups",
        "servers": n,
        "fleet": fleet,
        "body_bytes": len(body),
        "repeats": repeats,
        "stall_ms_before_median": round(median["before"] * 1000, 1),
        "stall_ms_on_loop_median": round(median["on_loop"] * 1000, 1),
        "stall_ms_off_loop_median": round(median["now"] * 1000, 1),
        "stall_ratio": round(median["now"] / median["before"], 3),
        "callers": CALLERS,
        "callers_parses_shared": parses,
        "callers_ms_shared": round(shared_s * 1000, 1),
        "callers_ms_unshared": round(unshared_s * 1000, 1),
        "callers_ratio": round(shared_s / unshared_s, 3),
    }
    print(
        f"lookups: longest loop stall {result['stall_ms_off_loop_median']} ms ({n} servers, "
        f"{len(body) / 1e6:.1f} MB, off the loop) vs {result['stall_ms_before_median']} ms "
        f"({fleet} on the loop; ratio {result['stall_ratio']}; {n} on the loop: "
        f"{result['stall_ms_on_loop_median']} ms); "
        f"{CALLERS} callers at once: {parses} parse, {result['callers_ms_shared']} ms vs "
        f"{result['callers_ms_unshared']} ms unshared (ratio {result['callers_ratio']})"
    )
    return result


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
