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
from nordwgd.lanranges import LAN_NETWORKS, LAN_RANGES, within
from nordwgd.model import Endpoint, IPAddress, IPNetwork
from nordwgd.split.bridges import check_patterns

STATES = ("disconnected", "connecting", "connected", "reconnecting", "disconnecting", "error")

Blocking = Literal["open", "blocked"]

# The basics of every blocking state (docs/security.md): the uplink may still get its
# addresses and find its neighbours, but only on the link itself, never to a routed address.
DHCPV4_CLIENT_PORT = 68
DHCPV4_SERVER_PORT = 67
DHCPV4_BROADCAST = IPv4Address("255.255.255.255")  # a client's requests go only here
DHCPV6_CLIENT_PORT = 546
DHCPV6_SERVER_PORT = 547
# All_DHCP_Relay_Agents_and_Servers (link scope) and All_DHCP_Servers (site scope), RFC 8415
DHCPV6_SERVERS = (IPv6Address("ff02::1:2"), IPv6Address("ff05::1:3"))
IPV6_LINK_LOCAL = IPv6Network("fe80::/10")
IPV6_LINK_MULTICAST = IPv6Network("ff02::/16")  # link scope: routers never forward it
NDP_HOP_LIMIT = 255  # RFC 4861: a receiver drops neighbour discovery with any other value

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
    # More (address, TCP port) the daemon reaches only with ``fwmark`` (PIA's servers)
    api_extra: tuple[tuple[IPAddress, int], ...] = field(default=(), repr=False)
    tunnel_interface: str | None = None  # everything may leave through it (IPv6 if ipv6_tunnel)
    tunnel_dns: tuple[IPAddress, ...] = ()  # the only resolvers, and only through the tunnel
    lan: tuple[IPNetwork, ...] = ()  # allowed both ways (allow_lan), except DNS
    # The tunnel's own addresses: reachable only through the tunnel (CVE-2019-14899)
    tunnel_addresses: tuple[IPAddress, ...] = ()
    ipv6_tunnel: bool = False
    forward_from: tuple[IPNetwork, ...] = ()  # gateway clients, forwarded only into the tunnel
    # port forwarding: the port let in from the tunnel only (TCP and UDP), and in gateway mode
    # the LAN host and port it is sent on to (DNAT)
    forwarded_port: int = field(default=0, repr=False)
    forward_port_to: tuple[IPAddress, int] | None = field(default=None, repr=False)
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
        # the split and provider fields join it only when set, so that policies without them
        # keep their digest
        split = (
            f" {self.excluded_ct_mark} {self.bridges}"
            if self.excluded_ct_mark or self.bridges
            else ""
        )
        extra = (self.api_extra, self.forwarded_port, self.forward_port_to)
        provider = f" {extra}" if extra != ((), 0, None) else ""
        return hashlib.sha256((repr(self) + split + provider).encode()).hexdigest()[:16]


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
    api_extra: tuple[tuple[IPAddress, int], ...] = (),
    forwarded_port: int = 0,
    forward_port_to: tuple[IPAddress, int] | None = None,
    excluded_ct_mark: int = 0,
    bridges: tuple[str, ...] = (),
    tunnel_addresses: tuple[IPAddress, ...] = (),
) -> FirewallPolicy:
    """What the firewall lets through in ``state``. Raises InvalidArgument for bad inputs.

    With ``allow_lan``, ``lan`` names the local networks to open; empty opens every range of
    ``nordwgd.lanranges.LAN_RANGES``. ``tunnel_addresses`` (connected only) are the addresses
    of the tunnel interface, which no other interface may reach.
    """
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
    for _, port in api_extra:
        if not 0 < port < 65536:
            raise InvalidArgument(f"firewall: api pinhole port {port} is not a TCP port")
    if not 0 <= forwarded_port < 65536:
        raise InvalidArgument(f"firewall: forwarded port {forwarded_port} is not a port")
    if forward_port_to is not None:
        _local_networks((ip_network(forward_port_to[0]),), LAN_NETWORKS, "port_forward.forward_to")
    lan_networks = _local_networks(lan or LAN_RANGES, LAN_RANGES, "lan") if allow_lan else ()
    forward_networks = _local_networks(forward_from, LAN_NETWORKS, "forward_from")

    if state == "disconnected" and not lockdown:
        return FirewallPolicy(state=state, block=False)

    base = FirewallPolicy(
        state=state,
        block=True,
        fwmark=fwmark,
        api_addresses=_sorted_addresses(api_addresses),
        api_port=api_port,
        api_extra=tuple(sorted(set(api_extra), key=lambda item: (item[0].version, item))),
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
            tunnel_addresses=_sorted_addresses(tunnel_addresses),
            forwarded_port=forwarded_port,
            forward_port_to=forward_port_to if forwarded_port else None,
        )
    if state in ("error", "disconnected"):  # disconnected here means lockdown: as error
        return base
    return replace(base, api_addresses=(), api_extra=())  # disconnecting: only the basics


def _check_ifname(name: str) -> None:
    if not name or len(name) > IFNAME_MAX or any(c in name for c in "/ \t\n\"'\\"):
        raise InvalidArgument(f"firewall: {name!r} is not a valid interface name")


def _sorted_addresses(addresses: tuple[IPAddress, ...]) -> tuple[IPAddress, ...]:
    v4 = sorted({a for a in addresses if isinstance(a, IPv4Address)})
    v6 = sorted({a for a in addresses if isinstance(a, IPv6Address)})
    return (*v4, *v6)


def _local_networks(
    networks: tuple[IPNetwork, ...], allowed: tuple[IPNetwork, ...], key: str
) -> tuple[IPNetwork, ...]:
    for network in networks:
        if not within(network, allowed):
            raise InvalidArgument(
                f"firewall: {key}: {network} is not a private, link-local or multicast range"
            )
    v4 = list(collapse_addresses(n for n in networks if isinstance(n, IPv4Network)))
    v6 = list(collapse_addresses(n for n in networks if isinstance(n, IPv6Network)))
    return (*v4, *v6)
