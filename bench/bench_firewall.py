"""Firewall benchmarks, all inside network namespaces made here and removed afterwards.

1. Time to apply a blocking policy with 10,000 allowed networks in one transaction
   (in-process libnftables and ``nft -f``), median of repeats.
2. TCP throughput forwarded through a router namespace with and without the nordwgd table in
   its forward path (gateway mode, 10,000 networks in the forward set).

Run as root: ``.venv/bin/python bench/bench_firewall.py``.
"""

from __future__ import annotations

import json
import pickle
import secrets
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Network, ip_address
from pathlib import Path

from nordwgd.firewall.policy import FirewallPolicy, policy_for_state
from nordwgd.model import Endpoint

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
NETWORKS = 10_000
REPEATS = 7
TRANSFER_MB = 256
TRANSFER_REPEATS = 3

APPLY_TIMER = """
import asyncio, json, pickle, statistics, subprocess, sys, time
from nordwgd.firewall import Firewall
from nordwgd.firewall.render import render
policy = pickle.load(sys.stdin.buffer)
repeats = int(sys.argv[1])
result = {}
for name, firewall in (("libnftables", Firewall("nftables")),):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        asyncio.run(firewall.apply(policy))
        times.append(time.perf_counter() - start)
    result["apply_verify_libnftables_ms"] = statistics.median(times) * 1000
script = render(policy)
times = []
for _ in range(repeats):
    start = time.perf_counter()
    subprocess.run(["nft", "-f", "-"], input=script.encode(), check=True)
    times.append(time.perf_counter() - start)
result["apply_nft_binary_ms"] = statistics.median(times) * 1000
start = time.perf_counter()
text = render(policy)
result["render_ms"] = (time.perf_counter() - start) * 1000
result["script_bytes"] = len(text)
print(json.dumps(result))
"""

RECEIVER = """
import socket, sys, time
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
server.settimeout(30)
conn, _ = server.accept()
conn.settimeout(30)
total, start = 0, None
while True:
    chunk = conn.recv(1 << 18)
    if not chunk:
        break
    if start is None:
        start = time.perf_counter()
    total += len(chunk)
elapsed = time.perf_counter() - (start or time.perf_counter())
print(f"{total} {elapsed}", flush=True)
"""

SENDER = """
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
block = b"x" * (1 << 18)
for _ in range(int(sys.argv[3]) * 4):
    sock.sendall(block)
sock.close()
"""


def _run(*argv: str, stdin: bytes | None = None) -> str:
    result = subprocess.run(argv, input=stdin, capture_output=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.decode().strip()}")
    return result.stdout.decode()


@contextmanager
def _namespaces(*roles: str) -> Iterator[dict[str, str]]:
    suffix = secrets.token_hex(4)
    names = {role: f"fwb{role[0]}-{suffix}" for role in roles}
    made: list[str] = []
    try:
        for name in names.values():
            _run("ip", "netns", "add", name)
            made.append(name)
            _run("ip", "-n", name, "link", "set", "lo", "up")
        yield names
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _many_networks(count: int) -> tuple[IPv4Network, ...]:
    # /26 every 256 addresses: no two are adjacent, so none collapse into one
    return tuple(IPv4Network(f"10.{i // 256}.{i % 256}.0/26") for i in range(count))


def _policy(
    tunnel: str, forward_from: tuple[IPv4Network, ...], lan: tuple[IPv4Network, ...]
) -> FirewallPolicy:
    return policy_for_state(
        "connected",
        lockdown=False,
        allow_lan=True,
        lan=lan,
        endpoint=Endpoint(ip_address("203.0.113.11")),
        api_addresses=(ip_address("198.51.100.20"),),
        api_port=443,
        fwmark=0xCA6C,
        tunnel_interface=tunnel,
        tunnel_dns=(ip_address("198.18.0.2"),),
        ipv6_tunnel=False,
        forward_from=forward_from,
    )


def bench_apply() -> dict[str, float]:
    policy = _policy("wg0", (), _many_networks(NETWORKS))
    with _namespaces("apply") as ns:
        out = _run(
            "ip", "netns", "exec", ns["apply"], PYTHON, "-c", APPLY_TIMER, str(REPEATS),
            stdin=pickle.dumps(policy),
        )  # fmt: skip
    result: dict[str, float] = json.loads(out)
    return result


def _transfer(ns: dict[str, str]) -> float:
    """Gbit/s for one TCP transfer client -> server through the router."""
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", ns["server"], PYTHON, "-c", RECEIVER, "198.18.0.2", "5201"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        if receiver.stdout.readline().strip() != "ready":
            raise RuntimeError("receiver did not start")
        _run("ip", "netns", "exec", ns["client"], PYTHON, "-c", SENDER, "198.18.0.2", "5201",
             str(TRANSFER_MB))  # fmt: skip
        line, _ = receiver.communicate(timeout=60)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    total, elapsed = line.split()
    return int(total) * 8 / float(elapsed) / 1e9


def bench_forwarding() -> dict[str, float]:
    with _namespaces("client", "router", "server") as ns:
        c, r, s = (("ip", "-n", ns[k]) for k in ("client", "router", "server"))
        veth = ("link", "add")
        _run(*c, *veth, "up0", "type", "veth", "peer", "name", "lan0", "netns", ns["router"])
        _run(*r, *veth, "wg0", "type", "veth", "peer", "name", "in0", "netns", ns["server"])
        for side, link, address in (
            (c, "up0", "192.168.10.2/24"),
            (r, "lan0", "192.168.10.1/24"),
            (r, "wg0", "198.18.0.1/30"),
            (s, "in0", "198.18.0.2/30"),
        ):
            _run(*side, "addr", "add", address, "dev", link)
            _run(*side, "link", "set", link, "up")
        _run(*c, "route", "add", "default", "via", "192.168.10.1")
        _run(*s, "route", "add", "192.168.10.0/24", "via", "198.18.0.1")  # before masquerading
        _run("ip", "netns", "exec", ns["router"], "sysctl", "-qw", "net.ipv4.ip_forward=1")
        without = statistics.median(_transfer(ns) for _ in range(TRANSFER_REPEATS))
        policy = _policy("wg0", (IPv4Network("192.168.10.0/24"), *_many_networks(NETWORKS)), ())
        _run(
            "ip", "netns", "exec", ns["router"], PYTHON, "-c",
            "import asyncio,pickle,sys; from nordwgd.firewall import Firewall; "
            "asyncio.run(Firewall('nftables').apply(pickle.load(sys.stdin.buffer)))",
            stdin=pickle.dumps(policy),
        )  # fmt: skip
        with_table = statistics.median(_transfer(ns) for _ in range(TRANSFER_REPEATS))
    return {"forward_gbit_s_no_table": without, "forward_gbit_s_with_table": with_table}


def run() -> dict[str, float]:
    return {**bench_apply(), **bench_forwarding()}


def main() -> None:
    results = run()
    print(f"{'measure':<34} {'value':>12}")
    for name, value in results.items():
        print(f"{name:<34} {value:>12.2f}")


if __name__ == "__main__":
    main()
