"""Full-tunnel policy routing in the current network namespace, the way wg-quick does it.

While up (for IPv4, and for IPv6 only when the tunnel carries it)::

    throw <lan> table <table>                     LAN ranges fall through to the main table
    default dev <tunnel> table <table>
    32764: lookup main suppress_prefixlength 0    main wins except for its default route
    32765: not fwmark <fwmark> lookup <table>     everything else unmarked goes to the tunnel
    net.ipv4.conf.all.src_valid_mark = 1          so reverse-path checks see the fwmark
    net.ipv4.conf.all.arp_ignore = 1              ARP answered only for the receiving link's
                                                  addresses: the tunnel address stays hidden
    net.ipv4.ip_forward = 1                       gateway mode only (IPv6 forwarding too when
                                                  the tunnel carries IPv6 and forward_from has it)

Forwarded packets carry no fwmark, so the ``not fwmark`` rule sends them into the tunnel table
as well; replies to the forwarded networks match their connected routes in ``main`` (more
specific than the suppressed default). Forwarding is switched on only while the routes exist
and restored to its old value with them; while the tunnel is down (connecting, error, lockdown)
the firewall's forward chain drops forwarded traffic as well, so it never takes the uplink.

The WireGuard socket carries ``fwmark``, so its encrypted UDP skips the tunnel table and leaves
by the main table's default route. The priorities are fixed (just below ``main`` at 32766) so
that undo deletes exactly the rules that were added. A LAN range is a *throw* route rather than
a copy of the uplink's route: lookup falls through to ``main``, so LAN traffic follows whatever
gateway and device the uplink has, even if they change while the tunnel is up.

Each change is recorded in the journal before it is made; undo tolerates objects already gone.
Netlink calls block, so they run in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Sequence
from ipaddress import ip_network
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, NetlinkError

from nordwgd.config import NetworkConfig
from nordwgd.errors import RoutingFailed
from nordwgd.runstate import Journal, Step

log = logging.getLogger(__name__)

PRIORITY_SUPPRESS = 32764
PRIORITY_TUNNEL = 32765
MAIN_TABLE = 254
SRC_VALID_MARK = "net/ipv4/conf/all/src_valid_mark"
ARP_IGNORE = "net/ipv4/conf/all/arp_ignore"
IPV4_FORWARD = "net/ipv4/ip_forward"
IPV6_FORWARD = "net/ipv6/conf/all/forwarding"
ROUTING_STEPS = frozenset({"route", "rule", "sysctl"})

_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
_DEFAULT = {4: "0.0.0.0/0", 6: "::/0"}
_FIB_RULE_INVERT = 0x2
# Deleting what is already gone: no such rule/route/device.
_GONE = frozenset({errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL})
_SYSCTL_ROOT = Path("/proc/sys")


def plan(network: NetworkConfig, ifname: str, *, ipv6: bool) -> list[Step]:
    """The routing steps for a full tunnel over ``ifname``, in the order they are applied."""
    families = (4, 6) if ipv6 else (4,)
    steps: list[Step] = []
    for family in families:
        for lan in network.lan:
            if lan.version == family:
                steps.append(_route(family, network.table, str(lan), "throw", None))
        steps.append(_route(family, network.table, _DEFAULT[family], "unicast", ifname))
        steps.append(
            {
                "step": "rule",
                "family": family,
                "priority": PRIORITY_SUPPRESS,
                "table": MAIN_TABLE,
                "suppress_prefixlen": 0,
            }
        )
        steps.append(
            {
                "step": "rule",
                "family": family,
                "priority": PRIORITY_TUNNEL,
                "table": network.table,
                "fwmark": network.fwmark,
                "invert": True,
            }
        )
    steps.append({"step": "sysctl", "key": SRC_VALID_MARK, "value": "1"})
    if network.mode == "gateway":
        steps.append({"step": "sysctl", "key": IPV4_FORWARD, "value": "1"})
        if ipv6 and any(net.version == 6 for net in network.forward_from):
            steps.append({"step": "sysctl", "key": IPV6_FORWARD, "value": "1"})
    return steps


def _route(family: int, table: int, dst: str, kind: str, ifname: str | None) -> Step:
    return {
        "step": "route",
        "family": family,
        "table": table,
        "dst": dst,
        "type": kind,
        "ifname": ifname,
    }


async def apply(journal: Journal, network: NetworkConfig, ifname: str, *, ipv6: bool) -> None:
    """Route everything unmarked through ``ifname``; raises RoutingFailed (steps stay recorded)."""
    steps = [*plan(network, ifname, ipv6=ipv6), *hide_tunnel_address()]
    await asyncio.to_thread(_apply_steps, journal, steps)


def hide_tunnel_address() -> list[Step]:
    """Steps that keep the LAN from learning the tunnel address.

    By default Linux answers ARP on any link for any local address, so a LAN host asking for
    10.5.0.2 (the address of every NordLynx client) would learn that this host uses the VPN.
    ``arp_ignore = 1`` answers only for addresses of the link the request came in on; the
    kernel takes the larger of the ``all`` and per-link values, so ``all`` covers every uplink.
    """
    return [{"step": "sysctl", "key": ARP_IGNORE, "value": "1"}]


async def undo(step: Step) -> None:
    """Undo one recorded routing step; an object that is already gone is not an error."""
    await asyncio.to_thread(_undo_step, step)


async def cleanup_by_name(network: NetworkConfig) -> None:
    """Remove what a full tunnel with this config would have added, without a record.

    Used when the record is unreadable: rules at our priorities that point at our table (or the
    suppressing main rule), and every route in our table. The sysctls are left as they are, since
    their old values are unknown.
    """
    await asyncio.to_thread(_cleanup_by_name, network)


def _apply_steps(journal: Journal, steps: Sequence[Step]) -> None:
    changes: list[tuple[Step, Step]] = []  # (what is recorded, what is done)
    for step in steps:
        if step["step"] == "sysctl":
            old = read_sysctl(step["key"])
            if old == step["value"] or (step["key"] == ARP_IGNORE and old != "0"):
                continue  # already set, or (arp_ignore) already at least as strict
            changes.append(({"step": "sysctl", "key": step["key"], "old": old}, step))
        else:
            changes.append((step, step))
    # One write records every change before any is made, so that a process killed between
    # two changes leaves a record of each (undoing a route or rule that is not there is no
    # error, and restoring a sysctl that was not changed writes its own value).
    journal.record_all([recorded for recorded, _ in changes])
    made = 0
    try:
        with IPRoute() as ipr:
            for recorded, step in changes:
                _make(ipr, recorded, step)
                made += 1
    except BaseException:
        # The record keeps exactly what was made. A change that failed did not happen, and
        # its undo could remove what someone else made (an equal route or rule: EEXIST).
        with contextlib.suppress(OSError):
            for recorded, _ in reversed(changes[made:]):
                journal.forget(recorded)
        raise


def _make(ipr: IPRoute, recorded: Step, step: Step) -> None:
    if step["step"] == "sysctl":
        log.info("[#] sysctl %s=%s (was %s)", step["key"], step["value"], recorded["old"])
        _write_sysctl_or_fail(step["key"], step["value"])
        return
    log.info("[#] %s", describe(step))
    try:
        if step["step"] == "route":
            ipr.route("add", **_route_args(ipr, step))
        else:
            ipr.rule("add", **_rule_args(step))
    except NetlinkError as exc:
        raise RoutingFailed(f"cannot add {describe(step)}: {exc}") from exc


def _undo_step(step: Step) -> None:
    kind = step["step"]
    if kind == "sysctl":
        log.info("[#] sysctl %s=%s (restore)", step["key"], step["old"])
        _write_sysctl_or_fail(step["key"], step["old"])
        return
    if kind not in ("route", "rule"):
        raise ValueError(f"not a routing step: {kind}")
    log.info("[#] delete %s", describe(step))
    with IPRoute() as ipr:
        try:
            if kind == "route":
                ipr.route("del", **_route_args(ipr, step, deleting=True))
            else:
                ipr.rule("del", **_rule_args(step))
        except NetlinkError as exc:
            if exc.code in _GONE:
                return
            raise RoutingFailed(f"cannot delete {describe(step)}: {exc}") from exc


def _cleanup_by_name(network: NetworkConfig) -> None:
    # Attributes of dumped messages are read with get_attr: pyroute2 0.7.2's get() (Debian 12's
    # version) answers None for them, which left every leftover in place.
    with IPRoute() as ipr:
        for family in _FAMILIES.values():
            for rule in ipr.get_rules(family=family):
                if _is_our_rule(rule, network.table):
                    log.info("[#] delete leftover rule priority %s", rule.get_attr("FRA_PRIORITY"))
                    _delete_leftover(ipr.rule, _rule_from_dump(rule))
            for route in ipr.get_routes(family=family, table=network.table):
                if (route.get_attr("RTA_TABLE") or route["table"]) == network.table:
                    log.info("[#] delete leftover route in table %s", network.table)
                    _delete_leftover(ipr.route, _route_from_dump(route))


def _is_our_rule(rule: Any, table: int) -> bool:
    priority = rule.get_attr("FRA_PRIORITY")
    rule_table = rule.get_attr("FRA_TABLE") or rule["table"]
    if priority == PRIORITY_TUNNEL:
        return bool(rule_table == table)
    return bool(
        priority == PRIORITY_SUPPRESS
        and rule_table == MAIN_TABLE
        and rule.get_attr("FRA_SUPPRESS_PREFIXLEN") == 0
    )


def _delete_leftover(call: Any, args: dict[str, Any]) -> None:
    try:
        call("del", **args)
    except NetlinkError as exc:
        if exc.code not in _GONE:
            raise RoutingFailed(f"cannot remove a leftover: {exc}") from exc


def _rule_from_dump(rule: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "family": rule["family"],
        "priority": rule.get_attr("FRA_PRIORITY"),
        "table": rule.get_attr("FRA_TABLE") or rule["table"],
        "flags": rule["flags"],
    }
    for nla, key in (("FRA_FWMARK", "fwmark"), ("FRA_SUPPRESS_PREFIXLEN", "suppress_prefixlen")):
        if rule.get(nla) is not None:
            args[key] = rule.get(nla)
    return args


def _route_from_dump(route: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "family": route["family"],
        "table": route.get_attr("RTA_TABLE") or route["table"],
        "dst_len": route["dst_len"],
        "type": route["type"],
    }
    for nla, key in (("RTA_DST", "dst"), ("RTA_OIF", "oif")):
        if route.get_attr(nla) is not None:
            args[key] = route.get_attr(nla)
    return args


def _rule_args(step: Step) -> dict[str, object]:
    args: dict[str, object] = {
        "family": _FAMILIES[step["family"]],
        "priority": step["priority"],
        "table": step["table"],
    }
    if "fwmark" in step:
        args["fwmark"] = step["fwmark"]
    if step.get("invert"):
        args["flags"] = _FIB_RULE_INVERT
    if "suppress_prefixlen" in step:
        args["suppress_prefixlen"] = step["suppress_prefixlen"]
    return args


def _route_args(ipr: IPRoute, step: Step, *, deleting: bool = False) -> dict[str, object]:
    network = ip_network(step["dst"])
    args: dict[str, object] = {
        "family": _FAMILIES[step["family"]],
        "table": step["table"],
        "dst": str(network.network_address),
        "dst_len": network.prefixlen,
        "type": step["type"],
    }
    if step.get("ifname"):
        found = ipr.link_lookup(ifname=step["ifname"])
        if found:
            args["oif"] = found[0]
        elif not deleting:
            raise RoutingFailed(f"interface {step['ifname']} does not exist")
        else:
            # The link is gone, and the kernel removed its routes with it.
            raise NetlinkError(errno.ENODEV, "no such device")
    return args


def describe(step: Step) -> str:
    """The change as an `ip` command line, for logs and error messages."""
    family = "-6 " if step.get("family") == 6 else ""
    if step["step"] == "route":
        kind = "throw " if step["type"] == "throw" else ""
        dev = f" dev {step['ifname']}" if step.get("ifname") else ""
        return f"ip {family}route {kind}{step['dst']}{dev} table {step['table']}"
    if step["step"] == "rule":
        match = f"not fwmark {step['fwmark']:#x} " if step.get("invert") else ""
        suppress = (
            f" suppress_prefixlength {step['suppress_prefixlen']}"
            if "suppress_prefixlen" in step
            else ""
        )
        table = "main" if step["table"] == MAIN_TABLE else step["table"]
        return f"ip {family}rule priority {step['priority']} {match}lookup {table}{suppress}"
    return repr(step)


def read_sysctl(key: str) -> str:
    """The value of ``/proc/sys/<key>`` for this process's network namespace."""
    return (_SYSCTL_ROOT / key).read_text().strip()


def _write_sysctl_or_fail(key: str, value: str) -> None:
    try:
        (_SYSCTL_ROOT / key).write_text(f"{value}\n")
    except OSError as exc:
        raise RoutingFailed(f"cannot set sysctl {key.replace('/', '.')}={value}: {exc}") from exc


__all__ = [
    "ARP_IGNORE",
    "IPV4_FORWARD",
    "IPV6_FORWARD",
    "PRIORITY_SUPPRESS",
    "PRIORITY_TUNNEL",
    "ROUTING_STEPS",
    "apply",
    "cleanup_by_name",
    "describe",
    "hide_tunnel_address",
    "plan",
    "read_sysctl",
    "undo",
]
