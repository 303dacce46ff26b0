"""One Firewall keeps its libnftables context between commands: what it lists must still be
the kernel's ruleset after other programs changed it, and every apply must still verify."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from nordwgd.testing import netns as ns

pytestmark = pytest.mark.root

_SCRIPT = r"""
import asyncio, json, subprocess
from ipaddress import ip_address, ip_network
from nordwgd.errors import FirewallFailed
from nordwgd.firewall import Firewall, policy_for_state, render
from nordwgd.model import Endpoint

def policy(state, lan):
    return policy_for_state(
        state, lockdown=True, allow_lan=True, lan=lan,
        endpoint=Endpoint(ip_address("203.0.113.11")) if state != "disconnected" else None,
        api_addresses=(ip_address("198.51.100.20"),), api_port=443, fwmark=0xCA6C,
        tunnel_interface=None, tunnel_dns=(), ipv6_tunnel=False,
    )

def outside(*argv, stdin=""):
    # Another program changing the ruleset behind the Firewall's back.
    subprocess.run(["nft", *argv], input=stdin, text=True, check=True, timeout=30)

async def main():
    firewall = Firewall("nftables")
    first = policy("connecting", (ip_network("192.168.1.0/24"),))
    second = policy("disconnected", (ip_network("192.168.2.0/24"),))
    seen = {}
    await firewall.apply(first)
    seen["applied"] = await firewall.applied()
    outside("delete", "table", "inet", "nordwgd")
    seen["after_outside_delete"] = await firewall.applied()
    await firewall.apply(second)
    seen["second_applied"] = await firewall.applied()
    # The table of the first policy, put back by someone else: verifying the second must fail.
    outside("-f", "-", stdin=render(first))
    seen["second_check"] = await firewall._engine._check(second)
    await firewall.apply(second)
    seen["second_check_again"] = await firewall._engine._check(second)
    outside("delete", "chain", "inet", "nordwgd", "forward")
    seen["after_chain_delete"] = await firewall._engine._check(second)
    await firewall.remove()
    seen["removed"] = await firewall.applied()
    print(json.dumps(seen))

asyncio.run(main())
"""


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"{ns.NETNS_PREFIX}-{ns.RUN_ID}-{ns.unique_name('fwc', limit=15)}"
    try:
        ns.create_netns(name)
        yield name
    finally:
        ns.delete_netns(name)


def test_listings_follow_changes_made_by_other_programs(namespace: str) -> None:
    result = subprocess.run(
        ns.exec_argv(namespace, ns.python_argv(_SCRIPT)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=ns.python_env(),
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["applied"] is True
    assert seen["after_outside_delete"] is False
    assert seen["second_applied"] is True
    assert "marker" in seen["second_check"]
    assert seen["second_check_again"] is None
    assert seen["after_chain_delete"] == "chain forward is missing"
    assert seen["removed"] is False
