"""nordwgd's DNS through the real systemd-resolved, in throw-away nspawn containers.

systemd-resolved is never installed on this machine (its package turns /etc/resolv.conf into a
link to a stub nobody runs here). The tests download the package matching the installed systemd
into ``.cache/debs/`` and ``dpkg -i`` it inside a container only: the container's root is an
overlay of this machine's with its writable layer on a tmpfs, so the cached file is already
there and the installation vanishes with the container.

First, nordwgd.dns and Connection driven directly (``tests/resolved_driver.py``, one process
per step, so a killed process and its successor are real processes). A veth pair stands in for
the tunnel: one end in the container's network namespace, the other in a namespace running a
DNS server at the tunnel resolver's address; a second pair is the uplink with its own resolver.
Then the installed daemon under systemd in the test world, with resolved in the world's host
namespace beside it."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nordwgd.testing.nspawn import Container, boot_container
from nordwgd.testing.systemworld import (
    BUS,
    DAEMON,
    IN_WORLD_DROPIN,
    KILLSWITCH,
    WORLD_DIR,
    SystemWorld,
    boot_world,
    busctl,
    connect_and_wait,
    get_property,
    kill_main_process,
    wait_for_connected,
    wait_restarted,
)
from nordwgd.testing.world import TUNNEL_DNS as TUNNEL_WORLD_DNS

pytestmark = [pytest.mark.nspawn, pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
DEB_CACHE = REPO / ".cache" / "debs"
DRIVER = str(REPO / "tests" / "resolved_driver.py")
PYTHON = sys.executable
RESOLVE1 = ("org.freedesktop.resolve1", "/org/freedesktop/resolve1",
            "org.freedesktop.resolve1.Manager")  # fmt: skip

TUNNEL_DNS = "198.18.53.1"  # answers, in the far namespace
SECOND_DNS = "fd53::1"  # silent; checks that IPv6 resolver addresses reach resolved too
TUNNEL_ADDRESS = "198.18.53.2"
PROBE_NAME = "probe.example"
PROBE_ANSWER = "192.0.2.77"  # the tunnel resolver's answer
LAN_ADDRESS = "198.18.63.2"
LAN_DNS = "198.18.63.1"
LAN_ANSWER = "192.0.2.88"  # the uplink resolver's answer


# --- the package -----------------------------------------------------------------------------


def installed_systemd_version() -> str:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "systemd"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    if result.returncode != 0 or not result.stdout:
        pytest.skip("systemd is not installed as a Debian package here")
    return result.stdout.strip()


def systemd_resolved_deb() -> Path:
    """The systemd-resolved .deb matching the installed systemd, downloaded on first use.

    Skips only when apt cannot download it (no package lists or no mirror reachable).
    """
    version = installed_systemd_version()
    # Debian file names drop the epoch ("1:2.3" -> "2.3").
    pattern = f"systemd-resolved_{version.split(':', 1)[-1]}_*.deb"
    found = sorted(DEB_CACHE.glob(pattern))
    if found:
        return found[0]
    DEB_CACHE.mkdir(parents=True, exist_ok=True)
    # Into a private directory first: a concurrent run never sees half a file.
    scratch = Path(tempfile.mkdtemp(prefix="download-", dir=DEB_CACHE))
    try:
        command = ["apt-get", "download", "-q", "-o", "Acquire::http::Timeout=20",
                   "-o", "APT::Sandbox::User=root", f"systemd-resolved={version}"]  # fmt: skip
        try:
            result = subprocess.run(command, cwd=scratch, capture_output=True, text=True,
                                    timeout=180, check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot download systemd-resolved ({' '.join(command)}): {exc}")
        downloaded = sorted(scratch.glob(pattern))
        if result.returncode != 0 or not downloaded:
            pytest.skip(f"cannot download systemd-resolved ({' '.join(command)}): "
                        f"{result.stderr.strip() or result.stdout.strip()}")  # fmt: skip
        target = DEB_CACHE / downloaded[0].name
        downloaded[0].replace(target)
        return target
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- the container ---------------------------------------------------------------------------


@dataclass
class Link:
    name: str  # a link in the container's network namespace
    address: str  # its address
    far: str  # the namespace holding the peer end and a DNS server
    dns_log: str  # that DNS server's query log, one JSON line per query


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``check`` until it holds; the timeout only bounds a hang, it is not a measurement."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def read_line(process: subprocess.Popen[str], timeout: float = 60.0) -> str:
    import selectors

    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError("no answer from the process inside the container")
    line = process.stdout.readline()
    if not line:
        assert process.stderr is not None
        raise AssertionError(f"the process inside the container exited: {process.stderr.read()}")
    return line


@pytest.fixture(scope="module")
def box() -> Iterator[Container]:
    deb = systemd_resolved_deb()
    with boot_container(install=False) as container:
        # The image's policy-rc.d keeps dpkg from starting the service; we start it ourselves.
        container.run(["dpkg", "-i", str(deb)], timeout=180)
        container.run(["systemctl", "start", "systemd-resolved.service"])
        assert container.unit_property("systemd-resolved.service", "ActiveState") == "active"
        yield container


def veth_to_dns_server(box: Container, tag: str, address: str, server: str, answer: str) -> Link:
    """A veth link (``address``/24) whose peer namespace runs a DNS server at ``server``.

    The server answers PROBE_NAME with ``answer``, so a reply tells which server gave it.
    """
    suffix = secrets.token_hex(3)
    link, peer, far = f"{tag}{suffix}", f"far{suffix}", f"far-{suffix}"
    script = f"""set -eu
