"""The pinholes every blocking state keeps (DHCP, neighbour discovery, AllowLan) are as narrow
as they are meant to be, and the leak monitor sees every packet that goes through them wrongly.

The daemon runs with the default `network.lan` (empty: AllowLan opens every local range). Root
on the host sends DHCP from the client ports and neighbour solicitations with a payload to
addresses off the link (``tests/security/linkprobe.py``): the kill switch must drop each one,
while the on-link shapes (DHCP broadcast, DHCPv6 multicast from link-local, a solicitation to a
solicited-node group) still leave, counted by a separate table on the router.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest

from nordwgd.lanranges import LAN_RANGES, within
from nordwgd.testing.leakmonitor import Leak
from nordwgd.testing.netns import nft
from tests.fixtures_dbus import PYTHON
from tests.security.harness import Stack, answered, stack_fixture
from tests.security.ledger import ScenarioRecorder

pytestmark = [pytest.mark.root, pytest.mark.slow]

# The default network.lan: AllowLan then opens every local range (nordwgd.lanranges).
stack = stack_fixture(network={"lan": None})

HOST_V6 = "2001:db8:6::2"
ROUTER_V6 = "2001:db8:6::1"
INTERNET_V6 = "2001:db8:80::80"  # routed by the router's default; nobody answers there
UNSOLICITED_TARGET = "2001:db8:6::99"  # nobody has it, so the kernel never asks for it itself
NO_SERVER_COUNTRY = "Japan"  # in the catalog, but the world's fleet has no server there
_ALLOWED_TABLE = "nwgt_allowed"
_PROBE = Path(__file__).with_name("linkprobe.py")


def _forbidden(stack: Stack) -> dict[str, dict[str, Any]]:
    world = stack.world
    udp = {"kind": "udp", "device": world.uplink}
    return {
        "dhcp4 to the LAN router": {**udp, "sport": 68, "host": world.router_lan, "port": 67},
        "dhcp4 to the Internet": {**udp, "sport": 68, "host": world.web_address, "port": 67},
        "dhcp6 to a global address": {**udp, "sport": 546, "host": INTERNET_V6, "port": 547},
        "neighbour solicitation to a global address": {
            "kind": "ns",
            "device": world.uplink,
            "host": INTERNET_V6,
        },
        "neighbour solicitation to the router's global address": {
            "kind": "ns",
            "device": world.uplink,
            "host": ROUTER_V6,
        },
    }


def _allowed(stack: Stack) -> dict[str, dict[str, Any]]:
    uplink = stack.world.uplink
    return {
        "dhcp4": {
            "kind": "udp", "device": uplink, "sport": 68, "host": "255.255.255.255", "port": 67,
        },
        "dhcp6": {
            "kind": "udp", "device": uplink, "sport": 546, "host": "ff02::1:2", "port": 547,
            "link_local_source": True,
        },
        "ns": {
            "kind": "ns", "device": uplink, "host": "ff02::1:ff00:99",
            "target": UNSOLICITED_TARGET,
        },
    }  # fmt: skip


def _send(stack: Stack, specs: dict[str, dict[str, Any]]) -> dict[str, str]:
    argv = [PYTHON, str(_PROBE), json.dumps(list(specs.values()))]
    result = stack.world.host_exec(argv, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    return dict(zip(specs, json.loads(result.stdout), strict=True))


@contextlib.contextmanager
def _ipv6_uplink(stack: Stack) -> Iterator[None]:
    """A global IPv6 address and default route on the uplink, as a router would advertise."""
    world = stack.world
    world.host_exec(["ip", "-6", "addr", "add", f"{HOST_V6}/64", "dev", world.uplink, "nodad"])
    try:
        world.router_exec(
            ["ip", "-6", "addr", "add", f"{ROUTER_V6}/64", "dev", world.uplink_router, "nodad"]
        )
        world.host_exec(["ip", "-6", "route", "add", "default", "via", ROUTER_V6])
        yield
    finally:
        world.host_exec(["ip", "-6", "route", "del", "default"], check=False)
        world.host_exec(
            ["ip", "-6", "addr", "del", f"{HOST_V6}/64", "dev", world.uplink], check=False
        )
        world.router_exec(
            ["ip", "-6", "addr", "del", f"{ROUTER_V6}/64", "dev", world.uplink_router],
            check=False,
        )


@contextlib.contextmanager
def _allowed_counter(stack: Stack) -> Iterator[None]:
    """Counts, at the router's end of the uplink, the on-link shapes that must still pass."""
    world = stack.world
    nft(
        world.router_ns,
        f"table netdev {_ALLOWED_TABLE} {{\n"
        "  counter dhcp4 { }\n  counter dhcp6 { }\n  counter ns { }\n"
        "  chain ingress {\n"
        f'    type filter hook ingress device "{world.uplink_router}" priority -10;\n'
        '    ip daddr 255.255.255.255 udp dport 67 counter name "dhcp4"\n'
        '    ip6 saddr fe80::/10 ip6 daddr ff02::1:2 udp dport 547 counter name "dhcp6"\n'
        '    ip6 daddr ff02::1:ff00:99 icmpv6 type nd-neighbor-solicit counter name "ns"\n'
        "  }\n}\n",
    )
    try:
        yield
    finally:
        nft(world.router_ns, f"delete table netdev {_ALLOWED_TABLE}\n", check=False)


def _allowed_seen(stack: Stack) -> dict[str, int]:
    out = stack.world.router_exec(["nft", "-j", "list", "counters", "table", "netdev",
                                   _ALLOWED_TABLE])  # fmt: skip
    seen: dict[str, int] = {}
    for item in json.loads(out)["nftables"]:
        if "counter" in item:
            seen[item["counter"]["name"]] = int(item["counter"]["packets"])
    return seen


