"""Policy routing: the plan (pure) and apply/undo in a network namespace made for the test."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path

import pytest

from nordwgd.config import NetworkConfig
from nordwgd.routing import PRIORITY_SUPPRESS, PRIORITY_TUNNEL, describe, plan

REPO = Path(__file__).resolve().parent.parent
PYTHON = str(REPO / ".venv" / "bin" / "python")
NETWORK = NetworkConfig(
    table=51820, fwmark=0xCA6C, lan=(ip_network("192.168.1.0/24"), ip_network("fd12::/64"))
)


def test_ipv4_only_plan_in_wg_quick_order() -> None:
    steps = plan(NETWORK, "nordlynx", ipv6=False)
    assert [describe(s) for s in steps[:-1]] == [
        "ip route throw 192.168.1.0/24 table 51820",
        "ip route 0.0.0.0/0 dev nordlynx table 51820",
        f"ip rule priority {PRIORITY_SUPPRESS} lookup main suppress_prefixlength 0",
        f"ip rule priority {PRIORITY_TUNNEL} not fwmark 0xca6c lookup 51820",
    ]
    assert steps[-1] == {"step": "sysctl", "key": "net/ipv4/conf/all/src_valid_mark", "value": "1"}


def test_ipv6_gets_the_same_routing_when_the_tunnel_carries_it() -> None:
    v6 = [describe(s) for s in plan(NETWORK, "nordlynx", ipv6=True) if s.get("family") == 6]
    assert v6 == [
        "ip -6 route throw fd12::/64 table 51820",
        "ip -6 route ::/0 dev nordlynx table 51820",
        f"ip -6 rule priority {PRIORITY_SUPPRESS} lookup main suppress_prefixlength 0",
        f"ip -6 rule priority {PRIORITY_TUNNEL} not fwmark 0xca6c lookup 51820",
    ]


# -- in a namespace ---------------------------------------------------------------------------

CHILD = """
import asyncio, json, sys
from ipaddress import ip_network
from pathlib import Path
from nordwgd import routing
from nordwgd.config import NetworkConfig
from nordwgd.errors import RoutingFailed
from nordwgd.runstate import Journal

args = json.loads(sys.argv[1])
network = NetworkConfig(table=51820, fwmark=0xCA6C, lan=tuple(map(ip_network, args["lan"])))
runtime = Path(args["runtime"])

async def main():
    if args["op"] == "apply":
        await routing.apply(Journal(runtime), network, args["ifname"], ipv6=args["ipv6"])
    elif args["op"] == "undo":
        for step in reversed(Journal.load(runtime).steps):
            await routing.undo(step)
    elif args["op"] == "cleanup":
        await routing.cleanup_by_name(network)
    elif args["op"] == "apply-failing":
        journal = Journal(runtime)
        try:
            await routing.apply(journal, network, args["ifname"], ipv6=args["ipv6"])
        except RoutingFailed as error:
            print(json.dumps({"error": error.message, "steps": Journal.load(runtime).steps}))

asyncio.run(main())
"""


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, check=False, timeout=30)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr.decode()}"
    return done.stdout.decode()


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"nwtr-{secrets.token_hex(3)}"
    run("ip", "netns", "add", name)
    try:
        for scope in ("all", "default"):
            run("ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv6.conf.{scope}.accept_dad=0")
        run("ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "tun0")
        run("ip", "-n", name, "address", "add", "198.51.100.2/24", "dev", "eth0")
        for link in ("lo", "eth0", "tun0"):
            run("ip", "-n", name, "link", "set", link, "up")
        run("ip", "-n", name, "route", "add", "default", "via", "198.51.100.1")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def child(ns: str, runtime: Path, op: str, *, ipv6: bool = False, ifname: str = "tun0") -> str:
    args = {
        "op": op,
        "runtime": str(runtime),
        "ifname": ifname,
        "ipv6": ipv6,
        "lan": ["192.168.1.0/24", "fd12::/64"],
    }
    return run("ip", "netns", "exec", ns, PYTHON, "-c", CHILD, json.dumps(args))


def snapshot(ns: str) -> dict[str, str]:
    return {
        "rules4": run("ip", "-n", ns, "-4", "rule"),
        "rules6": run("ip", "-n", ns, "-6", "rule"),
        "routes4": run("ip", "-n", ns, "-4", "route", "show", "table", "all"),
        "routes6": run("ip", "-n", ns, "-6", "route", "show", "table", "all"),
        "mark": run("ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.conf.all.src_valid_mark"),
    }


@pytest.mark.root
@pytest.mark.parametrize("ipv6", [False, True])
def test_apply_then_undo_restores_the_namespace_exactly(
    netns: str, tmp_path: Path, ipv6: bool
) -> None:
    before = snapshot(netns)
    child(netns, tmp_path, "apply", ipv6=ipv6)
    during = snapshot(netns)
    assert "not from all fwmark 0xca6c lookup 51820" in during["rules4"]
    assert "lookup main suppress_prefixlength 0" in during["rules4"]
    assert during["mark"].strip() == "1"
    assert ("51820" in during["rules6"]) is ipv6
    assert ("default dev tun0 table 51820" in during["routes6"]) is ipv6
    assert "throw 192.168.1.0/24 table 51820" in during["routes4"]
    via_uplink = run("ip", "-n", netns, "route", "get", "192.168.1.7")
    assert "via 198.51.100.1 dev eth0" in via_uplink
    assert "dev tun0" in run("ip", "-n", netns, "route", "get", "192.0.2.7")

    child(netns, tmp_path, "undo")
    assert snapshot(netns) == before
    # Undoing again meets only objects that are gone: not an error.
    child(netns, tmp_path, "undo")
    assert snapshot(netns) == before


@pytest.mark.root
def test_cleanup_by_name_removes_only_what_a_tunnel_would_have_added(
    netns: str, tmp_path: Path
) -> None:
    run("ip", "-n", netns, "rule", "add", "priority", "100", "lookup", "100")
    run("ip", "-n", netns, "route", "add", "192.0.2.0/24", "dev", "eth0", "table", "100")
    before = snapshot(netns)
    child(netns, tmp_path, "apply", ipv6=True)
    child(netns, tmp_path, "cleanup")
    after = snapshot(netns)
    # Without a record the sysctl's old value is unknown, so it stays.
    assert after.pop("mark").strip() == "1"
    before.pop("mark")
    assert after == before
    assert "lookup 100" in after["rules4"]


@pytest.mark.root
def test_a_failed_change_leaves_exactly_the_made_steps_recorded(netns: str, tmp_path: Path) -> None:
    before = snapshot(netns)
    # The default route needs the tunnel link: without it, the second change fails, did not
    # happen, and is not recorded (its undo could remove an equal route someone else made).
    outcome = json.loads(child(netns, tmp_path, "apply-failing", ifname="gone0"))
    assert "gone0" in outcome["error"]
    assert [(s["step"], s.get("type")) for s in outcome["steps"]] == [("route", "throw")]
    child(netns, tmp_path, "undo")
    assert snapshot(netns) == before
