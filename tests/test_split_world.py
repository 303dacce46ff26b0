"""Excluded apps in the test world: real cgroups, real nftables, the real daemon.

The test stands in for systemd: it makes the excluded slice's cgroup itself (root-owned, as
systemd makes it) under a name unique to the run, and puts processes into it by writing
cgroup.procs before they enter the world's host namespace. The daemon runs under
``nsenter --net`` so that nft sees /sys/fs/cgroup (``ip netns exec`` mounts a /sys without it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from nordwgd.split import cgroups
from nordwgd.testing import netns as ns
from nordwgd.testing.world import World
from tests.fixtures_dbus import DaemonProcess, PrivateBus, running_daemon
from tests.test_gateway_mode import call, wait_state

NOBODY = "65534"  # nobody (setpriv takes ids; the group is nogroup)


class Cgroup:
    """A cgroup v2 directory made (and removed) by the test."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def make(self) -> None:
        self.directory.mkdir(parents=True)

    def remove(self) -> None:
        """Kill what is left in it, then remove it and its now empty parents up to the root."""
        with contextlib.suppress(OSError):
            for pid in (self.directory / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
        deadline = time.monotonic() + 5
        while self.directory.exists():
            try:
                self.directory.rmdir()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def run(
        self, netns: str, argv: Sequence[str], *, user: str | None = None, timeout: float = 15
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in this cgroup (joined before entering ``netns``), as ``user``."""
        join = f'echo $$ > "{self.directory}/cgroup.procs" && exec "$@"'
        inner = ["sh", "-c", join, "sh", *ns.exec_argv(netns, argv)]
        return subprocess.run(
            [*ns.user_argv(user), *inner] if user else inner,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture
def hierarchy() -> cgroups.Hierarchy:
    found = cgroups.detect()
    if found is None:
        pytest.skip("no cgroup v2 hierarchy under /sys/fs/cgroup")
    return found


@pytest.fixture
def slice_name() -> str:
    return f"nwgt{ns.RUN_ID}{secrets.token_hex(2)}-excluded.slice"


@pytest.fixture
def excluded(hierarchy: cgroups.Hierarchy, slice_name: str) -> Iterator[Cgroup]:
    group = Cgroup(hierarchy.mount / cgroups.slice_path(slice_name))
    group.make()
    try:
        yield group
    finally:
        group.remove()
        with contextlib.suppress(OSError):
            group.directory.parent.rmdir()


def curl(url: str, timeout: float = 3) -> list[str]:
    return ["curl", "-sS", "--max-time", str(timeout), url]


def fetch(world: World, group: Cgroup | None, *, user: str | None = None) -> str | None:
    """What the web server saw as our source address, None when nothing came back."""
    argv = curl(f"http://{world.web_address}/")
    if group is None:
        result = ns.ns_exec(world.host_ns, argv, user=user, check=False, timeout=10)
    else:
        result = group.run(world.host_ns, argv, user=user)
    return result.stdout.strip() if result.returncode == 0 else None


def resolve(world: World, group: Cgroup | None) -> subprocess.CompletedProcess[str]:
    argv = ["dig", "+short", "+time=2", "+tries=1", "web.test"]
    if group is None:
        return ns.ns_exec(world.host_ns, argv, check=False, timeout=10)
    return group.run(world.host_ns, argv)


def stations(world: World) -> set[str]:
    return {server.station for server in world.servers}


@contextlib.contextmanager
def split_daemon(
    world: World, bus: PrivateBus, tmp_path: Path, slice_name: str, **network: object
) -> Iterator[DaemonProcess]:
    config = world.write_config(
        tmp_path / "nordwgd.toml",
        split={"excluded_slice": slice_name},
        network=network,
        health={"handshake_timeout": 1.0},
    )
    with running_daemon(bus, world.host_ns, config, tmp_path / "daemon.log", keep_sys=True) as d:
        yield d


@pytest.mark.root
@pytest.mark.slow
def test_excluded_process_leaves_by_the_uplink_and_its_sibling_by_the_tunnel(
    world: World,
    excluded: Cgroup,
    slice_name: str,
    hierarchy: cgroups.Hierarchy,
    private_bus: PrivateBus,
    tmp_path: Path,
) -> None:
    assert world.leak_monitor is not None
    outsider = Cgroup(hierarchy.mount / f"nwgt{ns.RUN_ID}{secrets.token_hex(2)}-user")
    with split_daemon(world, private_bus, tmp_path, slice_name) as daemon:
        call(private_bus, "Connect", "a{sv}", {})
        wait_state(daemon, "connected")
        ruleset = ns.run(
            [
                "nsenter",
                f"--net=/run/netns/{world.host_ns}",
                "nft",
                "list",
                "table",
                "inet",
                "nordwgd_split",
            ]
        ).stdout
        match = cgroups.lookup(hierarchy, cgroups.slice_path(slice_name))
        assert match is not None
        assert match.levels == (2,)  # this machine: no cgroup namespace, a hybrid hierarchy
        assert f'socket cgroupv2 level 2 "{match.nft_path}"' in ruleset

        # The sibling (no cgroup of ours) goes through the tunnel; nothing leaks.
        world.leak_monitor.reset()
        assert fetch(world, None) in stations(world)
        assert world.leak_monitor.count() == 0, world.leak_monitor.leaks()

        # The excluded process reaches the web from the host's own address, by the uplink.
        assert fetch(world, excluded) == world.host_address, daemon.log_text()
        assert world.leak_monitor.count() > 0  # the monitor saw it leave outside the tunnel

        # Its DNS goes to the system's resolver (the one the tunnel DNS replaced), from the
        # host's address; the sibling's goes to the tunnel DNS through the tunnel.
        answer = resolve(world, excluded)
        assert answer.stdout.strip() == world.web_address, answer
        answer = resolve(world, None)
        assert answer.stdout.strip() == world.web_address, answer
        queries = world.dns_queries()
        assert any(q.server == world.lan_dns and q.client == world.host_address for q in queries)
        assert any(q.server == world.tunnel_dns and q.client in stations(world) for q in queries)
        assert not any(
            q.server == world.lan_dns and q.client != world.host_address for q in queries
        )

        # Another user cannot join the slice: it is root's, like the one systemd makes.
        joined = excluded.run(world.host_ns, curl(f"http://{world.web_address}/"), user=NOBODY)
        assert joined.returncode != 0
        assert "Permission denied" in joined.stderr
        # A cgroup of the same name elsewhere (say, in a user's delegated subtree) is not the
        # slice: nft matches the cgroup id, not a name.
        lookalike = Cgroup(outsider.directory / cgroups.slice_path(slice_name))
        lookalike.make()
        try:
            shutil.chown(lookalike.directory / "cgroup.procs", user=int(NOBODY))
            assert fetch(world, lookalike) in stations(world)
        finally:
            lookalike.remove()
            for parent in lookalike.directory.parents:
                if parent == hierarchy.mount:
                    break
                with contextlib.suppress(OSError):
                    parent.rmdir()

        # Error (no server answers): the sibling reaches nothing, the excluded process still
        # leaves by the uplink; the same in lockdown after a disconnect.
        for each in world.servers:
            world.silence_server(each.hostname)
        try:
            call(private_bus, "Reconnect")
            wait_state(daemon, "error")
            assert fetch(world, None) is None
            assert fetch(world, excluded) == world.host_address
        finally:
            for each in world.servers:
                world.unsilence_server(each.hostname)
        call(private_bus, "SetLockdown", "b", True)
        call(private_bus, "Disconnect")
        props = wait_state(daemon, "disconnected")
        assert props["Blocking"] == "blocked"
        assert fetch(world, None) is None
        assert fetch(world, excluded) == world.host_address
        # Another user (not in the slice) stays blocked too.
        assert fetch(world, None, user=NOBODY) is None

        # The slice made anew has a new cgroup id: the daemon loads its rules again.
        excluded.remove()
        excluded.make()
        deadline = time.monotonic() + 10
        while fetch(world, excluded) != world.host_address:
            assert time.monotonic() < deadline, daemon.log_text()
            time.sleep(0.5)
        call(private_bus, "SetLockdown", "b", False)
        assert daemon.stop() == 0, daemon.log_text()
    assert "nordwgd_split" not in world.host_exec(["nft", "list", "tables"]).stdout