def test_leak_monitor_counts_every_off_link_shape(stack: Stack, ledger: ScenarioRecorder) -> None:
    """With traffic open each forbidden shape reaches the router and is counted; the on-link
    shapes are not (the monitor itself is what the suite's zero rests on)."""
    stack.reset()
    world = stack.world
    with _ipv6_uplink(stack), _allowed_counter(stack):
        stack.reset_leaks()
        allowed = _send(stack, _allowed(stack))
        seen = _allowed_seen(stack)
        quiet = stack.leaks()
        stack.reset_leaks()
        forbidden = _send(stack, _forbidden(stack))
        counted = {(leak.destination, leak.protocol) for leak in stack.leaks()}
    # Open traffic is allowed, so nothing here is a leak; the ledger records none.
    ledger.leaked(0)
    assert set(allowed.values()) == {"sent"}, allowed
    assert seen == {"dhcp4": 1, "dhcp6": 1, "ns": 1}, seen
    assert quiet == [], quiet
    assert set(forbidden.values()) == {"sent"}, forbidden
    assert {
        (world.router_lan, "udp"),
        (world.web_address, "udp"),
        (INTERNET_V6, "udp"),
        (INTERNET_V6, "ipv6-icmp"),
        (ROUTER_V6, "ipv6-icmp"),
    } <= counted, counted


def _enter(stack: Stack, state: str) -> None:
    if state == "lockdown":
        stack.client.call("SetLockdown", "b", [True])
        stack.wait_for_state("disconnected", Blocking="blocked", timeout=10)
    elif state == "error":
        stack.client.connect(country=NO_SERVER_COUNTRY)
        stack.wait_for_state("error", ErrorCause="no-server", Blocking="blocked", timeout=30)
    else:
        stack.connect_and_wait()


@pytest.mark.parametrize("state", ["lockdown", "error", "connected"])
def test_dhcp_and_neighbour_discovery_stay_on_the_link(
    stack: Stack, ledger: ScenarioRecorder, state: str
) -> None:
    stack.reset()
    with _ipv6_uplink(stack), _allowed_counter(stack):
        _enter(stack, state)
        ledger.fault(f"root sends DHCP and neighbour solicitations off the link ({state})")
        stack.reset_leaks()
        forbidden = _send(stack, _forbidden(stack))
        leaks = stack.leaks()
        allowed = _send(stack, _allowed(stack))
        seen = _allowed_seen(stack)
        after_allowed = stack.leaked()
    ledger.leaked(sum(leak.packets for leak in leaks) + after_allowed)
    assert leaks == [], (forbidden, leaks)
    assert after_allowed == 0, stack.leaks()
    # the on-link shapes still work: the uplink can renew its addresses in every state
    assert set(allowed.values()) == {"sent"}, allowed
    assert seen == {"dhcp4": 1, "dhcp6": 1, "ns": 1}, seen


def test_allow_lan_with_the_default_config_opens_the_local_ranges(
    stack: Stack, ledger: ScenarioRecorder
) -> None:
    stack.reset()
    world = stack.world
    stack.client.call("SetLockdown", "b", [True])
    stack.wait_for_state("disconnected", Blocking="blocked", timeout=10)
    assert stack.probes.ping(world.router_lan) is False

    stack.client.call("SetAllowLan", "b", [True])
    stack.wait_for_state("disconnected", Blocking="blocked", AllowLan=True, timeout=10)
    stack.reset_leaks()
    lan_ping = stack.probes.ping(world.router_lan)
    lan_dns = stack.probes.dns(world.lan_dns)
    outside = stack.probes.standard()

    assert lan_ping is True
    assert lan_dns != "answered"  # the LAN resolver never sees a query
    assert answered(outside) == [], outside
    # LAN traffic is what the user allowed; anything else counted is a leak.
    leaks = [leak for leak in stack.leaks() if not _local(leak.destination)]
    ledger.leaked(sum(leak.packets for leak in leaks))
    assert leaks == []


def _link_local_icmpv6(leak: Leak) -> bool:
    return leak.protocol == "ipv6-icmp" and ip_network(leak.destination).subnet_of(LINK_LOCAL_V6)


LINK_LOCAL_V6 = ip_network("fe80::/10")


def _local(destination: str) -> bool:
    with contextlib.suppress(ValueError):
        return within(ip_network(destination), LAN_RANGES)
    return False


def test_lan_cannot_reach_the_tunnel_address(stack: Stack, ledger: ScenarioRecorder) -> None:
    """CVE-2019-14899: with AllowLan, a LAN host sending to the tunnel address gets nothing."""
    stack.reset()
    world = stack.world
    stack.client.call("SetAllowLan", "b", [True])
    props = stack.connect_and_wait()
    tunnel_address = props["TunnelAddress"].split("/")[0]
    assert stack.probes.ping(world.router_lan) is True  # the LAN is open
    world.router_exec(["ip", "route", "add", f"{tunnel_address}/32", "via", world.host_address])
    ledger.fault("a LAN host probes the tunnel address")
    try:
        stack.reset_leaks()
        probed = world.router_exec(
            ["ping", "-n", "-c", "2", "-W", "1", tunnel_address], check=False
        )
        # AllowLan lets ICMPv6 to link-local addresses out (neighbour probes to the router come
        # at any time); whatever else was counted is a leak.
        leaks = [leak for leak in stack.leaks() if not _link_local_icmpv6(leak)]
    finally:
        world.router_exec(["ip", "route", "del", f"{tunnel_address}/32"], check=False)
    ledger.leaked(sum(leak.packets for leak in leaks))
    assert " 0% packet loss" not in probed and "bytes from" not in probed, probed
    assert leaks == []
    assert stack.props()["State"] == "connected"