ip netns add {far}
ip link add {link} type veth peer name {peer}
ip link set {peer} netns {far}
ip address add {address}/24 dev {link}
ip link set {link} up
ip -n {far} link set lo up
ip -n {far} address add {server}/24 dev {peer}
ip -n {far} link set {peer} up
"""
    box.run(["sh", "-c", script])
    dns_log = f"/run/dns-{suffix}.log"
    # The container's teardown stops the server with everything else inside.
    process = box.popen(["ip", "netns", "exec", far, PYTHON, "-m", "nordwgd.testing.dnsserver",
                         "--listen", f"{server}:53", "--log", dns_log,
                         "--record", f"{PROBE_NAME}={answer}"])  # fmt: skip
    assert read_line(process).strip() == "ready"
    return Link(name=link, address=address, far=far, dns_log=dns_log)


@pytest.fixture(scope="module")
def tunnel(box: Container) -> Link:
    """Stands in for the WireGuard link; its peer runs the tunnel resolver."""
    return veth_to_dns_server(box, "tun", TUNNEL_ADDRESS, TUNNEL_DNS, PROBE_ANSWER)


@pytest.fixture(scope="module")
def lan(box: Container) -> Link:
    """The uplink, with the resolver a DHCP server would have handed out."""
    return veth_to_dns_server(box, "lan", LAN_ADDRESS, LAN_DNS, LAN_ANSWER)


# --- reading resolved's view -----------------------------------------------------------------


def driver(box: Container, *args: str) -> dict[str, Any]:
    result = box.run([PYTHON, DRIVER, *args], check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    answer: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return answer


def hold(box: Container, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start the driver with ``--hold``: it stays alive with its change applied."""
    process = box.popen([PYTHON, DRIVER, *args, "--hold"])
    answer: dict[str, Any] = json.loads(read_line(process))
    return process, answer


def kill_inside(box: Container, pid: int) -> None:
    """SIGKILL a process by its PID in the container; returns once it is gone."""
    box.run(["kill", "-KILL", str(pid)])
    wait_for(f"process {pid} to die",
             lambda: box.run(["kill", "-0", str(pid)], check=False).returncode != 0)  # fmt: skip


def inside(netns: str | None, argv: list[str]) -> list[str]:
    """``argv`` run in network namespace ``netns`` (None: the container's own)."""
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def ifindex_of(box: Container, ifname: str, netns: str | None = None) -> str:
    return box.run(inside(netns, ["cat", f"/sys/class/net/{ifname}/ifindex"])).stdout.strip()


def link_settings(box: Container, ifname: str, netns: str | None = None) -> dict[str, Any]:
    """resolved's per-link properties DNS, Domains and DefaultRoute, as busctl's JSON."""
    ifindex = ifindex_of(box, ifname, netns)
    reply = box.run(["busctl", "--system", "--json=short", "call", *RESOLVE1, "GetLink", "i",
                     ifindex]).stdout  # fmt: skip
    path = json.loads(reply)["data"][0]
    settings: dict[str, Any] = {}
    for name in ("DNS", "Domains", "DefaultRoute"):
        out = box.run(["busctl", "--system", "--json=short", "get-property", RESOLVE1[0], path,
                       "org.freedesktop.resolve1.Link", name]).stdout  # fmt: skip
        settings[name] = json.loads(out)["data"]
    return settings


