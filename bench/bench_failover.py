"""Failover: with traffic flowing through the tunnel (a ping loop and a small download every
second), the current path dies; the time from the fault until State leaves ``connected``
(found) and until it is ``connected`` to another server (failed over).

Three dead paths, each with the default health settings (no probe URL):

- ``silent``: the server drops all WireGuard traffic, as if it had died;
- ``forwards-nothing``: the server still answers handshakes and keepalives but forwards
  nothing (its forward chain drops); ``forwards-nothing-tcp`` the same with only the downloads
  as traffic (TCP backs off when nothing comes back, so the looks see sending only now and then);
- ``uplink-blackhole``: everything into and out of the host's uplink disappears. No server can
  be reached, so only the time to find it is measured.

The earlier figure is measured too, unchanged: a silent server with the world's probe URL.

``soak(seconds)``: a healthy tunnel on a lossy, jittery path (5 % of the WireGuard datagrams
lost in each direction, each delayed 50 +- 50 ms: ``nordwgd.testing.lossy``, since this kernel
has no netem) carrying the same traffic; every failover in it is a false one.

Each run uses a fresh daemon: the machine spaces health failovers at least 60 s apart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import Client, Daemon, median, ms, private_bus, wait_for_name
from nordwgd.testing.world import World

TIMEOUT = 120.0
# Longer than the health monitor's idle tick (5 s): it has seen the traffic start.
SETTLE = 7.0
KINDS = ("silent", "forwards-nothing", "forwards-nothing-tcp", "uplink-blackhole")
SOAK_SECONDS = 600.0


def _traffic(world: World, *, ping: bool = True) -> list[subprocess.Popen[bytes]]:
    """A ping loop (unless not ``ping``) and a small download every second, through the
    tunnel."""
    ping_loop = ["ping", "-q", "-i", "0.2", world.web_address]
    fetch = [
        "sh",
        "-c",
        f"while :; do curl -s -o /dev/null --max-time 3 http://{world.web_address}/; sleep 1; done",
    ]
    return [
        world.host_popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for argv in ((ping_loop, fetch) if ping else (fetch,))
    ]


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(10)


def _faults(
    world: World, kind: str, hostname: str
) -> tuple[Callable[[], None], Callable[[], None]]:
    if kind == "silent":
        return (lambda: world.silence_server(hostname), lambda: world.unsilence_server(hostname))
    if kind.startswith("forwards-nothing"):
        return (lambda: world.stop_forwarding(hostname), lambda: world.resume_forwarding(hostname))
    return world.blackhole_uplink, world.restore_uplink


async def _once(world: World, address: str, kind: str) -> tuple[float, float | None]:
    """(seconds to leave connected, seconds to be connected elsewhere or None)."""
    client = await Client.open(address)
    traffic: list[subprocess.Popen[bytes]] = []
    undo: Callable[[], None] | None = None
    try:
        await client.connect_vpn()
        await client.wait_state("connected", timeout=60)
        dead = str(client.state["Server"]["hostname"])
        traffic = _traffic(world, ping=not kind.endswith("-tcp"))
        await asyncio.sleep(SETTLE)  # traffic flows and the monitor follows it closely
        client.changes.clear()
        fault, undo = _faults(world, kind, dead)
        start = time.perf_counter()
        fault()
        found = await client.wait_state("reconnecting", "connecting", "error", timeout=TIMEOUT)
        if kind == "uplink-blackhole":
            return found - start, None
        deadline = time.monotonic() + TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no failover within {TIMEOUT} s")
            stamp = await client.wait_state("connected", timeout=remaining)
            if str(client.state["Server"]["hostname"]) != dead:
                return found - start, stamp - start
            await client.wait_state("reconnecting", "connecting", timeout=remaining)
    finally:
        _stop(traffic)
        if undo is not None:
            undo()
        client.close()


def _with_daemon(
    world: World, address: str, config: Path, log: Path, work: Callable[[], Any]
) -> Any:
    daemon = Daemon(address, world.host_ns, config, log)
    daemon.spawn()
    try:
        asyncio.run(wait_for_name(address))
        result = work()
        if os.environ.get("BENCH_VERBOSE"):
            print(daemon.log_tail())
        return result
    except BaseException:
        print(daemon.log_tail())
        raise
    finally:
        daemon.stop()


def run(runs: int = 3) -> dict[str, object]:
    result: dict[str, object] = {"name": "failover", "runs": runs}
    with tempfile.TemporaryDirectory(prefix="nordwgd-bench-failover-") as tmp:
        directory = Path(tmp)
        world = World.build(directory / "world")
        try:
            with private_bus() as address:
                log = directory / "daemon.log"
                # The earlier figure: a silent server, the world's probe URL configured.
                with_url = world.write_config(directory / "url.toml", log_level="info")
                times = [
                    _with_daemon(
                        world,
                        address,
                        with_url,
                        log,
                        lambda: asyncio.run(_once(world, address, "silent")),
                    )[1]
                    for _ in range(runs)
                ]
                result["failover_ms_median"] = ms(median(times))
                result["failover_ms_all"] = [ms(t) for t in times]
                default = world.write_config(
                    directory / "default.toml", log_level="info", health={"urls": None}
                )
                for kind in KINDS:
                    found: list[float] = []
                    moved: list[float] = []
                    missed = 0
                    for _ in range(runs):
                        try:
                            detect, failover = _with_daemon(
                                world,
                                address,
                                default,
                                log,
                                lambda kind=kind: asyncio.run(_once(world, address, kind)),
                            )
                        except TimeoutError:
                            missed += 1  # not found (or not left) within TIMEOUT
                            continue
                        found.append(detect)
                        if failover is not None:
                            moved.append(failover)
                    key = kind.replace("-", "_")
                    result[f"{key}_not_within_{TIMEOUT:.0f}_s"] = missed
                    if not found:
                        continue
                    result[f"{key}_found_ms_median"] = ms(median(found))
                    result[f"{key}_found_ms_all"] = [ms(t) for t in found]
                    if moved:
                        result[f"{key}_failover_ms_median"] = ms(median(moved))
                        result[f"{key}_failover_ms_all"] = [ms(t) for t in moved]
        finally:
            world.close()
    print(
        "failover: "
        + ", ".join(f"{key} {value}" for key, value in result.items() if key.endswith("median"))
    )
    return result


async def _soak(world: World, address: str, seconds: float) -> dict[str, object]:
    client = await Client.open(address)
    traffic: list[subprocess.Popen[bytes]] = []
    try:
        await client.connect_vpn()
        await client.wait_state("connected", timeout=120)
        traffic = _traffic(world)
        client.changes.clear()
        await asyncio.sleep(max(0.0, seconds - 20))
        # The last 20 s: what the path looks like to the traffic, through the tunnel.
        path = await asyncio.to_thread(_ping_summary, world)
        states = [changed["State"] for _, changed in client.changes if "State" in changed]
        return {
            "soak_seconds": seconds,
            "false_failovers": states.count("reconnecting"),
            "states_seen": states,
            "still_connected": client.state.get("State") == "connected",
            **path,
        }
    finally:
        _stop(traffic)
        client.close()


def _ping_summary(world: World) -> dict[str, object]:
    """Loss and round trip of 200 pings through the tunnel."""
    out = world.host_exec(
        ["ping", "-q", "-c", "200", "-i", "0.1", world.web_address], check=False, timeout=60
    ).stdout
    summary: dict[str, object] = {}
    for line in out.splitlines():
        if "packet loss" in line:
            summary["ping_loss_percent"] = float(line.split("%")[0].rsplit(" ", 1)[-1])
        if line.startswith(("rtt", "round-trip")):
            low, avg, high, mdev = line.split("=")[1].split()[0].split("/")
            summary["ping_rtt_ms"] = {"min": low, "avg": avg, "max": high, "mdev": mdev}
    return summary


def soak(
    seconds: float = SOAK_SECONDS, loss: float = 0.05, jitter: float = 0.05
) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="nordwgd-bench-soak-") as tmp:
        directory = Path(tmp)
        world = World.build(directory / "world")
        try:
            world.make_tunnels_lossy(loss=loss, delay=0.05, jitter=jitter)
            with private_bus() as address:
                config = world.write_config(
                    directory / "default.toml", log_level="info", health={"urls": None}
                )
                result: dict[str, object] = _with_daemon(
                    world,
                    address,
                    config,
                    directory / "daemon.log",
                    lambda: asyncio.run(_soak(world, address, seconds)),
                )
        finally:
            world.close()
    result.update({"name": "soak", "loss": loss, "delay_s": 0.05, "jitter_s": jitter})
    print(f"soak: {result['false_failovers']} false failovers in {seconds:g} s")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--soak-seconds", type=float, default=0.0, help="0: no soak")
    args = parser.parse_args()
    print(run(args.runs))
    if args.soak_seconds > 0:
        print(soak(args.soak_seconds))
