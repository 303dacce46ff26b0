"""Runs nordwgd's DNS code inside a test container that has the real systemd-resolved.

Each command prints one JSON line on stdout. ``--hold`` keeps the process alive after that line
until stdin closes, so the test can kill it with the change still applied (a crashed daemon).

    python tests/resolved_driver.py apply --runtime-dir DIR --link IF --server IP [...] [--hold]
    python tests/resolved_driver.py undo --runtime-dir DIR
    python tests/resolved_driver.py recover --runtime-dir DIR [--interface IF]
    python tests/resolved_driver.py up --runtime-dir DIR --interface IF --endpoint IP \
        --server IP [...] [--hold]

``apply``/``undo`` drive ``nordwgd.dns`` on an existing link (the journal in ``--runtime-dir``);
``up``/``recover`` drive a whole ``Connection`` with the userspace WireGuard backend.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from dataclasses import replace
from ipaddress import IPv4Interface, ip_address, ip_network
from pathlib import Path
from typing import Any

from nordwgd import dns
from nordwgd.config import Config, NetworkConfig, PathsConfig
from nordwgd.connection import Connection
from nordwgd.model import Endpoint, Secret, TunnelParams
from nordwgd.runstate import Journal
from nordwgd.testing.fleet import generate_keypair
from nordwgd.wireguard import open_backend


def _config(runtime_dir: Path, interface: str) -> Config:
    network = replace(NetworkConfig(), interface=interface, backend="userspace")
    return Config(network=network, paths=PathsConfig(runtime_dir=runtime_dir))


async def _apply(args: argparse.Namespace) -> dict[str, Any]:
    mode = await dns.detect_mode()
    ifindex = socket.if_nametoindex(args.link)
    journal = await asyncio.to_thread(Journal.load, args.runtime_dir)
    servers = [ip_address(server) for server in args.server]
    await dns.apply(
        journal,
        mode=mode,
        ifindex=ifindex,
        ifname=args.link,
        servers=servers,
        resolv_conf=args.runtime_dir / "resolv.conf",
    )
    return {"mode": mode, "ifindex": ifindex, "steps": journal.steps}


async def _undo(args: argparse.Namespace) -> dict[str, Any]:
    journal = await asyncio.to_thread(Journal.load, args.runtime_dir)
    undone = []
    for step in reversed(list(journal.steps)):
        if step["step"] == "dns":
            await dns.undo(step)
            await asyncio.to_thread(journal.forget, step)
            undone.append(step)
    return {"undone": undone, "left": journal.steps}


async def _up(args: argparse.Namespace) -> dict[str, Any]:
    connection = Connection(
        _config(args.runtime_dir, args.interface), open_backend("userspace"), args.runtime_dir
    )
    private_key, _ = generate_keypair()
    _, peer_public_key = generate_keypair()
    params = TunnelParams(
        private_key=Secret(private_key),
        address=IPv4Interface("10.5.0.2/32"),
        peer_public_key=peer_public_key,
        endpoint=Endpoint(ip_address(args.endpoint)),
        allowed_ips=(ip_network("0.0.0.0/0"),),
        dns=tuple(ip_address(server) for server in args.server),
    )
    await connection.up(params)
    journal = await asyncio.to_thread(Journal.load, args.runtime_dir)
    return {"ifindex": connection.ifindex, "steps": journal.steps}


async def _recover(args: argparse.Namespace) -> dict[str, Any]:
    connection = Connection(
        _config(args.runtime_dir, args.interface), open_backend("userspace"), args.runtime_dir
    )
    await connection.recover()
    journal = await asyncio.to_thread(Journal.load, args.runtime_dir)
    return {"left": journal.steps}


COMMANDS = {"apply": _apply, "undo": _undo, "up": _up, "recover": _recover}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resolved_driver")
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--runtime-dir", type=Path, required=True)
    parser.add_argument("--link", help="apply: the existing link that gets the DNS servers")
    parser.add_argument("--interface", default="nordlynx", help="up/recover: the tunnel name")
    parser.add_argument("--endpoint", default="198.18.54.1")
    parser.add_argument("--server", action="append", default=[])
    parser.add_argument("--hold", action="store_true", help="stay alive until stdin closes")
    return parser


def main() -> int:
    args = _parser().parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    args.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    result = asyncio.run(COMMANDS[args.command](args))
    result["pid"] = os.getpid()
    print(json.dumps(result), flush=True)
    if args.hold:
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
