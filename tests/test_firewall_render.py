"""Policy per state and its rendering: snapshot tests plus the rules that must hold for any input.

Regenerate the snapshots with UPDATE_SNAPSHOTS=1 after an intended change, and read the diff.
"""

from __future__ import annotations

import os
import subprocess
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from nordwgd.errors import InvalidArgument
from nordwgd.firewall.apply import check_listing
from nordwgd.firewall.iptables import HOOKS, SavedState, parse_save, render_restore
from nordwgd.firewall.policy import FirewallPolicy, policy_for_state
from nordwgd.firewall.render import BASE_CHAINS, render, tag
from nordwgd.model import Endpoint

SNAPSHOTS = Path(__file__).parent / "snapshots" / "firewall"
ENDPOINT = Endpoint(ip_address("203.0.113.11"))
API = (ip_address("198.51.100.21"), ip_address("198.51.100.20"))
LAN = (ip_network("192.168.77.0/24"), ip_network("169.254.0.0/16"), ip_network("fe80::/10"))


def make(state: str, **overrides: Any) -> FirewallPolicy:
    arguments: dict[str, Any] = {
        "lockdown": False,
        "allow_lan": False,
        "lan": LAN,
        "endpoint": ENDPOINT,
        "api_addresses": API,
        "api_port": 443,
        "fwmark": 0xCA6C,
        "tunnel_interface": "nordlynx",
        "tunnel_dns": (ip_address("10.5.0.1"),),
        "ipv6_tunnel": False,
        "tunnel_addresses": (ip_address("10.5.0.2"),),
    }
    arguments.update(overrides)
    return policy_for_state(state, **arguments)


