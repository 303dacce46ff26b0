"""What the firewall lets through for PIA: its servers while connecting, the forwarded port."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from nordwgd.config import parse_config
from nordwgd.errors import ConfigError, InvalidArgument
from nordwgd.firewall.iptables import SavedState, parse_save, render_restore
from nordwgd.firewall.policy import FirewallPolicy, policy_for_state
from nordwgd.firewall.render import render
from nordwgd.killswitch import blocking_policy
from nordwgd.model import Endpoint

PIA_CONFIG = """
provider = "pia"
[network]
lockdown = true
[pia]
meta = ["london401@198.51.100.20"]
api_addresses = ["198.51.100.30"]
"""


NOTHING_SAVED = SavedState(frozenset(), frozenset(), "")


def connected_policy(**changes: object) -> FirewallPolicy:
    values: dict[str, object] = {
        "lockdown": False,
        "allow_lan": False,
        "lan": (),
        "endpoint": Endpoint(ip_address("203.0.113.11")),
        "api_addresses": (),
        "api_port": 443,
        "fwmark": 0xCA6C,
        "tunnel_interface": "pia0",
        "tunnel_dns": (ip_address("198.51.100.53"),),
        "ipv6_tunnel": False,
        **changes,
    }
    return policy_for_state("connected", **values)  # type: ignore[arg-type]


def connected(**changes: object) -> str:
    """The connected ruleset, with PIA's WireGuard and meta servers open beside the tunnel."""
    api_extra = ((ip_address("203.0.113.11"), 1337), (ip_address("198.51.100.20"), 443))
    return render(connected_policy(**{"api_extra": api_extra, **changes}))


def test_the_early_kill_switch_opens_pias_servers_not_nordvpns() -> None:
    policy = blocking_policy(parse_config(PIA_CONFIG, Path("nordwgd.toml")))
    assert policy is not None
    assert policy.api_addresses == ()
    assert set(policy.api_extra) == {
        (ip_address("198.51.100.20"), 443),
        (ip_address("198.51.100.30"), 443),
    }
    rules = render(policy)
    assert "ip daddr 198.51.100.20 tcp dport 443 accept" in rules
    assert "104.16.208.203" not in rules


def test_pia_servers_are_reached_by_the_daemon_only_on_their_ports() -> None:
    rules = connected()
    assert "meta mark 0x0000ca6c ip daddr 203.0.113.11 tcp dport 1337 accept" in rules
    assert "meta mark 0x0000ca6c ip daddr 198.51.100.20 tcp dport 443 accept" in rules


def test_the_forwarded_port_comes_in_from_the_tunnel_only() -> None:
    without = connected()
    assert "forwarded port" not in without
    rules = connected(forwarded_port=47047)
    assert (
        'iifname "pia0" meta l4proto { tcp, udp } th dport 47047 accept comment "forwarded port"'
        in rules
    )
    assert "dnat" not in rules
    # Not in the other states, whatever the caller passes.
    connecting = render(
        policy_for_state(
            "connecting",
            lockdown=False,
            allow_lan=False,
            lan=(),
            endpoint=None,
            api_addresses=(),
            api_port=443,
            fwmark=0xCA6C,
            tunnel_interface=None,
            tunnel_dns=(),
            ipv6_tunnel=False,
            forwarded_port=47047,
        )
    )
    assert "47047" not in connecting


def test_gateway_mode_sends_the_port_to_one_lan_host() -> None:
    rules = connected(forwarded_port=47047, forward_port_to=(ip_address("192.168.7.20"), 8080))
    assert (
        'iifname "pia0" meta l4proto { tcp, udp } th dport 47047 dnat ip to 192.168.7.20:8080'
        in rules
    )
    assert (
        'iifname "pia0" ip daddr 192.168.7.20 meta l4proto { tcp, udp } th dport 8080 '
        "ct status dnat accept" in rules
    )


def test_iptables_lets_the_port_in_from_the_tunnel_only() -> None:
    rules = render_restore(connected_policy(forwarded_port=47047), 4, NOTHING_SAVED)
    for proto in ("tcp", "udp"):
        assert f"-A NORDWGD-INPUT -i pia0 -p {proto} -m {proto} --dport 47047 -j ACCEPT" in rules
    assert "DNAT" not in rules
    assert "*nat" not in rules


def test_iptables_sends_the_port_to_one_lan_host_in_gateway_mode() -> None:
    policy = connected_policy(
        forwarded_port=47047, forward_port_to=(ip_address("192.168.7.20"), 8080)
    )
    rules = render_restore(policy, 4, NOTHING_SAVED)
    nat = rules[rules.index("*nat") :]
    assert "-I PREROUTING 1 -j NORDWGD-PREROUTING" in nat
    for proto in ("tcp", "udp"):
        assert (
            f"-A NORDWGD-PREROUTING -i pia0 -p {proto} -m {proto} --dport 47047 "
            "-j DNAT --to-destination 192.168.7.20:8080" in nat
        )
        assert (
            f"-A NORDWGD-FORWARD -i pia0 -d 192.168.7.20 -p {proto} -m {proto} --dport 8080 "
            "-m conntrack --ctstate DNAT -j ACCEPT" in rules
        )
    assert (
        "-A NORDWGD-FORWARD -o pia0 -s 192.168.7.20 -m conntrack --ctstate DNAT "
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" in rules
    )
    # Forwarded before the chain's final drop.
    assert rules.index("--ctstate DNAT -j ACCEPT") < rules.index('"dropped_forward" -j DROP')
    # No DNAT to an IPv4 host in the IPv6 table; without the port the DNAT goes.
    assert "DNAT" not in render_restore(policy, 6, NOTHING_SAVED)
    saved = parse_save(rules.replace("-I PREROUTING 1", "-A PREROUTING"))
    after = render_restore(connected_policy(), 4, saved)
    assert "--to-destination" not in after
    assert ":NORDWGD-PREROUTING - [0:0]" in after  # declared again: flushed


def test_a_port_target_outside_the_local_networks_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="forward_to"):
        connected(forwarded_port=1, forward_port_to=(ip_address("203.0.113.9"), 80))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[port_forward]\nenabled = true\n", 'port_forward.enabled: needs provider = "pia"'),
        (
            'provider = "pia"\n[port_forward]\nforward_to = "192.168.1.5:80"\n',
            'port_forward.forward_to: needs network.mode = "gateway"',
        ),
        (
            'provider = "pia"\n[network]\nmode = "gateway"\n[port_forward]\n'
            'forward_to = "203.0.113.5:80"\n',
            "port_forward.forward_to",
        ),
        ('provider = "pia"\n[pia]\nmeta = ["198.51.100.1"]\n', "NAME@ADDRESS"),
        ('provider = "pia"\n[port_forward]\nhook = ["hook.sh"]\n', "absolute path"),
        ('provider = "expressvpn"\n', "must be one of nordvpn, pia"),
    ],
)
def test_impossible_pia_settings_are_refused_naming_the_key(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Path("/etc/nordwgd/nordwgd.toml"))
    assert words in caught.value.message
    assert caught.value.message.startswith("/etc/nordwgd/nordwgd.toml:")
