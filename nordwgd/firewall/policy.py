"""The kill-switch policy: a value derived from the connection state, nothing else.

``policy_for_state`` is the single place that decides what each state lets through (see
docs/security.md). The renderers turn the value into rules without adding decisions of their own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from functools import cached_property
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    collapse_addresses,
    ip_network,
)
from typing import Literal

from nordwgd.errors import InvalidArgument
from nordwgd.model import Endpoint, IPAddress, IPNetwork
from nordwgd.split.bridges import check_patterns

STATES = ("disconnected", "connecting", "connected", "reconnecting", "disconnecting", "error")

Blocking = Literal["open", "blocked"]

# What allow_lan may open: never a public range.
LAN_RANGES: tuple[IPNetwork, ...] = (
    ip_network("10.0.0.0/8"),  # RFC 1918
    ip_network("172.16.0.0/12"),  # RFC 1918
    ip_network("192.168.0.0/16"),  # RFC 1918
    ip_network("169.254.0.0/16"),  # IPv4 link-local
    ip_network("224.0.0.0/4"),  # IPv4 multicast
    ip_network("fe80::/10"),  # IPv6 link-local
    ip_network("fc00::/7"),  # IPv6 unique local (the IPv6 counterpart of RFC 1918)
    ip_network("ff00::/8"),  # IPv6 multicast
)

DNS_PORTS = (53, 853)  # plain DNS, DNS over TLS / QUIC
FWMARK_MAX = 0xFFFFFFFF
IFNAME_MAX = 15  # IFNAMSIZ - 1


@dataclass(frozen=True)
class FirewallPolicy:
    """Everything the kill-switch rules depend on. Two equal policies render the same rules.

    ``block`` False means no table at all (traffic is open). Every address list is sorted and
    collapsed by ``policy_for_state`` so that equal intents give equal values and digests.
    """

    state: str
    block: bool
    fwmark: int = 0
    endpoint: Endpoint | None = None  # the WireGuard server; reachable only with ``fwmark``
    api_addresses: tuple[IPAddress, ...] = ()  # reachable on TCP ``api_port`` only with ``fwmark``
    api_port: int = 443
    tunnel_interface: str | None = None  # everything may leave through it (IPv6 if ipv6_tunnel)
    tunnel_dns: tuple[IPAddress, ...] = ()  # the only resolvers, and only through the tunnel
    lan: tuple[IPNetwork, ...] = ()  # allowed both ways (allow_lan), except DNS
    ipv6_tunnel: bool = False
    forward_from: tuple[IPNetwork, ...] = ()  # gateway clients, forwarded only into the tunnel
    # split tunnelling (nordwgd/split): connections with this conntrack mark (0: none) leave
    # outside the tunnel; local bridges (name patterns) are forwarded only into the tunnel
    excluded_ct_mark: int = field(default=0, repr=False)
    bridges: tuple[str, ...] = field(default=(), repr=False)

    @property
    def blocking(self) -> Blocking:
        return "blocked" if self.block else "open"

    @cached_property
    def digest(self) -> str:
        """A short stable fingerprint, stored in the applied rules so that they can be verified."""
        # the dataclass repr lists every field in order, and ipaddress reprs are canonical;
        # the split fields join it only when set, so that policies without them keep their digest
        split = (
            f" {self.excluded_ct_mark} {self.bridges}"
            if self.excluded_ct_mark or self.bridges
            else ""
        )
        return hashlib.sha256((repr(self) + split).encode()).hexdigest()[:16]


def policy_for_state(
    state: str,
    *,
    lockdown: bool,
    allow_lan: bool,
    lan: tuple[IPNetwork, ...],
    endpoint: Endpoint | None,
    api_addresses: tuple[IPAddress, ...],
    api_port: int,
    fwmark: int,
    tunnel_interface: str | None,
    tunnel_dns: tuple[IPAddress, ...],
    ipv6_tunnel: bool,
    forward_from: tuple[IPNetwork, ...] = (),
    excluded_ct_mark: int = 0,
    bridges: tuple[str, ...] = (),
) -> FirewallPolicy:
    """What the firewall lets through in ``state``. Raises InvalidArgument for bad inputs."""
    if state not in STATES:
        raise InvalidArgument(f"firewall: unknown state {state!r} (expected one of {STATES})")
    if not 0 < fwmark <= FWMARK_MAX:
        raise InvalidArgument(f"firewall: fwmark {fwmark} is not in 1..{FWMARK_MAX}")
    if not 0 < api_port < 65536:
        raise InvalidArgument(f"firewall: api_port {api_port} is not a TCP port")
    if endpoint is not None and not 0 < endpoint.port < 65536:
        raise InvalidArgument(f"firewall: endpoint port {endpoint.port} is not a UDP port")
    if tunnel_interface is not None:
        _check_ifname(tunnel_interface)
    lan_networks = _lan_networks(lan, "lan") if allow_lan else ()
    forward_networks = _lan_networks(forward_from, "forward_from")

    if state == "disconnected" and not lockdown:
        return FirewallPolicy(state=state, block=False)

    base = FirewallPolicy(
        state=state,
        block=True,
        fwmark=fwmark,
        api_addresses=_sorted_addresses(api_addresses),
        api_port=api_port,
        lan=lan_networks,
        forward_from=forward_networks,
        excluded_ct_mark=excluded_ct_mark,
        bridges=check_patterns(bridges),
    )
    if state in ("connecting", "reconnecting"):
        return replace(base, endpoint=endpoint)
    if state == "connected":
        if tunnel_interface is None:
            raise InvalidArgument("firewall: connected needs the tunnel interface")
        if endpoint is None:
            raise InvalidArgument("firewall: connected needs the server endpoint")
        return replace(
            base,
            endpoint=endpoint,
            tunnel_interface=tunnel_interface,
            tunnel_dns=_sorted_addresses(tunnel_dns),
            ipv6_tunnel=ipv6_tunnel,
        )
    if state in ("error", "disconnected"):  # disconnected here means lockdown: as error
        return base
    return replace(base, api_addresses=())  # disconnecting: nothing but the basics


def _check_ifname(name: str) -> None:
    if not name or len(name) > IFNAME_MAX or any(c in name for c in "/ \t\n\"'\\"):
        raise InvalidArgument(f"firewall: {name!r} is not a valid interface name")


def _sorted_addresses(addresses: tuple[IPAddress, ...]) -> tuple[IPAddress, ...]:
    v4 = sorted({a for a in addresses if isinstance(a, IPv4Address)})
    v6 = sorted({a for a in addresses if isinstance(a, IPv6Address)})
    return (*v4, *v6)


def _lan_networks(networks: tuple[IPNetwork, ...], key: str) -> tuple[IPNetwork, ...]:
    for network in networks:
        if not any(
            network.version == allowed.version and network.subnet_of(allowed)  # type: ignore[arg-type]
            for allowed in LAN_RANGES
        ):
            raise InvalidArgument(
                f"firewall: {key}: {network} is not a private, link-local or multicast range"
            )
    v4 = list(collapse_addresses(n for n in networks if isinstance(n, IPv4Network)))
    v6 = list(collapse_addresses(n for n in networks if isinstance(n, IPv6Network)))
    return (*v4, *v6)