CASES: dict[str, FirewallPolicy] = {
    "disconnected-open": make("disconnected"),
    "disconnected-lockdown": make("disconnected", lockdown=True),
    "connecting": make("connecting"),
    "reconnecting": make("reconnecting"),
    "connected": make("connected"),
    "connected-allow-lan": make("connected", allow_lan=True),
    "connected-allow-lan-default": make("connected", allow_lan=True, lan=()),
    "connected-ipv6-tunnel": make(
        "connected",
        ipv6_tunnel=True,
        tunnel_dns=(ip_address("10.5.0.1"), ip_address("fd00:5::1")),
    ),
    "disconnecting": make("disconnecting"),
    "error": make("error"),
    "gateway-forward-from": make(
        "connected", allow_lan=True, forward_from=(ip_network("192.168.50.0/24"),)
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_render_matches_snapshot(name: str) -> None:
    rendered = render(CASES[name])
    snapshot = SNAPSHOTS / f"{name}.nft"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        snapshot.write_text(rendered)
    assert rendered == snapshot.read_text(), f"{snapshot.name} differs (UPDATE_SNAPSHOTS=1)"


@pytest.mark.root
@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_script_is_accepted_by_nft(name: str) -> None:
    """nft --check in a throw-away network namespace: the whole script parses and validates."""
    result = subprocess.run(
        ["unshare", "--net", "nft", "--check", "-f", "-"],
        input=render(CASES[name]),
        text=True,
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr


def test_open_policy_only_removes_the_table() -> None:
    policy = CASES["disconnected-open"]
    assert policy.blocking == "open"
    assert render(policy) == "table inet nordwgd {}\ndelete table inet nordwgd\n"


@pytest.mark.parametrize("name", sorted(set(CASES) - {"disconnected-open"}))
def test_blocking_states_drop_by_default(name: str) -> None:
    policy = CASES[name]
    assert policy.blocking == "blocked"
    script = render(policy)
    for chain in ("input", "output", "forward"):
        assert f"type filter hook {chain} priority filter; policy drop;" in script
    assert "ct state established,related accept" in script  # input only, see next test
    output_chain = script.split("chain output {")[1].split("}")[0]
    assert "ct state" not in output_chain, "output must not accept flows opened before blocking"


@pytest.mark.parametrize("name", sorted(set(CASES) - {"disconnected-open"}))
def test_filter_chains_end_in_an_unconditional_drop(name: str) -> None:
    """The policy alone does not block while the table is replaced: the kernel gives a new
    base chain its drop policy only at the end of the commit, after the old chains' hooks are
    gone and the new rules are in force. A last rule that drops keeps that moment closed."""
    script = render(CASES[name])
    for chain in BASE_CHAINS:
        body = script.split(f"chain {chain} {{")[1].split("\n\t}")[0]
        last = body.strip().splitlines()[-1].strip()
        assert last in (f"counter name dropped_{chain} drop", "drop"), (chain, last)


def test_endpoint_and_api_pinholes_need_the_mark() -> None:
    script = render(CASES["connecting"])
    assert "meta mark 0x0000ca6c ip daddr 203.0.113.11 udp dport 51820 accept" in script
    assert "meta mark 0x0000ca6c ip daddr @api_v4 tcp dport 443 accept" in script
    assert "198.51.100.20,\n\t\t\t     198.51.100.21" in script  # sorted set elements
    assert "oifname" not in script.split("chain output {")[1].split("chain forward")[0]


def test_states_without_pinholes() -> None:
    disconnecting = render(CASES["disconnecting"])
    assert "51820" not in disconnecting and "@api_v4" not in disconnecting
    error = render(CASES["error"])
    assert "51820" not in error and "@api_v4 tcp dport 443" in error
    assert render(CASES["disconnected-lockdown"]).replace("disconnected", "error") == error.replace(
        CASES["error"].digest, CASES["disconnected-lockdown"].digest
    )


def test_connected_dns_only_to_tunnel_dns_and_before_lan() -> None:
    script = render(CASES["connected-allow-lan"])
    output_chain = script.split("chain output {")[1].split("chain forward")[0]
    dns_accept = output_chain.index('oifname "nordlynx" ip daddr @dns_v4')
    dns_drop = output_chain.index("counter name dropped_dns drop")
    lan_accept = output_chain.index("ip daddr @lan_v4 accept")
    assert dns_accept < dns_drop < lan_accept
    assert 'oifname "nordlynx" meta nfproto ipv4 accept' in output_chain  # no IPv6 via tunnel


def test_ipv6_via_tunnel_only_when_asked() -> None:
    script = render(CASES["connected-ipv6-tunnel"])
    assert 'oifname "nordlynx" accept' in script
    assert 'oifname "nordlynx" ip6 daddr @dns_v6' in script
    assert "ip6 daddr @" not in render(CASES["connected"])


def test_allow_lan_off_means_no_lan_set() -> None:
    assert "lan_v4" not in render(CASES["connected"])
    assert CASES["connected"].lan == ()


def test_allow_lan_without_networks_opens_every_local_range() -> None:
    policy = CASES["connected-allow-lan-default"]
    assert set(policy.lan) == {
        *map(ip_network, ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16")),
        *map(ip_network, ("224.0.0.0/24", "239.0.0.0/8", "255.255.255.255/32")),
        *map(ip_network, ("fe80::/10", "fc00::/7", "ff01::/16", "ff02::/15", "ff04::/15")),
    }
    script = render(policy)
    assert "ip daddr @lan_v4 accept" in script and "ip6 saddr @lan_v6 accept" in script
    # global multicast scope and public ranges stay closed
    assert "224.0.0.0/4" not in script and "ff0e" not in script and "ff00::/8" not in script
    assert CASES["connected"].lan == ()  # AllowLan off: nothing


def _rules(script: str, chain: str) -> list[str]:
    body = script.split(f"chain {chain} {{")[1].split("\n\t}")[0]
    return [line.strip() for line in body.splitlines()[2:]]


@pytest.mark.parametrize("name", sorted(n for n in CASES if CASES[n].block))
def test_link_basics_stay_on_the_link(name: str) -> None:
    output = _rules(render(CASES[name]), "output")
    dhcp4 = [rule for rule in output if "sport 68" in rule or "dport 67" in rule]
    assert dhcp4 == ["ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept"]
    dhcp6 = [rule for rule in output if "546" in rule or "547" in rule]
    assert dhcp6 == [
        "ip6 saddr fe80::/10 ip6 daddr { ff02::1:2, ff05::1:3 } udp sport 546 udp dport 547 accept"
    ]
    icmp6 = [rule for rule in output if "icmpv6" in rule]
    assert icmp6 == [
        "ip6 hoplimit 255 ip6 daddr { fe80::/10, ff02::/16 } icmpv6 type "
        "{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept"
    ]
    v6 = render_restore(CASES[name], 6, SavedState(frozenset(), frozenset(), ""))
    v6_output = [line for line in v6.splitlines() if line.startswith("-A NORDWGD-OUTPUT")]
    assert not any(
        ("udp" in line and "--dport 547" in line and "-d ff0" not in line)
        or ("icmp6" in line and "-d fe80::/10" not in line and "-d ff02::/16" not in line)
        for line in v6_output
    ), v6
    v4 = render_restore(CASES[name], 4, SavedState(frozenset(), frozenset(), ""))
    assert [line for line in v4.splitlines() if "--dport 67" in line] == [
        "-A NORDWGD-OUTPUT -d 255.255.255.255 -p udp -m udp --sport 68 --dport 67 -j ACCEPT"
    ]


def test_tunnel_address_is_reachable_only_through_the_tunnel() -> None:
    script = render(CASES["connected-allow-lan"])
    inputs = _rules(script, "input")
    drop = inputs.index('iifname != "nordlynx" ip daddr @tun_v4 counter name dropped_input drop')
    assert drop < inputs.index("ct state established,related accept")
    assert drop < inputs.index("ip saddr @lan_v4 accept")
    assert "@tun_v4" not in render(CASES["connecting"])
    v4 = render_restore(CASES["connected-allow-lan"], 4, SavedState(frozenset(), frozenset(), ""))
    assert v4.index("-A NORDWGD-INPUT ! -i nordlynx -d 10.5.0.2 ") < v4.index("--ctstate")


def test_policy_is_normalised() -> None:
    a = make("connected", allow_lan=True, lan=(ip_network("192.168.1.0/24"),) * 2)
    b = make("connected", allow_lan=True, lan=(ip_network("192.168.1.0/24"),))
    assert a == b and a.digest == b.digest
    merged = make(
        "connected",
        allow_lan=True,
        lan=(ip_network("192.168.0.0/24"), ip_network("192.168.1.0/24")),
    )
    assert merged.lan == (ip_network("192.168.0.0/23"),)
    assert make("connected").digest != make("connecting").digest


@pytest.mark.parametrize(
    "network", ["8.8.8.0/24", "203.0.113.0/24", "0.0.0.0/0", "2001:db8::/32", "100.64.0.0/10"]
)
def test_public_lan_range_is_refused(network: str) -> None:
    with pytest.raises(InvalidArgument, match="not a private"):
        make("connected", allow_lan=True, lan=(ip_network(network),))
    with pytest.raises(InvalidArgument, match="forward_from"):
        make("connected", forward_from=(ip_network(network),))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fwmark": 0}, "fwmark"),
        ({"api_port": 70000}, "api_port"),
        ({"tunnel_interface": 'x" accept'}, "interface name"),
        ({"tunnel_interface": "a" * 16}, "interface name"),
    ],
)
def test_bad_arguments_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        make("connected", **overrides)


def test_unknown_state_and_missing_tunnel() -> None:
    with pytest.raises(InvalidArgument, match="unknown state"):
        make("sleeping")
    with pytest.raises(InvalidArgument, match="tunnel interface"):
        make("connected", tunnel_interface=None)


def test_check_listing_reports_what_is_wrong() -> None:
    policy = CASES["error"]
    listing: list[dict[str, Any]] = [{"table": {"name": "nordwgd"}}]
    for name in ("input", "output", "forward"):
        listing.append({"chain": {"name": name, "hook": name, "policy": "drop"}})
        listing.append({"rule": {"chain": name, "comment": tag(policy)}})
    assert check_listing(policy, listing) is None
    assert "marker" in (check_listing(CASES["connecting"], listing) or "")
    assert "forward is missing" in (check_listing(policy, listing[:5]) or "")
    listing[1]["chain"]["policy"] = "accept"
    assert "does not drop" in (check_listing(policy, listing) or "")


def test_iptables_render_mirrors_the_policy() -> None:
    empty = SavedState(frozenset(), frozenset(), "")
    v4 = render_restore(CASES["connected-allow-lan"], 4, empty)
    assert "-I OUTPUT 1 -j NORDWGD-OUTPUT" in v4
    assert "-A NORDWGD-OUTPUT -d 203.0.113.11 -p udp -m udp --dport 51820 -m mark" in v4
    assert "-A NORDWGD-OUTPUT -o nordlynx -d 10.5.0.1 -p udp -m multiport --dports 53,853" in v4
    assert v4.index('"dropped_dns" -j DROP') < v4.index("-A NORDWGD-OUTPUT -d 192.168.77.0/24")
    assert "*nat" not in v4
    v6 = render_restore(CASES["connected-allow-lan"], 6, empty)
    assert "-o nordlynx -j ACCEPT" not in v6  # IPv6 not carried by the tunnel
    assert "-A NORDWGD-OUTPUT -d fe80::/10 -j ACCEPT" in v6
    gateway = render_restore(CASES["gateway-forward-from"], 4, empty)
    assert "-A NORDWGD-POSTROUTING -o nordlynx -s 192.168.50.0/24 -j MASQUERADE" in gateway


def test_iptables_open_unhooks_only_what_exists() -> None:
    saved = parse_save(
        "*filter\n:INPUT ACCEPT [0:0]\n:NORDWGD-INPUT - [0:0]\n:NORDWGD-OUTPUT - [0:0]\n"
        ":NORDWGD-FORWARD - [0:0]\n-A INPUT -j NORDWGD-INPUT\nCOMMIT\n"
    )
    assert saved.hooked == {HOOKS[0]}
    script = render_restore(CASES["disconnected-open"], 4, saved)
    assert "-D INPUT -j NORDWGD-INPUT" in script
    assert "-D OUTPUT" not in script
    assert "-X NORDWGD-FORWARD" in script
    nothing = SavedState(frozenset(), frozenset(), "")
    assert render_restore(CASES["disconnected-open"], 4, nothing) == ""


def test_check_listing_accepts_the_marker_set_of_a_terse_listing() -> None:
    policy = CASES["connected"]
    listing: list[dict[str, Any]] = [
        {"set": {"name": "marker", "table": "nordwgd", "comment": tag(policy)}},
        *({"chain": {"name": name, "hook": name, "policy": "drop"}} for name in BASE_CHAINS),
    ]
    assert check_listing(policy, listing) is None
    assert "marker" in (check_listing(CASES["connecting"], listing) or "")
    assert "output is missing" in (check_listing(policy, [listing[0], listing[1]]) or "")
