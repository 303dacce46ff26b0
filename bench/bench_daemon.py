"""The daemon itself, disconnected in a world: start to READY=1, idle memory, idle wakeups,
GetAll round trips, and one property change fanned out to 100 subscribed clients."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from bench import (
    MANAGER,
    PROPERTIES,
    Client,
    Daemon,
    NotifySocket,
    median,
    ms,
    percentile,
    private_bus,
    wait_for_name,
)
from nordwgd.testing.world import World

SUBSCRIBERS = 100
GETALL_CALLS = 1000
GETALL_WARMUP = 50
GETALL_CONCURRENCY = 4


def _context_switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _getall(address: str, concurrency: int) -> tuple[float, float]:
    """p50 and p99 of GetAll round trips with ``concurrency`` calls in flight.

    Only the call is timed (the client turning the reply into plain values is not), after a
    short warm-up; with more than one call in flight a figure includes waiting behind the others.
    """
    client = await Client.open(address)
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(record: bool) -> None:
        async with gate:
            start = time.perf_counter()
            await client.call("GetAll", "s", [MANAGER], interface=PROPERTIES)
            if record:
                latencies.append(time.perf_counter() - start)

    try:
        await asyncio.gather(*(one(False) for _ in range(GETALL_WARMUP)))
        await asyncio.gather(*(one(True) for _ in range(GETALL_CALLS)))
    finally:
        client.close()
    return percentile(latencies, 0.5), percentile(latencies, 0.99)


async def _fan_out(address: str) -> tuple[float, float]:
    """(call -> last client, first client -> last client) for one AllowLan change."""
    clients = [await Client.open(address) for _ in range(SUBSCRIBERS)]
    caller = clients[0]
    try:
        value = not bool(caller.state.get("AllowLan"))
        for client in clients:
            client.changes.clear()
        start = time.perf_counter()
        await caller.call("SetAllowLan", "b", [value])
        deadline = time.monotonic() + 10
        while not all(any("AllowLan" in c for _, c in cl.changes) for cl in clients):
            if time.monotonic() > deadline:
                raise TimeoutError("not every subscriber saw the change within 10 s")
            await asyncio.sleep(0.001)
        stamps = [next(t for t, c in cl.changes if "AllowLan" in c) for cl in clients]
        await caller.call("SetAllowLan", "b", [not value])
    finally:
        for client in clients:
            client.close()
    return max(stamps) - start, max(stamps) - min(stamps)


def run(starts: int = 5, idle_seconds: float = 60.0) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="nordwgd-bench-daemon-") as tmp:
        directory = Path(tmp)
        world = World.build(directory / "world")
        try:
            with private_bus() as address:
                config = world.write_config(directory / "nordwgd.toml", log_level="info")
                ready_times: list[float] = []
                for index in range(starts):
                    notify = NotifySocket(directory)
                    daemon = Daemon(address, world.host_ns, config, directory / "daemon.log",
                                    extra_env={"NOTIFY_SOCKET": str(notify.path)})  # fmt: skip
                    try:
                        start = time.perf_counter()
                        daemon.spawn()
                        ready_times.append(notify.wait_for("READY=1", 30) - start)
                        if index < starts - 1:
                            continue
                        asyncio.run(wait_for_name(address))
                        assert daemon.process is not None
                        pid = daemon.process.pid
                        time.sleep(1.0)  # let start-up work settle
                        rss = _rss_mb(pid)
                        before = _context_switches(pid)
                        time.sleep(idle_seconds)
                        wakeups = _context_switches(pid) - before
                        p50, p99 = asyncio.run(_getall(address, 1))
                        p50_busy, p99_busy = asyncio.run(_getall(address, GETALL_CONCURRENCY))
                        call_to_last, spread = asyncio.run(_fan_out(address))
                    except BaseException:
                        print(daemon.log_tail())
                        raise
                    finally:
                        daemon.stop()
                        notify.close()
        finally:
            world.close()
    result: dict[str, object] = {
        "name": "daemon",
        "ready_ms_median": ms(median(ready_times)),
        "ready_ms_all": [ms(t) for t in ready_times],
        "idle_rss_mb": round(rss, 1),
        "idle_seconds": idle_seconds,
        "idle_wakeups": wakeups,
        "getall_calls": GETALL_CALLS,
        "getall_concurrency": GETALL_CONCURRENCY,
        "getall_p50_ms": round(p50 * 1000, 3),
        "getall_p99_ms": round(p99 * 1000, 3),
        "getall_concurrent_p50_ms": round(p50_busy * 1000, 3),
        "getall_concurrent_p99_ms": round(p99_busy * 1000, 3),
        "subscribers": SUBSCRIBERS,
        "fanout_call_to_last_ms": ms(call_to_last),
        "fanout_first_to_last_ms": ms(spread),
    }
    print(
        f"daemon: READY {result['ready_ms_median']} ms, RSS {result['idle_rss_mb']} MB, "
        f"{wakeups} wakeups in {idle_seconds:.0f} s idle, GetAll p50 {result['getall_p50_ms']} ms "
        f"p99 {result['getall_p99_ms']} ms (one at a time; {GETALL_CONCURRENCY} in flight: "
        f"{result['getall_concurrent_p50_ms']} / {result['getall_concurrent_p99_ms']} ms), "
        f"{SUBSCRIBERS} subscribers reached in "
        f"{result['fanout_call_to_last_ms']} ms"
    )
    return result


if __name__ == "__main__":
    run(starts=3, idle_seconds=10)