def resolved_knows(box: Container, ifindex: str) -> bool:
    """Whether resolved has link ``ifindex`` (False once the link is deleted)."""
    result = box.run(["busctl", "--system", "call", *RESOLVE1, "GetLink", "i", ifindex],
                     check=False)  # fmt: skip
    if result.returncode == 0:
        return True
    assert f"Link {ifindex} not known" in result.stderr, result.stderr
    return False


def resolvectl(box: Container, *args: str, netns: str | None = None) -> str:
    # resolvectl maps link names to indexes in its own network namespace.
    return box.run(inside(netns, ["resolvectl", "--no-pager", *args])).stdout.strip()


def resolvectl_servers(box: Container, ifname: str, netns: str | None = None) -> list[str]:
    # "Link 3 (tun0a1b2c): 198.18.53.1 fd53::1"
    line = resolvectl(box, "dns", ifname, netns=netns)
    return line.split(":", 1)[1].split() if ":" in line else []


def assert_applied(
    box: Container, ifname: str, servers: list[str], netns: str | None = None
) -> None:
    assert resolvectl_servers(box, ifname, netns) == servers
    assert resolvectl(box, "domain", ifname, netns=netns).endswith(f"({ifname}): ~.")
    assert resolvectl(box, "default-route", ifname, netns=netns).endswith(f"({ifname}): yes")
    settings = link_settings(box, ifname, netns)
    families = {4: 2, 6: 10}  # AF_INET, AF_INET6 as resolved reports them
    expected = [[families[6 if ":" in server else 4], list(_packed(server))] for server in servers]
    assert settings["DNS"] == expected
    assert settings["Domains"] == [[".", True]]  # the routing-only root domain
    assert settings["DefaultRoute"] is True


def assert_reverted(box: Container, ifname: str) -> None:
    assert resolvectl_servers(box, ifname) == []
    assert not resolvectl(box, "domain", ifname).endswith("~.")
    settings = link_settings(box, ifname)
    assert settings["DNS"] == []
    assert settings["Domains"] == []


def _packed(address: str) -> bytes:
    from ipaddress import ip_address

    return ip_address(address).packed


def queries(box: Container, link: Link) -> list[dict[str, Any]]:
    text = box.run(["cat", link.dns_log], check=False).stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def lookup(box: Container, name: str = PROBE_NAME, netns: str | None = None) -> tuple[str, str]:
    """(address, link) of resolved's answer for ``name``, bypassing its cache."""
    answer = resolvectl(box, "query", "--cache=no", "--legend=no", name, netns=netns)
    found = re.search(rf"^{re.escape(name)}: (\S+)\s+-- link: (\S+)$", answer, re.M)
    assert found is not None, answer
    return found[1], found[2]


# --- the tests -------------------------------------------------------------------------------


def test_apply_routes_every_name_to_the_tunnel_and_undo_reverts(
    box: Container, tunnel: Link
) -> None:
    runtime = f"/run/nordwgd-test-{secrets.token_hex(3)}"
    assert_reverted(box, tunnel.name)

    applied = driver(box, "apply", "--runtime-dir", runtime, "--link", tunnel.name,
                     "--server", TUNNEL_DNS, "--server", SECOND_DNS)  # fmt: skip
    assert applied["mode"] == "resolved"  # detected from resolve1 on the system bus
    assert applied["steps"] == [{"step": "dns", "mode": "resolved",
                                 "ifindex": applied["ifindex"], "ifname": tunnel.name}]  # fmt: skip
    assert_applied(box, tunnel.name, [TUNNEL_DNS, SECOND_DNS])

    # A name in no domain of any link now goes through the tunnel link to its resolver.
    assert lookup(box) == (PROBE_ANSWER, tunnel.name)
    asked = [query for query in queries(box, tunnel) if query.get("name") == PROBE_NAME]
    assert asked, queries(box, tunnel)
    assert all(query["client"].startswith(TUNNEL_ADDRESS) for query in asked), asked

    undone = driver(box, "undo", "--runtime-dir", runtime)
    assert [step["mode"] for step in undone["undone"]] == ["resolved"]
    assert undone["left"] == []
    assert_reverted(box, tunnel.name)
    # Undoing twice is harmless (the journal is empty; RevertLink is idempotent too).
    assert driver(box, "undo", "--runtime-dir", runtime)["undone"] == []


