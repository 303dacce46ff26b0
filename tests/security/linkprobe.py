"""Link-level packets a root process on the host can send: DHCP from the client ports and
neighbour solicitations carrying a payload, to any address (run with ``python -m``).

The kill switch lets DHCP and neighbour discovery through only in their narrow on-link shape;
these packets try the other shapes. Each spec is a dict; the answer for each is "sent" or the
error the kernel gave (a firewall drop on output is "error: Operation not permitted").
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

PAYLOAD = b"nordwgd-link-probe"
NEIGHBOR_SOLICIT = 135
_TENTATIVE = 0x40  # IFA_F_TENTATIVE


def link_local_address(device: str, timeout: float = 5.0) -> str:
    """The device's IPv6 link-local address (from /proc/net/if_inet6), once duplicate address
    detection has finished with it (a tentative address cannot be bound)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw, _index, _prefix, scope, flags, name = line.split()
            if name == device and scope == "20" and not int(flags, 16) & _TENTATIVE:
                return ":".join(raw[i : i + 4] for i in range(0, 32, 4))
        if time.monotonic() > deadline:
            raise RuntimeError(f"{device} has no usable IPv6 link-local address")
        time.sleep(0.05)


def _udp(spec: dict[str, Any]) -> None:
    family = socket.AF_INET6 if ":" in spec["host"] else socket.AF_INET
    device: str = spec["device"]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        if family == socket.AF_INET:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.bind(("0.0.0.0", spec["sport"]))
            sock.sendto(PAYLOAD, (spec["host"], spec["port"]))
            return
        index = socket.if_nametoindex(device)
        source = link_local_address(device) if spec.get("link_local_source") else "::"
        sock.bind((source, spec["sport"], 0, index if source != "::" else 0))
        scope = index if spec["host"].startswith(("fe80:", "ff02:")) else 0
        sock.sendto(PAYLOAD, (spec["host"], spec["port"], 0, scope))


def _neighbour_solicitation(spec: dict[str, Any]) -> None:
    device: str = spec["device"]
    index = socket.if_nametoindex(device)
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        target = socket.inet_pton(socket.AF_INET6, spec.get("target", spec["host"]))
        # type, code, checksum (the kernel fills it in), reserved, target, then the payload
        message = struct.pack("!BBHI", NEIGHBOR_SOLICIT, 0, 0, 0) + target + PAYLOAD
        scope = index if spec["host"].startswith(("fe80:", "ff02:")) else 0
        sock.sendto(message, (spec["host"], 0, 0, scope))


def probe(spec: dict[str, Any]) -> str:
    try:
        if spec["kind"] == "udp":
            _udp(spec)
        elif spec["kind"] == "ns":
            _neighbour_solicitation(spec)
        else:
            return f"error: unknown kind {spec['kind']}"
    except OSError as error:
        return "error: " + (error.strerror or type(error).__name__)
    return "sent"


if __name__ == "__main__":
    print(json.dumps([probe(spec) for spec in json.loads(sys.argv[1])]))
