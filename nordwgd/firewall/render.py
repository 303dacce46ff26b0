"""Pure rendering of a FirewallPolicy into one nft script (templates/nordwgd.nft.j2).

The script replaces table ``inet nordwgd`` whole in one transaction; for an open policy it
only removes the table. Rendering makes no decisions: those live in ``policy.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING, Final

from nordwgd.firewall import policy as basics
from nordwgd.firewall.policy import DNS_PORTS, FirewallPolicy
from nordwgd.model import IPAddress, IPNetwork

if TYPE_CHECKING:
    import jinja2

TABLE_FAMILY: Final = "inet"
TABLE_NAME: Final = "nordwgd"
BASE_CHAINS: Final = ("input", "output", "forward")
# An open policy only removes the table. Declaring it first makes the delete safe when the
# table is absent. Kept out of the template so that a daemon that never blocks never loads jinja2.
_REMOVE_TABLE: Final = (
    f"table {TABLE_FAMILY} {TABLE_NAME} {{}}\ndelete table {TABLE_FAMILY} {TABLE_NAME}\n"
)


@cache
def _environment() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("nordwgd.firewall", "templates"),
        autoescape=False,  # noqa: S701 - renders nft syntax, not HTML; every value is typed
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@dataclass(frozen=True)
class _Set:
    name: str
    type: str
    elements: tuple[str, ...]


def tag(policy: FirewallPolicy) -> str:
    """The marker written into the rules; verification looks for it after applying."""
    return f"nordwgd {policy.state} {policy.digest}"


def render(policy: FirewallPolicy) -> str:
    """The nft script that makes the kernel enforce ``policy`` (one transaction)."""
    if not policy.block:
        return _REMOVE_TABLE
    sets = (
        _address_set("api_v4", policy.api_addresses, 4),
        _address_set("api_v6", policy.api_addresses, 6),
        _address_set("dns_v4", policy.tunnel_dns, 4),
        _address_set("dns_v6", policy.tunnel_dns, 6),
        _network_set("lan_v4", policy.lan, 4),
        _network_set("lan_v6", policy.lan, 6),
        _network_set("fwd_v4", policy.forward_from, 4),
        _network_set("fwd_v6", policy.forward_from, 6),
        _address_set("tun_v4", policy.tunnel_addresses, 4),
        _address_set("tun_v6", policy.tunnel_addresses, 6),
    )
    used = tuple(s for s in sets if s.elements)
    has = {s.name: bool(s.elements) for s in sets}
    forward_sets = [("ip", "fwd_v4")] if has["fwd_v4"] else []
    if has["fwd_v6"] and policy.ipv6_tunnel:
        forward_sets.append(("ip6", "fwd_v6"))
    endpoint_family = ""
    if policy.endpoint is not None:
        endpoint_family = "ip6" if isinstance(policy.endpoint.address, IPv6Address) else "ip"
    api_extra = [
        ("ip6" if address.version == 6 else "ip", str(address), port)
        for address, port in policy.api_extra
    ]
    port_to: dict[str, object] | None = None
    if policy.forward_port_to is not None:
        address, port = policy.forward_port_to
        port_to = {
            "family": "ip6" if address.version == 6 else "ip",
            "address": str(address),
            "port": port,
            "target": f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}",
        }
    template = _environment().get_template("nordwgd.nft.j2")
    return template.render(
        policy=policy,
        basics=basics,
        tag=tag(policy),
        sets=used,
        has=has,
        forward_sets=forward_sets,
        mark=f"0x{policy.fwmark:08x}",
        endpoint_family=endpoint_family,
        tunnel=_quote(policy.tunnel_interface) if policy.tunnel_interface else "",
        dns_ports=", ".join(str(port) for port in DNS_PORTS),
        split=_split_values(policy),
        api_extra=api_extra,
        port_to=port_to,
    )


def _split_values(policy: FirewallPolicy) -> dict[str, object]:
    """What the split_*.nft.j2 includes need: excluded apps' mark, local bridge patterns."""
    dns_v4 = [str(a) for a in policy.tunnel_dns if isinstance(a, IPv4Address)]
    dns_v6 = [str(a) for a in policy.tunnel_dns if isinstance(a, IPv6Address)]
    return {
        "excluded": f"0x{policy.excluded_ct_mark:08x}" if policy.excluded_ct_mark else "",
        "bridges": [_quote(pattern) for pattern in policy.bridges],
        "dns_v4": dns_v4[0] if dns_v4 else "",
        "dns_v6": dns_v6[0] if dns_v6 else "",
    }


def _quote(name: str) -> str:
    # json.dumps gives a double-quoted string; policy_for_state already refused quotes and spaces
    return json.dumps(name)


def _address_set(name: str, addresses: tuple[IPAddress, ...], version: int) -> _Set:
    kind = IPv4Address if version == 4 else IPv6Address
    return _Set(name, _set_type(version), tuple(str(a) for a in addresses if isinstance(a, kind)))


def _network_set(name: str, networks: tuple[IPNetwork, ...], version: int) -> _Set:
    kind = IPv4Network if version == 4 else IPv6Network
    return _Set(name, _set_type(version), tuple(str(n) for n in networks if isinstance(n, kind)))


def _set_type(version: int) -> str:
    return "ipv4_addr" if version == 4 else "ipv6_addr"