def test_settings_of_a_killed_process_are_reverted_by_the_next(
    box: Container, tunnel: Link
) -> None:
    runtime = f"/run/nordwgd-test-{secrets.token_hex(3)}"
    assert_reverted(box, tunnel.name)
    process, applied = hold(box, "apply", "--runtime-dir", runtime, "--link", tunnel.name,
                            "--server", TUNNEL_DNS)  # fmt: skip
    assert applied["mode"] == "resolved"
    assert_applied(box, tunnel.name, [TUNNEL_DNS])

    kill_inside(box, applied["pid"])
    process.wait(timeout=10)
    # resolved keeps a link's settings after their writer died: someone must revert them.
    assert_applied(box, tunnel.name, [TUNNEL_DNS])
    assert box.run(["test", "-s", f"{runtime}/connection.json"]).returncode == 0

    recovered = driver(box, "recover", "--runtime-dir", runtime,
                       "--interface", f"nx{secrets.token_hex(3)}")  # fmt: skip
    assert recovered["left"] == []
    assert_reverted(box, tunnel.name)


def test_recovery_after_the_link_is_gone(box: Container) -> None:
    """resolved forgets a deleted link; reverting it then is not an error (NoSuchLink)."""
    runtime = f"/run/nordwgd-test-{secrets.token_hex(3)}"
    link = f"gone{secrets.token_hex(3)}"
    box.run(["ip", "link", "add", link, "type", "veth", "peer", "name", f"p{link}"])
    box.run(["ip", "address", "add", "198.18.73.2/24", "dev", link])
    box.run(["ip", "link", "set", link, "up"])
    process, applied = hold(box, "apply", "--runtime-dir", runtime, "--link", link,
                            "--server", TUNNEL_DNS)  # fmt: skip
    assert_applied(box, link, [TUNNEL_DNS])
    kill_inside(box, applied["pid"])
    process.wait(timeout=10)
    box.run(["ip", "link", "delete", link])
    wait_for("resolved to drop the link", lambda: not resolved_knows(box, str(applied["ifindex"])))

    recovered = driver(box, "recover", "--runtime-dir", runtime,
                       "--interface", f"nx{secrets.token_hex(3)}")  # fmt: skip
    assert recovered["left"] == []


def test_connection_over_wireguard_go_uses_resolved(box: Container) -> None:
    """A whole Connection: a userspace WireGuard link gets the DNS; a successor recovers."""
    runtime = f"/run/nordwgd-test-{secrets.token_hex(3)}"
    interface = f"nwg{secrets.token_hex(3)}"
    process, up = hold(box, "up", "--runtime-dir", runtime, "--interface", interface,
                       "--server", TUNNEL_DNS)  # fmt: skip
    assert [step["step"] for step in up["steps"]][-1] == "dns"
    assert up["steps"][-1] == {"step": "dns", "mode": "resolved", "ifindex": up["ifindex"],
                               "ifname": interface}  # fmt: skip
    assert_applied(box, interface, [TUNNEL_DNS])
    # The only link resolved may send names to is the tunnel.
    assert resolvectl(box, "default-route", interface).endswith(": yes")

    kill_inside(box, up["pid"])
    process.wait(timeout=10)
    assert_applied(box, interface, [TUNNEL_DNS])  # the link and its DNS outlived the process

    recovered = driver(box, "recover", "--runtime-dir", runtime, "--interface", interface)
    assert recovered["left"] == []
    assert box.run(["ip", "link", "show", interface], check=False).returncode != 0
    assert not resolved_knows(box, str(up["ifindex"]))


def test_the_uplink_resolver_is_not_asked_while_the_tunnel_dns_is_set(
    box: Container, tunnel: Link, lan: Link
) -> None:
    runtime = f"/run/nordwgd-test-{secrets.token_hex(3)}"
    box.run(["resolvectl", "dns", lan.name, LAN_DNS])
    try:
        # Without nordwgd's settings, names go to the uplink's resolver.
        assert lookup(box) == (LAN_ANSWER, lan.name)
        asked_on_lan = len(queries(box, lan))
        driver(box, "apply", "--runtime-dir", runtime, "--link", tunnel.name,
               "--server", TUNNEL_DNS)  # fmt: skip
        try:
            # resolved still treats the uplink as a default route for DNS ...
            assert resolvectl(box, "default-route", lan.name).endswith(": yes")
            # ... but "~." on the tunnel claims every name, so the uplink resolver hears nothing.
            for _ in range(3):
                assert lookup(box) == (PROBE_ANSWER, tunnel.name)
            assert len(queries(box, lan)) == asked_on_lan, queries(box, lan)
        finally:
            driver(box, "undo", "--runtime-dir", runtime)
        assert lookup(box) == (LAN_ANSWER, lan.name)
    finally:
        box.run(["resolvectl", "revert", lan.name])


