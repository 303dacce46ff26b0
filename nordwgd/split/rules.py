"""The rules that take excluded apps around the tunnel: table ``inet nordwgd_split``.

Packets of sockets made in the excluded slice get the daemon's fwmark, so the policy routing
(``not fwmark ... lookup <tunnel table>``) sends them by the main table, the way the daemon's own
WireGuard and API sockets leave. Their connections get a conntrack mark, which the kill-switch
table accepts in every state (docs/security.md); this table never accepts or drops anything.

    route output    cgroup match -> ct mark; ct mark -> fwmark   (a changed mark re-routes)
    prerouting      ct mark -> fwmark             replies pass the reverse-path check
    nat output      excluded DNS -> the system's resolver (the one the tunnel DNS replaced)
    nat postrouting ct mark, not leaving by the tunnel -> masquerade (a socket bound before
                    the mark took the tunnel address as its source)

The table is separate from the kill switch so that it can be loaded again alone when the slice
is made again (nft looks up the cgroup id at load time), and so that a failure here never
touches the kill switch: without this table excluded apps are simply not excluded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import subprocess
from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Final

from nordwgd.errors import FirewallFailed
from nordwgd.model import IPAddress
from nordwgd.split.cgroups import CgroupMatch

log = logging.getLogger(__name__)

TABLE: Final = "nordwgd_split"
# The conntrack mark of excluded connections ("nwex"); the kill switch accepts it.
EXCLUDED_CT_MARK: Final = 0x6E776578
_REMOVE: Final = f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"


@dataclass(frozen=True)
class SplitPolicy:
    """What the split table does. ``excluded`` None: no table."""

    excluded: CgroupMatch | None
    fwmark: int
    tunnel_interface: str
    resolvers: tuple[IPAddress, ...] = ()  # excluded DNS goes here (empty: left alone)

    @cached_property
    def digest(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]


def render(policy: SplitPolicy) -> str:
    """The nft script for ``policy``: one transaction replacing the table whole."""
    if policy.excluded is None:
        return _REMOVE
    ct = f"0x{EXCLUDED_CT_MARK:08x}"
    mark = f"0x{policy.fwmark:08x}"
    tunnel = json.dumps(policy.tunnel_interface)
    dns_rules = []
    for family, kind in (("ip", IPv4Address), ("ip6", IPv6Address)):
        chosen = [str(a) for a in policy.resolvers if isinstance(a, kind)]
        if not chosen:
            continue
        local = "127.0.0.0/8" if family == "ip" else "::1"
        # Only plain DNS to another address: a loopback stub (systemd-resolved) answers itself.
        dns_rules.append(
            f"\t\tct mark {ct} {family} daddr != {{ {local}, {', '.join(chosen)} }} "
            f"meta l4proto {{ tcp, udp }} th dport 53 dnat {family} to {chosen[0]}\n"
        )
    # No resolvers, no chain: a nat chain on a hook costs every new connection a lookup.
    dns_chain = (
        (
            "\tchain excluded_dns {\n"
            "\t\ttype nat hook output priority -100; policy accept;\n"
            + "".join(dns_rules)
            + "\t}\n\n"
        )
        if dns_rules
        else ""
    )
    return (
        _REMOVE
        + f"table inet {TABLE} {{\n"
        + f'\tcomment "nordwgd split {policy.digest}"\n\n'
        + "\tchain excluded_output {\n"
        + "\t\ttype route hook output priority mangle; policy accept;\n"
        + "".join(f"\t\t{match} ct mark set {ct}\n" for match in policy.excluded.expressions())
        + f"\t\tct mark {ct} meta mark set {mark}\n"
        + "\t}\n\n"
        + "\tchain excluded_replies {\n"
        + "\t\ttype filter hook prerouting priority mangle; policy accept;\n"
        + f"\t\tct mark {ct} meta mark set {mark}\n"
        + "\t}\n\n"
        + dns_chain
        + "\tchain excluded_nat {\n"
        + "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        + f'\t\tct mark {ct} oifname != {{ "lo", {tunnel} }} masquerade\n'
        + "\t}\n"
        + "}\n"
    )


async def apply(policy: SplitPolicy) -> None:
    """Load ``policy`` (or remove the table); raises FirewallFailed with nft's message."""
    script = render(policy)
    rc, err = await asyncio.to_thread(_nft, script)
    if rc != 0:
        raise FirewallFailed(f"nft rejected the split-tunnel rules: {err.strip()}")
    what = "removed" if policy.excluded is None else f"loaded for {policy.excluded.nft_path}"
    log.info("split tunnel: rules %s", what)


_NFT_TIMEOUT = 20.0  # a hung nft fails the change instead of parking the daemon


def _nft(script: str) -> tuple[int, str]:
    try:
        import nftables
    except ImportError:
        try:
            result = subprocess.run(
                ["nft", "-f", "-"],
                input=script,
                capture_output=True,
                text=True,
                check=False,
                timeout=_NFT_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            return 124, f"nft: no answer within {_NFT_TIMEOUT:g} s; killed"
        return result.returncode, result.stderr
    context = nftables.Nftables()
    rc, _, err = context.cmd(script)
    return int(rc), str(err)


def system_resolvers(backup: Path) -> tuple[IPAddress, ...]:
    """The nameservers of the resolv.conf that the tunnel DNS replaced (its backup), if any."""
    try:
        text = backup.read_text(errors="replace")
    except OSError:
        return ()
    found: list[IPAddress] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                address = ip_address(fields[1].split("%")[0])
            except ValueError:
                continue
            if not address.is_loopback and address not in found:
                found.append(address)
    return tuple(found)
