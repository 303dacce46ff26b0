"""Connect time: the Connect D-Bus call until State=connected (handshake verified), against
``wg-quick up`` of an equivalent configuration on the same backend plus the equivalent
kill-switch table loaded with ``nft -f`` and the first handshake, in one world.

The backend is wireguard-go by default; ``run(backend="kernel")`` (in a kernel with WireGuard,
see bench/bench_uml.py) has the daemon, wg-quick and the fake servers all on kernel WireGuard.

Runs alternate (daemon, baseline, daemon, ...) so that load on the machine hits both alike.
The baseline configuration carries no DNS line: wg-quick would hand it to resolvconf, which
would write the machine's resolver configuration.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from ipaddress import ip_address
from pathlib import Path

from bench import Client, Daemon, median, ms, private_bus, wait_for_name
from nordwgd.errors import TunnelFailed
from nordwgd.firewall.policy import policy_for_state
from nordwgd.firewall.render import render
from nordwgd.model import NORDLYNX_ADDRESS, Endpoint, TunnelParams
from nordwgd.provider.nordvpn.wgconf import ALL_IPV4, render_wg_quick
from nordwgd.testing import netns as ns
from nordwgd.testing.world import ServerBackend, World
from nordwgd.wireguard.uapi import GET_REQUEST, exchange_sync, parse_get, socket_path

FWMARK = 0xCA6C  # nordwgd's default, and wg-quick's 51820
POLL = 0.01


def _baseline_config(world: World, hostname: str) -> tuple[str, TunnelParams]:
    server = world.server(hostname)
    params = TunnelParams(
        private_key=world.client_private_key,
        address=NORDLYNX_ADDRESS,
        peer_public_key=server.public_key,
        endpoint=Endpoint(ip_address(server.station), 51820),
        allowed_ips=(ALL_IPV4,),
        dns=(),  # no resolvconf call: it would touch the machine's /etc/resolv.conf
    )
    return render_wg_quick(params), params


def _handshake_and_rx(world: World, interface: str, backend: ServerBackend) -> bool:
    if backend == "kernel":
        # What a script would poll: wg show, which reads the kernel over netlink.
        dump = ns.ns_exec(world.host_ns, ["wg", "show", interface, "dump"], check=False)
        peers = [line.split("\t") for line in dump.stdout.splitlines()[1:]]
        return any(int(peer[4]) > 0 and int(peer[5]) > 0 for peer in peers)
    try:
        state = parse_get(exchange_sync(socket_path(interface), GET_REQUEST))
    except (OSError, TunnelFailed):
        return False
    return any(peer.latest_handshake > 0 and peer.rx_bytes > 0 for peer in state.peers)


def _baseline_once(
    world: World, conf: Path, params: TunnelParams, interface: str, backend: ServerBackend
) -> float:
    policy = policy_for_state(
        "connected",
        lockdown=False,
        allow_lan=True,
        lan=(world.lan_network,),
        endpoint=params.endpoint,
        api_addresses=tuple(ip_address(a) for a in world.api_addresses),
        api_port=443,
        fwmark=FWMARK,
        tunnel_interface=interface,
        tunnel_dns=(ip_address(world.tunnel_dns),),
        ipv6_tunnel=False,
    )
    script = render(policy)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    if backend == "userspace":
        env["WG_QUICK_USERSPACE_IMPLEMENTATION"] = "wireguard-go"
        env["WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD"] = "1"
    netns = ["ip", "netns", "exec", world.host_ns]
    start = time.perf_counter()
    try:
        subprocess.run([*netns, "wg-quick", "up", str(conf)], env=env, check=True,
                       capture_output=True, timeout=30)  # fmt: skip
        subprocess.run([*netns, "nft", "-f", "-"], input=script.encode(), check=True,
                       capture_output=True, timeout=30)  # fmt: skip
        deadline = time.monotonic() + 15
        while not _handshake_and_rx(world, interface, backend):
            if time.monotonic() > deadline:
                raise TimeoutError("baseline: no handshake within 15 s")
            time.sleep(POLL)
        return time.perf_counter() - start
    finally:
        subprocess.run([*netns, "nft", "delete", "table", "inet", "nordwgd"], capture_output=True,
                       timeout=30)  # fmt: skip
        subprocess.run([*netns, "wg-quick", "down", str(conf)], env=env, capture_output=True,
                       timeout=30)  # fmt: skip


async def _daemon_once(client: Client) -> tuple[float, str]:
    client.changes.clear()
    start = time.perf_counter()
    await client.connect_vpn()
    connected = await client.wait_state("connected", timeout=60)
    hostname = str(client.state.get("Server", {}).get("hostname", ""))
    elapsed = connected - start
    client.changes.clear()
    await client.call("Disconnect")
    await client.wait_state("disconnected", timeout=60)
    return elapsed, hostname


async def _measure(
    world: World, address: str, runs: int, directory: Path, backend: ServerBackend
) -> dict[str, object]:
    client = await Client.open(address)
    daemon_times: list[float] = []
    baseline_times: list[float] = []
    interface = f"wb{world.id}"
    conf = directory / f"{interface}.conf"
    try:
        for _ in range(runs):
            elapsed, hostname = await _daemon_once(client)
            daemon_times.append(elapsed)
            text, params = _baseline_config(world, hostname)
            fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(text)
            baseline_times.append(
                await asyncio.to_thread(_baseline_once, world, conf, params, interface, backend)
            )
    finally:
        client.close()
    daemon, baseline = median(daemon_times), median(baseline_times)
    return {
        "name": "connect",
        "backend": backend,
        "runs": runs,
        "nordwgd_ms_median": ms(daemon),
        "baseline_ms_median": ms(baseline),
        "ratio": round(daemon / baseline, 2),
        "nordwgd_ms_all": [ms(t) for t in daemon_times],
        "baseline_ms_all": [ms(t) for t in baseline_times],
    }


def run(runs: int = 5, backend: ServerBackend = "userspace") -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="nordwgd-bench-connect-") as tmp:
        directory = Path(tmp)
        world = World.build(directory / "world", server_backend=backend)
        try:
            with private_bus() as address:
                config = world.write_config(
                    directory / "nordwgd.toml", log_level="info", network={"backend": backend}
                )
                daemon = Daemon(address, world.host_ns, config, directory / "daemon.log")
                daemon.spawn()
                try:
                    asyncio.run(wait_for_name(address))
                    result = asyncio.run(_measure(world, address, runs, directory, backend))
                except BaseException:
                    print(daemon.log_tail())
                    raise
                finally:
                    daemon.stop()
        finally:
            world.close()
    print(
        f"connect ({backend}): nordwgd {result['nordwgd_ms_median']} ms, wg-quick+nft "
        f"{result['baseline_ms_median']} ms, ratio {result['ratio']} (median of {runs})"
    )
    return result


if __name__ == "__main__":
    run()
