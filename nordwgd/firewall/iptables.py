"""The same policy as the nft table, rendered for iptables-restore / ip6tables-restore.

Used where nftables does not work. Rules live in nordwgd's own chains (NORDWGD-INPUT, ...)
jumped to from the top of the built-in chains; ``--noflush`` leaves everyone else's rules alone,
and each family is one restore call (one commit per table).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Literal

from nordwgd.firewall.policy import (
    DHCPV4_BROADCAST,
    DHCPV4_CLIENT_PORT,
    DHCPV4_SERVER_PORT,
    DHCPV6_CLIENT_PORT,
    DHCPV6_SERVER_PORT,
    DHCPV6_SERVERS,
    DNS_PORTS,
    IPV6_LINK_LOCAL,
    IPV6_LINK_MULTICAST,
    NDP_HOP_LIMIT,
    FirewallPolicy,
)
from nordwgd.firewall.render import tag
from nordwgd.model import IPAddress

Family = Literal[4, 6]
_DNS_DROP = '-m comment --comment "dropped_dns" -j DROP'


@dataclass(frozen=True)
class Hook:
    table: str
    builtin: str
    chain: str


HOOKS = (
    Hook("filter", "INPUT", "NORDWGD-INPUT"),
    Hook("filter", "OUTPUT", "NORDWGD-OUTPUT"),
    Hook("filter", "FORWARD", "NORDWGD-FORWARD"),
    Hook("nat", "POSTROUTING", "NORDWGD-POSTROUTING"),
    Hook("nat", "PREROUTING", "NORDWGD-PREROUTING"),
)


@dataclass(frozen=True)
class SavedState:
    """What iptables-save shows of nordwgd: its chains, and which built-ins jump to them."""

    chains: frozenset[tuple[str, str]]  # (table, chain)
    hooked: frozenset[Hook]
    text: str


def parse_save(text: str) -> SavedState:
    chains: set[tuple[str, str]] = set()
    hooked: set[Hook] = set()
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":NORDWGD-"):
            chains.add((table, line[1:].split()[0]))
        else:
            for hook in HOOKS:
                if hook.table == table and line.strip() == f"-A {hook.builtin} -j {hook.chain}":
                    hooked.add(hook)
    return SavedState(frozenset(chains), frozenset(hooked), text)


def render_restore(policy: FirewallPolicy, family: Family, saved: SavedState) -> str:
    """iptables-restore --noflush input that makes ``family`` enforce ``policy``."""
    nat_needed = policy.block and bool(
        _forward_sources(policy, family) or _port_target(policy, family)
    )
    lines: list[str] = []
    for table in ("filter", "nat"):
        hooks = [h for h in HOOKS if h.table == table]
        present = any((table, h.chain) in saved.chains for h in hooks)
        wanted = policy.block and (table == "filter" or nat_needed)
        if not wanted and not present:
            continue
        lines.append(f"*{table}")
        lines.extend(f":{h.chain} - [0:0]" for h in hooks)  # declaring flushes it
        if wanted:
            lines.extend(_rules(policy, family, table))
            lines.extend(f"-I {h.builtin} 1 -j {h.chain}" for h in hooks if h not in saved.hooked)
        else:
            lines.extend(f"-D {h.builtin} -j {h.chain}" for h in hooks if h in saved.hooked)
            lines.extend(f"-X {h.chain}" for h in hooks)
        lines.append("COMMIT")
    return "\n".join(lines) + "\n" if lines else ""


def verify_saved(policy: FirewallPolicy, saved: SavedState) -> str | None:
    """None when ``saved`` shows ``policy`` in force, else what is wrong."""
    if not policy.block:
        if saved.chains or saved.hooked:
            return f"nordwgd chains are still present: {sorted(c for _, c in saved.chains)}"
        return None
    marker = f'--comment "{tag(policy)}"'
    for hook in HOOKS[:3]:
        if hook not in saved.hooked:
            return f"{hook.builtin} does not jump to {hook.chain}"
        if not any(
            line.startswith(f"-A {hook.chain} ") and marker in line
            for line in saved.text.splitlines()
        ):
            return f"{hook.chain} does not carry the policy marker {tag(policy)!r}"
    return None


def _rules(policy: FirewallPolicy, family: Family, table: str) -> list[str]:
    if table == "nat":
        tunnel = policy.tunnel_interface
        rules = [
            f"-A NORDWGD-POSTROUTING -o {tunnel} -s {net} -j MASQUERADE"
            for net in _forward_sources(policy, family)
        ]
        target = _port_target(policy, family)
        if target is not None:
            address, port = target
            to = f"[{address}]:{port}" if family == 6 else f"{address}:{port}"
            rules.extend(
                f"-A NORDWGD-PREROUTING -i {tunnel} -p {proto} -m {proto} "
                f"--dport {policy.forwarded_port} -j DNAT --to-destination {to}"
                for proto in ("tcp", "udp")
            )
        return rules
    return [*_input(policy, family), *_output(policy, family), *_forward(policy, family)]


def _input(policy: FirewallPolicy, family: Family) -> list[str]:
    chain = "-A NORDWGD-INPUT"
    rules = [f'{chain} -i lo -m comment --comment "{tag(policy)}" -j ACCEPT']
    # CVE-2019-14899: the tunnel address answers only through the tunnel (see the nft template)
    rules.extend(
        f"{chain} ! -i {policy.tunnel_interface} -d {address} "
        '-m comment --comment "dropped_input" -j DROP'
        for address in policy.tunnel_addresses
        if policy.tunnel_interface and _version(address) == family
    )
    rules.append(f"{chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    hop_limit = f"-m hl --hl-eq {NDP_HOP_LIMIT}"
    if family == 4:
        rules.append(
            f"{chain} -p udp -m udp --sport {DHCPV4_SERVER_PORT} --dport {DHCPV4_CLIENT_PORT} "
            "-j ACCEPT"
        )
    else:
        rules.append(
            f"{chain} -s {IPV6_LINK_LOCAL} -d {IPV6_LINK_LOCAL} -p udp -m udp "
            f"--sport {DHCPV6_SERVER_PORT} --dport {DHCPV6_CLIENT_PORT} -j ACCEPT"
        )
        rules.extend(
            f"{chain} -s {IPV6_LINK_LOCAL} -p ipv6-icmp -m icmp6 --icmpv6-type {kind} "
            f"{hop_limit} -j ACCEPT"
            for kind in ("router-advertisement", "neighbour-solicitation")
        )
        rules.append(
            f"{chain} -p ipv6-icmp -m icmp6 --icmpv6-type neighbour-advertisement "
            f"{hop_limit} -j ACCEPT"
        )
    tunnel = policy.tunnel_interface if _tunnel_carries(policy, family) else None
    if tunnel and policy.forwarded_port:
        rules.extend(
            f"{chain} -i {tunnel} -p {proto} -m {proto} --dport {policy.forwarded_port} -j ACCEPT"
            for proto in ("tcp", "udp")
        )
    rules.extend(f"{chain} -s {net} -j ACCEPT" for net in _lan(policy, family))
    rules.append(f'{chain} -m comment --comment "dropped_input" -j DROP')
    return rules


def _output(policy: FirewallPolicy, family: Family) -> list[str]:
    chain = "-A NORDWGD-OUTPUT"
    mark = f"-m mark --mark 0x{policy.fwmark:x}"
    dports = "-m multiport --dports " + ",".join(str(p) for p in DNS_PORTS)
    rules = [f'{chain} -o lo -m comment --comment "{tag(policy)}" -j ACCEPT']
    # The basics stay on the link (see the nft template for why).
    if family == 4:
        rules.append(
            f"{chain} -d {DHCPV4_BROADCAST} -p udp -m udp --sport {DHCPV4_CLIENT_PORT} "
            f"--dport {DHCPV4_SERVER_PORT} -j ACCEPT"
        )
    else:
        rules.extend(
            f"{chain} -s {IPV6_LINK_LOCAL} -d {server} -p udp -m udp "
            f"--sport {DHCPV6_CLIENT_PORT} --dport {DHCPV6_SERVER_PORT} -j ACCEPT"
            for server in DHCPV6_SERVERS
        )
        rules.extend(
            f"{chain} -d {destination} -p ipv6-icmp -m icmp6 --icmpv6-type {kind} "
            f"-m hl --hl-eq {NDP_HOP_LIMIT} -j ACCEPT"
            for destination in (IPV6_LINK_LOCAL, IPV6_LINK_MULTICAST)
            for kind in ("router-solicitation", "neighbour-solicitation", "neighbour-advertisement")
        )
    endpoint = policy.endpoint
    if endpoint is not None and _version(endpoint.address) == family:
        rules.append(
            f"{chain} -d {endpoint.address} -p udp -m udp --dport {endpoint.port} {mark} -j ACCEPT"
        )
    rules.extend(
        f"{chain} -d {address} -p tcp -m tcp --dport {policy.api_port} {mark} -j ACCEPT"
        for address in policy.api_addresses
        if _version(address) == family
    )
    rules.extend(
        f"{chain} -d {address} -p tcp -m tcp --dport {port} {mark} -j ACCEPT"
        for address, port in policy.api_extra
        if _version(address) == family
    )
    tunnel = policy.tunnel_interface if _tunnel_carries(policy, family) else None
    if tunnel:
        rules.extend(
            f"{chain} -o {tunnel} -d {address} -p {proto} {dports} -j ACCEPT"
            for address in policy.tunnel_dns
            if _version(address) == family
            for proto in ("udp", "tcp")
        )
    rules.extend(f"{chain} -p {proto} {dports} {_DNS_DROP}" for proto in ("udp", "tcp"))
    if tunnel:
        rules.append(f"{chain} -o {tunnel} -j ACCEPT")
    rules.extend(f"{chain} -d {net} -j ACCEPT" for net in _lan(policy, family))
    rules.append(f'{chain} -m comment --comment "dropped_output" -j DROP')
    return rules


def _forward(policy: FirewallPolicy, family: Family) -> list[str]:
    chain = "-A NORDWGD-FORWARD"
    dports = "-m multiport --dports " + ",".join(str(p) for p in DNS_PORTS)
    rules = [f'{chain} -m conntrack --ctstate INVALID -m comment --comment "{tag(policy)}" -j DROP']
    tunnel = policy.tunnel_interface
    target = _port_target(policy, family)
    if target is not None:
        # Only connections that the DNAT above sent on, and their replies (as the nft table).
        address, port = target
        rules.extend(
            f"{chain} -i {tunnel} -d {address} -p {proto} -m {proto} --dport {port} "
            "-m conntrack --ctstate DNAT -j ACCEPT"
            for proto in ("tcp", "udp")
        )
        rules.append(
            f"{chain} -o {tunnel} -s {address} -m conntrack --ctstate DNAT "
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        )
    for net in _forward_sources(policy, family):
        rules.append(
            f"{chain} -i {tunnel} ! -o {tunnel} -d {net} "
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        )
        rules.extend(
            f"{chain} ! -i {tunnel} -o {tunnel} -s {net} -d {address} -p {proto} {dports} -j ACCEPT"
            for address in policy.tunnel_dns
            if _version(address) == family
            for proto in ("udp", "tcp")
        )
        rules.extend(
            f"{chain} ! -i {tunnel} -s {net} -p {proto} {dports} {_DNS_DROP}"
            for proto in ("udp", "tcp")
        )
        rules.append(f"{chain} ! -i {tunnel} -o {tunnel} -s {net} -j ACCEPT")
    rules.append(f'{chain} -m comment --comment "dropped_forward" -j DROP')
    return rules


def _tunnel_carries(policy: FirewallPolicy, family: Family) -> bool:
    return policy.tunnel_interface is not None and (family == 4 or policy.ipv6_tunnel)


def _forward_sources(policy: FirewallPolicy, family: Family) -> list[IPv4Network | IPv6Network]:
    if not _tunnel_carries(policy, family):
        return []
    return [n for n in policy.forward_from if n.version == family]


def _port_target(policy: FirewallPolicy, family: Family) -> tuple[IPAddress, int] | None:
    """Where the forwarded port is sent on to (gateway mode), if that is in ``family``."""
    target = policy.forward_port_to
    if target is None or not policy.forwarded_port or not _tunnel_carries(policy, family):
        return None
    return target if _version(target[0]) == family else None


def _lan(policy: FirewallPolicy, family: Family) -> list[IPv4Network | IPv6Network]:
    return [n for n in policy.lan if n.version == family]


def _version(address: IPv4Address | IPv6Address) -> int:
    return 4 if isinstance(address, IPv4Address) else 6
