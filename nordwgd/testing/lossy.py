"""A lossy, jittery path for WireGuard in the test world (the kernel here has no netem).

``python -m nordwgd.testing.lossy --listen ROUTER_LAN:PORT --to STATION:51820 --loss 0.05
--delay 0.05 --jitter 0.05`` runs in the router namespace. The world sends the host's
WireGuard datagrams for STATION there (DNAT); each one, in either direction, is dropped with
probability ``loss`` or passed on after ``delay`` plus or minus up to ``jitter`` seconds
(uniformly, so datagrams may be reordered, as with netem). Replies leave through the socket the
client's datagrams came in on, so connection tracking gives them STATION's address again.
Prints "ready" once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import sys
from collections.abc import Callable


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


class _Side(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, tuple[str, int]], None]) -> None:
        self._on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._on_datagram(data, addr)


async def relay(
    listen: tuple[str, int], to: tuple[str, int], loss: float, delay: float, jitter: float
) -> None:
    loop = asyncio.get_running_loop()
    chance = random.Random()  # noqa: S311 (simulated loss, not security)
    client: list[tuple[str, int]] = []

    def later(send: Callable[[], None]) -> None:
        if chance.random() < loss:
            return
        loop.call_later(max(0.0, delay + chance.uniform(-jitter, jitter)), send)

    def from_client(data: bytes, addr: tuple[str, int]) -> None:
        client[:] = [addr]
        later(lambda: upstream.sendto(data, to))

    def from_server(data: bytes, addr: tuple[str, int]) -> None:
        if addr == to and client:
            peer = client[0]
            later(lambda: downstream.sendto(data, peer))

    downstream, _ = await loop.create_datagram_endpoint(
        lambda: _Side(from_client), local_addr=listen, family=socket.AF_INET
    )
    upstream, _ = await loop.create_datagram_endpoint(
        lambda: _Side(from_server), local_addr=("0.0.0.0", 0), family=socket.AF_INET
    )
    print("ready", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_address, required=True)
    parser.add_argument("--to", type=_address, required=True)
    parser.add_argument("--loss", type=float, default=0.05)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--jitter", type=float, default=0.05)
    args = parser.parse_args(argv)
    try:
        asyncio.run(relay(args.listen, args.to, args.loss, args.delay, args.jitter))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