# --- the installed daemon under systemd, with resolved beside it -----------------------------

# resolved runs in the world's host namespace too, as it would on the machine nordwgd runs on.
# LLMNR and mDNS are off: their multicast chatter on the uplink is resolved's, not nordwgd's.
RESOLVED_FILES = {
    "/etc/systemd/system/systemd-resolved.service.d/50-test-world.conf": IN_WORLD_DROPIN,
    "/etc/systemd/resolved.conf.d/50-test.conf": "[Resolve]\nLLMNR=no\nMulticastDNS=no\n",
}


@pytest.fixture
def world() -> Iterator[SystemWorld]:
    """A booted world with systemd-resolved running, nordwgd.service not yet started.

    The uplink has the LAN resolver as its link DNS, as DHCP would have set it.
    """
    deb = systemd_resolved_deb()
    with boot_world(lockdown=False, enable=(KILLSWITCH,), files=RESOLVED_FILES) as world:
        box = world.box
        box.run(["dpkg", "-i", str(deb)], timeout=180)
        box.run(["systemctl", "start", "systemd-resolved.service"])
        world.host(["resolvectl", "dns", "eth0", world.info["lan_dns"]])
        try:
            yield world
        finally:
            box.run(["systemctl", "stop", DAEMON], check=False)


def world_queries(world: SystemWorld, name: str) -> list[dict[str, Any]]:
    text = world.box.run(["cat", f"{WORLD_DIR}/dns.log"], check=False).stdout
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [entry for entry in entries if entry.get("name") == name]


def test_daemon_points_resolved_at_the_tunnel_and_back(world: SystemWorld) -> None:
    box, host = world.box, world.host_ns
    web, interface = world.info["web"], world.info["interface"]
    # Disconnected: names go to the uplink's resolver.
    assert lookup(box, "web.test", host) == (web, "eth0")
    assert {entry["server"] for entry in world_queries(world, "web.test")} == {
        world.info["lan_dns"]
    }

    box.run(["systemctl", "start", DAEMON])
    world.reset_leaks()
    connect_and_wait(box)
    # The hardened unit may change resolved's settings.
    assert_applied(box, interface, [TUNNEL_WORLD_DNS], host)
    ifindex = ifindex_of(box, interface, host)

    before = len(world_queries(world, "web.test"))
    assert lookup(box, "web.test", host) == (web, interface)
    asked = world_queries(world, "web.test")[before:]
    # Through the tunnel: the tunnel resolver saw a VPN server's address.
    assert asked, box.journal("systemd-resolved.service")
    assert {entry["server"] for entry in asked} == {TUNNEL_WORLD_DNS}
    assert {entry["client"] for entry in asked} <= world.stations, asked
    assert world.leaks() == []

    busctl(box, "call", *BUS, "Disconnect")
    wait_for("the disconnect", lambda: get_property(box, "State") == 's "disconnected"')
    assert not resolved_knows(box, ifindex)  # the tunnel and resolved's settings for it are gone
    assert lookup(box, "web.test", host) == (web, "eth0")
    box.run(["systemctl", "stop", DAEMON])
    assert box.unit_property(DAEMON, "Result") == "success"


def test_killed_daemon_restarts_and_points_resolved_at_the_new_tunnel(
    world: SystemWorld,
) -> None:
    box, host = world.box, world.host_ns
    interface = world.info["interface"]
    box.run(["systemctl", "start", DAEMON])
    connect_and_wait(box)
    first = ifindex_of(box, interface, host)
    killed, restarts = kill_main_process(box)
    wait_restarted(box, killed, restarts)
    # The successor reverted the dead process's DNS step (its link went with the old process's
    # wireguard-go: resolved answers NoSuchLink, which is not an error) and reconnected.
    wait_for_connected(box)
    journal = box.journal(DAEMON, lines=400)
    assert f"resolvectl revert {interface}" in journal, journal
    assert "cannot undo dns" not in journal, journal
    second = ifindex_of(box, interface, host)
    assert second != first
    assert_applied(box, interface, [TUNNEL_WORLD_DNS], host)
    assert lookup(box, "web.test", host) == (world.info["web"], interface)
    busctl(box, "call", *BUS, "Disconnect")
    wait_for("the disconnect", lambda: get_property(box, "State") == 's "disconnected"')
