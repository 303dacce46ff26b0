"""Counts every packet from the host that the kill switch should never let out.

An nftables ``netdev`` ingress chain on the router's end of the host's uplink lets pass
uncounted only what nordwgd may always send, and only in the narrow shape the kill switch
allows it (docs/security.md): UDP to a fleet station's WireGuard port, TCP to a pinned API
address, ARP, DHCPv4 requests to the broadcast address, DHCPv6 requests from a link-local
address to the DHCPv6 servers' multicast groups, neighbour discovery with hop limit 255 to
link-local or link-scope multicast addresses, and multicast listener reports to link-scope
groups (the kernel sends those on its own when a link comes up). Everything else is counted,
its destination and protocol remembered in dynamic sets with counters: a DHCP packet to a
unicast address, DHCPv6 or neighbour discovery to a global address, any other ICMPv6.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nordwgd.model import WIREGUARD_PORT
from nordwgd.testing.netns import nft, run

TABLE = "nwgt_leakmon"
_NDP = "nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert"
_LINK_SCOPE = "fe80::/10, ff02::/16"  # link-local unicast and link-scope multicast
_LISTENER_REPORTS = "mld-listener-report, mld-listener-done, mld2-listener-report"
_PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp"}


@dataclass(frozen=True)
class Leak:
    destination: str  # IP address, or "non-ip"
    protocol: str  # "tcp", "udp", "icmp", ... or the number when unnamed
    packets: int


class LeakMonitor:
    def __init__(
        self,
        netns: str,
        device: str,
        stations: Sequence[str],
        api_addresses: Sequence[str],
        api_port: int = 443,
        tcp_allowed: Sequence[tuple[str, int]] = (),
    ) -> None:
        self.netns = netns
        self.device = device
        self.stations = tuple(stations)
        self.api_addresses = tuple(api_addresses)
        self.api_port = api_port
        self.tcp_allowed = tuple(tcp_allowed)  # more (address, TCP port) nordwgd may reach

    def ruleset(self) -> str:
        stations = ", ".join(self.stations) or "0.0.0.0"
        api = ", ".join(self.api_addresses) or "0.0.0.0"
        extra = "".join(
            f"\n        ip daddr {address} tcp dport {port} return"
            for address, port in self.tcp_allowed
        )
        return f"""
table netdev {TABLE}
delete table netdev {TABLE}
table netdev {TABLE} {{
    counter leaked {{ }}
    set stations {{ type ipv4_addr; elements = {{ {stations} }}; }}
    set api {{ type ipv4_addr; elements = {{ {api} }}; }}
    set leaks4 {{ type ipv4_addr . inet_proto; flags dynamic; size 65535; counter; }}
    set leaks6 {{ type ipv6_addr . inet_proto; flags dynamic; size 65535; counter; }}
    chain ingress {{
        type filter hook ingress device "{self.device}" priority 0; policy accept;
        ether type arp return
        ip daddr 255.255.255.255 udp sport 68 udp dport 67 return
        ip daddr @stations udp dport {WIREGUARD_PORT} return
        ip daddr @api tcp dport {self.api_port} return{extra}
        ip6 saddr fe80::/10 ip6 daddr {{ ff02::1:2, ff05::1:3 }} udp sport 546 udp dport 547 return
        ip6 hoplimit 255 ip6 daddr {{ {_LINK_SCOPE} }} icmpv6 type {{ {_NDP} }} return
        ip6 daddr ff02::/16 icmpv6 type {{ {_LISTENER_REPORTS} }} return
        meta protocol ip update @leaks4 {{ ip daddr . meta l4proto }} counter name "leaked" return
        meta protocol ip6 update @leaks6 {{ ip6 daddr . meta l4proto }} counter name "leaked" return
        counter name "leaked"
    }}
}}
"""

    def install(self) -> None:
        nft(self.netns, self.ruleset())

    def reset(self) -> None:
        nft(
            self.netns,
            f"reset counter netdev {TABLE} leaked\n"
            f"flush set netdev {TABLE} leaks4\nflush set netdev {TABLE} leaks6\n",
        )

    def count(self) -> int:
        """Packets counted since the last reset."""
        for item in self._list(["counter", "netdev", TABLE, "leaked"]):
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise RuntimeError("the leak monitor's counter is missing")

    def leaks(self) -> list[Leak]:
        """What leaked since the last reset, by destination and protocol (IP packets only)."""
        found: list[Leak] = []
        for name in ("leaks4", "leaks6"):
            for item in self._list(["set", "netdev", TABLE, name]):
                for element in item.get("set", {}).get("elem", []):
                    found.append(_leak(element))
        counted = sum(leak.packets for leak in found)
        other = self.count() - counted
        if other > 0:
            found.append(Leak("non-ip", "", other))
        return found

    def _list(self, what: list[str]) -> list[dict[str, Any]]:
        out = run(["ip", "netns", "exec", self.netns, "nft", "-j", "list", *what]).stdout
        items: list[dict[str, Any]] = json.loads(out)["nftables"]
        return items


def _leak(element: dict[str, Any]) -> Leak:
    # {"elem": {"val": {"concat": [addr, proto]}, "counter": {"packets": n, ...}}}
    inner = element.get("elem", element)
    assert isinstance(inner, dict)
    value = inner.get("val", {})
    address, protocol = value["concat"] if isinstance(value, dict) else (str(value), "")
    counter = inner.get("counter", {})
    packets = int(counter.get("packets", 0)) if isinstance(counter, dict) else 0
    return Leak(str(address), _protocol_name(protocol), packets)


def _protocol_name(protocol: object) -> str:
    if isinstance(protocol, int):
        return _PROTOCOLS.get(protocol, str(protocol))
    return str(protocol)
