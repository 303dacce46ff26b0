"""Kernel WireGuard benchmarks, run inside the UML kernel of the UML suite:

    scripts/check-uml --run .venv/bin/python -m bench.bench_uml [--json FILE]

1. Connect with the kernel backend against ``wg-quick up`` on kernel WireGuard plus the same
   kill-switch table by ``nft -f`` (bench_connect with ``backend="kernel"``).
2. TCP throughput through a kernel WireGuard tunnel against a wireguard-go tunnel between the
   same two namespaces, transfers alternating.

UML runs every system call through the host, so its absolute figures say little about a real
kernel: only the ratios, measured side by side in one run, mean anything.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import bench_connect
from bench.bench_firewall import RECEIVER, SENDER
from nordwgd.testing import netns as ns
from nordwgd.testing.fleet import generate_keypair
from nordwgd.testing.world import ServerBackend
from nordwgd.wireguard.uapi import socket_path

PYTHON = sys.executable
TRANSFER_REPEATS = 5
# backend: (tunnel subnet, UDP port, megabytes a transfer). In UML wireguard-go moves a few
# Mbit/s (every packet costs it system calls, which UML makes expensive): it gets a smaller
# transfer so both take seconds, not minutes; the figure is a rate either way.
TUNNELS: dict[ServerBackend, tuple[str, int, int]] = {
    "kernel": ("10.61.0", 51821, 64),
    "userspace": ("10.62.0", 51822, 8),
}


def _wireguard_link(netns: str, ifname: str, backend: ServerBackend) -> None:
    if backend == "kernel":
        ns.ip(netns, "link", "add", ifname, "type", "wireguard")
        return
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1",
    }
    # wireguard-go forks into the background and goes away with its socket.
    subprocess.run(
        ns.exec_argv(netns, ["wireguard-go", ifname]),
        env=env,
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=30,
    )


@contextmanager
def _tunnels(directory: Path) -> Iterator[dict[str, str]]:
    """Namespaces "a" and "b" on a veth, with one tunnel of each backend between them."""
    suffix = secrets.token_hex(3)
    names = {"a": f"nwgt-ua-{suffix}", "b": f"nwgt-ub-{suffix}"}
    links: list[str] = []
    try:
        for name in names.values():
            ns.create_netns(name)
        ns.veth("eth0", names["a"], "eth0", names["b"])
        ns.ip(names["a"], "address", "add", "192.0.2.1/24", "dev", "eth0")
        ns.ip(names["b"], "address", "add", "192.0.2.2/24", "dev", "eth0")
        keys = {side: generate_keypair() for side in ("a", "b")}
        for backend, (subnet, port, _mb) in TUNNELS.items():
            for side, other, host, peer_ip in (("a", "b", 1, "192.0.2.2"), ("b", "a", 2, "")):
                # wireguard-go's socket directory is shared by all namespaces: one name each.
                ifname = f"wb{backend[0]}{side}{suffix}"
                links.append(ifname)
                _wireguard_link(names[side], ifname, backend)
                key_file = directory / f"{side}.key"
                key_file.touch(mode=0o600)
                key_file.write_text(keys[side][0] + "\n")
                argv = ["wg", "set", ifname, "private-key", str(key_file), "listen-port", str(port)]
                argv += ["peer", keys[other][1], "allowed-ips", f"{subnet}.{3 - host}/32"]
                if peer_ip:
                    argv += ["endpoint", f"{peer_ip}:{port}"]
                ns.ns_exec(names[side], argv)
                ns.ip(names[side], "address", "add", f"{subnet}.{host}/24", "dev", ifname)
                ns.ip(names[side], "link", "set", ifname, "up")
        yield names
    finally:
        for ifname in links:
            socket_path(ifname).unlink(missing_ok=True)  # ends that wireguard-go
        for name in names.values():
            ns.kill_processes_in(name)
            ns.delete_netns(name)


def _transfer(names: dict[str, str], address: str, megabytes: int) -> float:
    """Mbit/s of one TCP transfer of ``megabytes`` from "a" to ``address`` in "b"."""
    receiver = subprocess.Popen(
        ns.exec_argv(names["b"], [PYTHON, "-c", RECEIVER, address, "5201"]),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        if receiver.stdout.readline().strip() != "ready":
            raise RuntimeError("receiver did not start")
        sender = [PYTHON, "-c", SENDER, address, "5201", str(megabytes)]
        ns.ns_exec(names["a"], sender, timeout=300)
        line, _ = receiver.communicate(timeout=300)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    total, elapsed = line.split()
    return int(total) * 8 / float(elapsed) / 1e6


def throughput(repeats: int = TRANSFER_REPEATS) -> dict[str, object]:
    measured: dict[str, list[float]] = {backend: [] for backend in TUNNELS}
    with (
        tempfile.TemporaryDirectory(prefix="nordwgd-bench-uml-") as tmp,
        _tunnels(Path(tmp)) as names,
    ):
        for _ in range(repeats):
            for backend, (subnet, _port, megabytes) in TUNNELS.items():
                measured[backend].append(_transfer(names, f"{subnet}.2", megabytes))
    kernel, userspace = (statistics.median(measured[b]) for b in ("kernel", "userspace"))
    result: dict[str, object] = {
        "name": "throughput",
        "transfer_mb": {backend: mb for backend, (_s, _p, mb) in TUNNELS.items()},
        "repeats": repeats,
        "kernel_mbit_s_median": round(kernel, 1),
        "wireguard_go_mbit_s_median": round(userspace, 1),
        "ratio": round(kernel / userspace, 2),
        "kernel_mbit_s_all": [round(v, 1) for v in measured["kernel"]],
        "wireguard_go_mbit_s_all": [round(v, 1) for v in measured["userspace"]],
    }
    print(
        f"throughput: kernel {result['kernel_mbit_s_median']} Mbit/s, wireguard-go "
        f"{result['wireguard_go_mbit_s_median']} Mbit/s, ratio {result['ratio']} "
        f"(median of {repeats})"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="connects per side (default 5)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    results = {
        "connect_kernel": bench_connect.run(args.runs, backend="kernel"),
        "throughput": throughput(),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
