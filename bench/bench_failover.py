"""Failover: with traffic flowing through the tunnel (a ping loop to the web server), the
current server goes silent; the time from silencing it until State is connected again, to
another server. Default health settings (only the probe URL comes from the world's config).

Each run uses a fresh daemon: the machine spaces health failovers at least 60 s apart.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench import Client, Daemon, median, ms, private_bus, wait_for_name
from nordwgd.testing.world import World

TIMEOUT = 120.0
# Longer than the health monitor's idle tick (5 s): it has seen the traffic start.
SETTLE = 7.0


async def _once(world: World, address: str) -> tuple[float, str, str]:
    client = await Client.open(address)
    pinger: subprocess.Popen[bytes] | None = None
    silenced = ""
    try:
        await client.connect_vpn()
        await client.wait_state("connected", timeout=60)
        silenced = str(client.state["Server"]["hostname"])
        pinger = subprocess.Popen(  # noqa: ASYNC220 (started once, not waited on)
            ["ip", "netns", "exec", world.host_ns, "ping", "-q", "-i", "0.2", world.web_address],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(SETTLE)  # traffic flows and the monitor follows it closely
        client.changes.clear()
        start = time.perf_counter()
        world.silence_server(silenced)
        deadline = time.monotonic() + TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no failover within {TIMEOUT} s")
            # reconnecting first, then connected to another server
            await client.wait_state("reconnecting", "connecting", timeout=remaining)
            stamp = await client.wait_state("connected", timeout=remaining)
            now_on = str(client.state["Server"]["hostname"])
            if now_on != silenced:
                return stamp - start, silenced, now_on
    finally:
        if pinger is not None:
            pinger.terminate()
            pinger.wait(10)
        if silenced:
            world.unsilence_server(silenced)
        client.close()


def run(runs: int = 3) -> dict[str, object]:
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="nordwgd-bench-failover-") as tmp:
        directory = Path(tmp)
        world = World.build(directory / "world")
        try:
            with private_bus() as address:
                config = world.write_config(directory / "nordwgd.toml", log_level="info")
                for _ in range(runs):
                    daemon = Daemon(address, world.host_ns, config, directory / "daemon.log")
                    daemon.spawn()
                    try:
                        asyncio.run(wait_for_name(address))
                        elapsed, _, _ = asyncio.run(_once(world, address))
                        times.append(elapsed)
                        if os.environ.get("BENCH_VERBOSE"):
                            print(daemon.log_tail())
                    except BaseException:
                        print(daemon.log_tail())
                        raise
                    finally:
                        daemon.stop()
        finally:
            world.close()
    result: dict[str, object] = {
        "name": "failover",
        "runs": runs,
        "failover_ms_median": ms(median(times)),
        "failover_ms_all": [ms(t) for t in times],
    }
    print(f"failover: {result['failover_ms_median']} ms (median of {runs})")
    return result


if __name__ == "__main__":
    run(1)
