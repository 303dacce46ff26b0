"""Split tunnelling, pure parts: cgroup hierarchy detection, slice paths, bridge patterns, and
the rules (kill-switch additions and the split table) as nft accepts them."""

from __future__ import annotations

import secrets
import subprocess
import sys
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from nordwgd.config import ConfigError, load_config
from nordwgd.errors import InvalidArgument
from nordwgd.firewall.policy import FirewallPolicy, policy_for_state
from nordwgd.firewall.render import render
from nordwgd.model import Endpoint
from nordwgd.split import bridges, cgroups
from nordwgd.split.rules import EXCLUDED_CT_MARK, SplitPolicy, system_resolvers
from nordwgd.split.rules import render as render_split

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
UNIFIED = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw
"""
ELSEWHERE = "50 1 0:40 / /mnt/cg rw - cgroup2 cgroup2 rw\n"


INIT = cgroups.INIT_CGROUP_NS_INODE


def test_hierarchy_is_detected_unified_or_hybrid() -> None:
    hybrid = cgroups.detect(HYBRID, INIT)
    assert hybrid == cgroups.Hierarchy(Path("/sys/fs/cgroup/unified"), "unified", 0)
    assert hybrid.kind == "hybrid"
    unified = cgroups.detect(UNIFIED, INIT)
    assert unified == cgroups.Hierarchy(Path("/sys/fs/cgroup"), "", 0)
    assert unified.kind == "unified"
    # nft resolves paths below /sys/fs/cgroup only: a cgroup2 mount elsewhere does not count.
    assert cgroups.detect(ELSEWHERE, INIT) is None
    assert cgroups.detect("", INIT) is None


def test_depth_of_a_subtree_mount_and_of_a_cgroup_namespace() -> None:
    subtree = UNIFIED.replace(" / /sys/fs/cgroup ", " /machine.slice/box.scope /sys/fs/cgroup ")
    found = cgroups.detect(subtree, INIT)
    assert found is not None and found.depth == 2
    # In a cgroup namespace the root's depth is hidden: every level it could have.
    contained = cgroups.detect(HYBRID, INIT + 1000)
    assert contained is not None and contained.depth is None


def test_slice_names_nest_by_dashes() -> None:
    assert cgroups.slice_path("nordwgd-excluded.slice") == "nordwgd.slice/nordwgd-excluded.slice"
    assert cgroups.slice_path("a.slice") == "a.slice"
    assert cgroups.slice_path("a-b-c.slice") == "a.slice/a-b.slice/a-b-c.slice"
    for bad in ("excluded", "-.slice", "a--b.slice", "a/b.slice", "../x.slice", "a b.slice"):
        with pytest.raises(InvalidArgument, match="slice unit name"):
            cgroups.slice_path(bad)


def test_lookup_gives_nft_path_level_and_id(tmp_path: Path) -> None:
    (tmp_path / "nordwgd.slice" / "nordwgd-excluded.slice" / "run-u7.scope").mkdir(parents=True)
    hybrid = cgroups.Hierarchy(tmp_path, "unified")
    match = cgroups.lookup(hybrid, cgroups.slice_path("nordwgd-excluded.slice"))
    assert match is not None
    assert match.nft_path == "unified/nordwgd.slice/nordwgd-excluded.slice"
    assert match.levels == (2,)
    assert match.expressions() == (
        'socket cgroupv2 level 2 "unified/nordwgd.slice/nordwgd-excluded.slice"',
    )
    assert cgroups.members(match) == ("run-u7.scope",)
    unified = cgroups.lookup(cgroups.Hierarchy(tmp_path, ""), "nordwgd.slice")
    assert unified is not None and unified.nft_path == "nordwgd.slice" and unified.levels == (1,)
    deeper = cgroups.lookup(cgroups.Hierarchy(tmp_path, "", 3), "nordwgd.slice")
    assert deeper is not None and deeper.levels == (4,)
    unknown = cgroups.lookup(cgroups.Hierarchy(tmp_path, "", None), "nordwgd.slice")
    assert unknown is not None
    assert unknown.levels == tuple(range(1, 1 + cgroups.UNKNOWN_DEPTH_LEVELS))
    assert cgroups.lookup(hybrid, "missing.slice") is None
    # made anew: a new inode, which is what tells the daemon to load its rules again
    old = match.inode
    (tmp_path / "nordwgd.slice" / "nordwgd-excluded.slice" / "run-u7.scope").rmdir()
    (tmp_path / "nordwgd.slice" / "nordwgd-excluded.slice").rmdir()
    (tmp_path / "elsewhere").mkdir()  # keeps the old inode number from being reused at once
    (tmp_path / "nordwgd.slice" / "nordwgd-excluded.slice").mkdir()
    again = cgroups.lookup(hybrid, "nordwgd.slice/nordwgd-excluded.slice")
    assert again is not None and again.inode != old


def test_bridge_patterns() -> None:
    patterns = bridges.DEFAULT_BRIDGES
    for name in ("docker0", "br-0123456789ab", "virbr0", "podman1", "cni-podman0"):
        assert bridges.matches(name, patterns), name
    for name in ("eth0", "docker1", "wlan0", "nordlynx", "vethab12"):
        assert not bridges.matches(name, patterns), name
    assert bridges.check_patterns(("virbr*", "docker0", "docker0")) == ("docker0", "virbr*")
    for bad in ("", "a*b", "x" * 16, 'evil"', "two words", "*"):
        with pytest.raises(InvalidArgument, match="bridges"):
            bridges.check_patterns((bad,))


def test_bridges_present_are_bridges_that_match() -> None:
    links = [("docker0", "bridge"), ("br-1", "bridge"), ("eth0", "veth"), ("lan0", "bridge"),
             ("virbr0-nic", "tun"), ("lo", "")]  # fmt: skip
    assert bridges.present(bridges.DEFAULT_BRIDGES, links) == ("br-1", "docker0")


@pytest.mark.root
def test_bridges_present_reads_this_namespace() -> None:
    name = f"nwgt-br{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        # from inside an event loop, as the daemon's property getter calls it
        code = (
            "import asyncio; from nordwgd.split import bridges\n"
            "async def main(): print(','.join(bridges.present(('docker0', 'br-*'))))\n"
            "asyncio.run(main())"
        )
        subprocess.run(["ip", "-n", name, "link", "add", "docker0", "type", "bridge"], check=True)
        # nsenter keeps the machine's /sys: the answer must still be this namespace's links
        seen = subprocess.run(
            ["nsenter", f"--net=/run/netns/{name}", sys.executable, "-c", code],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert seen == "docker0"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_config_split_section(tmp_path: Path) -> None:
    path = tmp_path / "nordwgd.toml"
    path.write_text('[split]\nexcluded_slice = "x-y.slice"\nbridges = ["lxcbr0", "docker0"]\n')
    config = load_config(path)
    assert config.split.excluded_slice == "x-y.slice"
    assert config.split.bridges == ("docker0", "lxcbr0")
    for text, words in (
        ('[split]\nexcluded_slice = "x"\n', ("split.excluded_slice", "slice unit name")),
        ('[split]\nbridges = "docker0"\n', ("split.bridges", "list")),
        ('[split]\nbridges = ["a b"]\n', ("split.bridges", "'a b'")),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError) as raised:
            load_config(path)
        for word in words:
            assert word in str(raised.value)


def make(state: str, **overrides: Any) -> FirewallPolicy:
    arguments: dict[str, Any] = {
        "lockdown": True,
        "allow_lan": True,
        "lan": (ip_network("192.168.77.0/24"),),
        "endpoint": Endpoint(ip_address("203.0.113.11")),
        "api_addresses": (ip_address("198.51.100.20"),),
        "api_port": 443,
        "fwmark": 0xCA6C,
        "tunnel_interface": "nordlynx" if state == "connected" else None,
        "tunnel_dns": (ip_address("10.5.0.1"),),
        "ipv6_tunnel": False,
        "excluded_ct_mark": EXCLUDED_CT_MARK,
        "bridges": bridges.DEFAULT_BRIDGES,
    }
    arguments.update(overrides)
    return policy_for_state(state, **arguments)


STATES = ("connecting", "connected", "reconnecting", "disconnecting", "error", "disconnected")


@pytest.mark.parametrize("state", STATES)
def test_excluded_apps_are_accepted_in_every_blocking_state(state: str) -> None:
    script = render(make(state))
    assert f"ct mark 0x{EXCLUDED_CT_MARK:08x} accept" in script
    # before the DNS drop: their DNS goes to the system's resolver, not the tunnel DNS
    assert script.index("ct mark 0x") < script.index("counter name dropped_dns drop")
    assert "ct mark" not in render(make(state, excluded_ct_mark=0))


def test_bridges_forward_only_into_the_tunnel() -> None:
    connected = render(make("connected"))
    assert 'iifname @local_bridges oifname "nordlynx" meta nfproto ipv4 accept' in connected
    assert 'iifname @local_bridges oifname "nordlynx" masquerade' in connected
    assert "dnat ip to 10.5.0.1" in connected  # their DNS goes to the tunnel DNS
    for state in ("connecting", "reconnecting", "error", "disconnected"):
        script = render(make(state))
        assert "oifname @local_bridges" in script  # the host still reaches its containers
        assert '"nordlynx"' not in script  # but nothing is forwarded anywhere
        forward = script[script.index("chain forward") :]
        assert "iifname @local_bridges ip daddr @lan_v4 accept" in forward
        no_lan = render(make(state, allow_lan=False))
        assert "ip daddr @lan_v4" not in no_lan
    # policies without split fields keep their digest (and so their marker)
    plain = make("connected", excluded_ct_mark=0, bridges=())
    assert plain.digest != make("connected").digest
    assert "local_bridges" not in render(plain)


@pytest.mark.root
@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("allow_lan", [False, True])
def test_kill_switch_with_split_is_accepted_by_nft(state: str, allow_lan: bool) -> None:
    result = subprocess.run(
        ["unshare", "--net", "nft", "--check", "-f", "-"],
        input=render(make(state, allow_lan=allow_lan)),
        text=True,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_system_resolvers_come_from_the_replaced_resolv_conf(tmp_path: Path) -> None:
    backup = tmp_path / "resolv.conf.backup"
    backup.write_text(
        "# original\nnameserver 192.168.1.1\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\n"
        "nameserver 192.168.1.1\nnameserver nonsense\nsearch lan\n"
    )
    assert system_resolvers(backup) == (ip_address("192.168.1.1"), ip_address("fe80::1"))
    assert system_resolvers(tmp_path / "missing") == ()


@pytest.mark.root
def test_split_table_is_accepted_by_nft_with_a_real_cgroup() -> None:
    hierarchy = cgroups.detect()
    if hierarchy is None:
        pytest.skip("no cgroup v2 hierarchy under /sys/fs/cgroup")
    name = f"nwgt-check{secrets.token_hex(3)}.slice"
    directory = hierarchy.mount / name
    directory.mkdir()
    try:
        match = cgroups.lookup(hierarchy, name)
        assert match is not None
        policy = SplitPolicy(
            excluded=match,
            fwmark=0xCA6C,
            tunnel_interface="nordlynx",
            resolvers=(ip_address("192.168.1.1"), ip_address("fd00::53")),
        )
        script = render_split(policy)
        assert "dnat ip to 192.168.1.1" in script and "dnat ip6 to fd00::53" in script
        # unshare --net keeps this mount namespace's /sys, so nft finds the cgroup
        result = subprocess.run(
            ["unshare", "--net", "nft", "--check", "-f", "-"],
            input=script,
            text=True,
            capture_output=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert render_split(SplitPolicy(None, 0xCA6C, "nordlynx")).count("table") == 2
    finally:
        directory.rmdir()


def test_sync_never_raises_when_the_rules_cannot_be_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without nft (or with nft refusing) excluded apps stay in the tunnel; the caller, the
    engine applying the kill switch, goes on."""
    import asyncio

    from nordwgd.config import Config
    from nordwgd.split import excluded as excluded_module
    from nordwgd.split import rules

    (tmp_path / "nordwgd.slice" / "nordwgd-excluded.slice").mkdir(parents=True)
    apps = excluded_module.ExcludedApps(Config())
    monkeypatch.setattr(apps, "_hierarchy", cgroups.Hierarchy(tmp_path, "", 0))
    loaded: list[str] = []

    def missing_nft(script: str) -> tuple[int, str]:
        loaded.append(script)
        raise FileNotFoundError(2, "No such file or directory", "nft")

    async def scenario() -> None:
        monkeypatch.setattr(rules, "_nft", missing_nft)
        await apps.sync(connected=True)
        monkeypatch.setattr(rules, "_nft", lambda script: (1, "Error: no such cgroup"))
        (tmp_path / "nordwgd.slice" / "nordwgd-excluded.slice").rmdir()
        (tmp_path / "other").mkdir()
        (tmp_path / "nordwgd.slice" / "nordwgd-excluded.slice").mkdir()
        await apps.sync()  # a new cgroup: tried again, refused, still no exception
        await apps.close()

    asyncio.run(scenario())
    assert loaded and "socket cgroupv2 level 2" in loaded[0]
