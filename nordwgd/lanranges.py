"""The local ranges that AllowLan opens: the one list behind the config check, the firewall
policy, the D-Bus API's promise and docs/security.md.

Nothing here is a public range: these addresses never leave the local site, so letting them
bypass the tunnel tells the Internet nothing. The lists follow what Mullvad's app allows for
"local network sharing".
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

from nordwgd.model import IPNetwork

# Unicast ranges of the local site: allowed both ways.
LAN_NETWORKS: tuple[IPNetwork, ...] = (
    IPv4Network("10.0.0.0/8"),  # RFC 1918
    IPv4Network("172.16.0.0/12"),  # RFC 1918
    IPv4Network("192.168.0.0/16"),  # RFC 1918
    IPv4Network("169.254.0.0/16"),  # IPv4 link-local
    IPv6Network("fe80::/10"),  # IPv6 link-local
    IPv6Network("fc00::/7"),  # IPv6 unique local, the IPv6 counterpart of RFC 1918
)

# Destinations that routers do not forward off the local site (or only within it): allowed
# out. A packet never comes *from* one of these, so they add nothing to the input side.
LAN_MULTICAST: tuple[IPNetwork, ...] = (
    IPv4Network("224.0.0.0/24"),  # local network control block (mDNS, routing protocols)
    IPv4Network("239.0.0.0/8"),  # administratively scoped (SSDP's 239.255.255.250)
    IPv4Network("255.255.255.255/32"),  # limited broadcast
    IPv6Network("ff01::/16"),  # interface-local multicast
    IPv6Network("ff02::/16"),  # link-local multicast
    IPv6Network("ff03::/16"),  # realm-local multicast
    IPv6Network("ff04::/16"),  # admin-local multicast
    IPv6Network("ff05::/16"),  # site-local multicast
)

# What AllowLan opens when `network.lan` names nothing narrower.
LAN_RANGES: tuple[IPNetwork, ...] = (*LAN_NETWORKS, *LAN_MULTICAST)


def within(network: IPNetwork, ranges: tuple[IPNetwork, ...]) -> bool:
    """Whether ``network`` lies wholly inside one of ``ranges``."""
    return any(
        (
            isinstance(network, IPv4Network)
            and isinstance(allowed, IPv4Network)
            and network.subnet_of(allowed)
        )
        or (
            isinstance(network, IPv6Network)
            and isinstance(allowed, IPv6Network)
            and network.subnet_of(allowed)
        )
        for allowed in ranges
    )


def describe(ranges: tuple[IPNetwork, ...]) -> str:
    """The ranges as one line, for error messages."""
    return ", ".join(map(str, ranges))
