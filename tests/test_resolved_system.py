"""nordwgd's DNS through the real systemd-resolved, in a throw-away nspawn container.

systemd-resolved is never installed on this machine (its package turns /etc/resolv.conf into a
link to a stub nobody runs here). The test downloads the package matching the installed systemd
into ``.cache/debs/`` and installs it inside a container only, whose root is a tmpfs overlay.

Inside, a veth pair stands in for the tunnel: ``tun`` in the container's network namespace, its
peer in a namespace ``far`` that runs a DNS server at the tunnel resolver's address. The code
under test runs in ``tests/resolved_driver.py`` (one process per step, so a killed process and
its successor are real). A last test brings a whole Connection up with wireguard-go.
"""

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

pytestmark = [pytest.mark.nspawn, pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
DEB_CACHE = REPO / ".cache" / "debs"
DEB_IN_CONTAINER = "/var/tmp/systemd-resolved.deb"
DRIVER = str(REPO / "tests" / "resolved_driver.py")
PYTHON = sys.executable
RESOLVE1 = ("org.freedesktop.resolve1", "/org/freedesktop/resolve1",
            "org.freedesktop.resolve1.Manager")  # fmt: skip

TUNNEL_DNS = "198.18.53.1"  # answers, in the far namespace
SECOND_DNS = "fd53::1"  # an IPv6 resolver, to check both address families reach resolved
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
    with boot_container(install=False, files={DEB_IN_CONTAINER: deb.read_bytes()}) as container:
        # The image's policy-rc.d keeps dpkg from starting the service; we start it ourselves.
        container.run(["dpkg", "-i", DEB_IN_CONTAINER], timeout=180)
        container.run(["systemctl", "start", "systemd-resolved.service"])
        assert container.unit_property("systemd-resolved.service", "ActiveState") == "active"
        yield container


def veth_to_dns_server(box: Container, tag: str, address: str, server: str,
                       answer: str) -> Link:
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
    link = veth_to_dns_server(box, "tun", TUNNEL_ADDRESS, TUNNEL_DNS, PROBE_ANSWER)
    # A second, IPv6 resolver (silent) checks that both address families reach resolved.
    box.run(["ip", "address", "add", "fd53::2/64", "dev", link.name, "nodad"])
    return link


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


def link_settings(box: Container, ifname: str) -> dict[str, Any]:
    """resolved's per-link properties DNS, Domains and DefaultRoute, as busctl's JSON."""
    ifindex = box.run(["cat", f"/sys/class/net/{ifname}/ifindex"]).stdout.strip()
    reply = box.run(["busctl", "--system", "--json=short", "call", *RESOLVE1, "GetLink", "i",
                     ifindex]).stdout  # fmt: skip
    path = json.loads(reply)["data"][0]
    settings: dict[str, Any] = {}
    for name in ("DNS", "Domains", "DefaultRoute"):
        out = box.run(["busctl", "--system", "--json=short", "get-property", RESOLVE1[0], path,
                       "org.freedesktop.resolve1.Link", name]).stdout  # fmt: skip
        settings[name] = json.loads(out)["data"]
    return settings


def resolvectl(box: Container, *args: str) -> str:
    return box.run(["resolvectl", "--no-pager", *args]).stdout.strip()


def resolvectl_servers(box: Container, ifname: str) -> list[str]:
    # "Link 3 (tun0a1b2c): 198.18.53.1 fd53::1"
    line = resolvectl(box, "dns", ifname)
    return line.split(":", 1)[1].split() if ":" in line else []


def assert_applied(box: Container, ifname: str, servers: list[str]) -> None:
    assert resolvectl_servers(box, ifname) == servers
    assert resolvectl(box, "domain", ifname).endswith(f"({ifname}): ~.")
    assert resolvectl(box, "default-route", ifname).endswith(f"({ifname}): yes")
    settings = link_settings(box, ifname)
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


def lookup(box: Container) -> tuple[str, str]:
    """(address, link) of resolved's answer for PROBE_NAME, bypassing its cache."""
    answer = resolvectl(box, "query", "--cache=no", "--legend=no", PROBE_NAME)
    found = re.search(rf"^{re.escape(PROBE_NAME)}: (\S+)\s+-- link: (\S+)$", answer, re.M)
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
    links = box.run(["busctl", "--system", "--json=short", "call", *RESOLVE1, "GetLink", "i",
                     str(up["ifindex"])], check=False)  # fmt: skip
    assert links.returncode != 0  # resolved no longer knows the link


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
