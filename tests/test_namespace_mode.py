"""Namespace mode with the real daemon in the test world: a namespace whose only way out is the
tunnel, the host left alone, and nothing left behind after a disconnect or a SIGKILL.

The daemon is started with only its network namespace switched (``nsenter --net``), as a
service started by systemd shares the system's mount namespace: the namespace it makes under
/run/netns is then visible to the test (and to services joining it), not only to itself.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nordwgd.netns_mode import RESOLV_CONF_HEADER
from nordwgd.testing import netns as ns
from nordwgd.testing.world import World
from nordwgd.wireguard.uapi import socket_path
from tests.fixtures_dbus import PYTHON, REPO, PrivateBus, call_as

pytestmark = pytest.mark.root

STATE_TIMEOUT = 60.0
INTERFACE = "org.nordwgd.Nordwgd1.Manager"

# Waits for one line on stdin, then tries a TCP connection and prints the outcome.
_PROBE = r"""
import socket, sys
sys.stdin.readline()
try:
    socket.create_connection((sys.argv[1], 80), timeout=3).close()
    print("connected", flush=True)
except OSError as error:
    print(f"errno {error.errno}", flush=True)
"""


class Daemon:
    """``python -m nordwgd`` in the world's host network namespace (system mount namespace)."""

    def __init__(self, bus: PrivateBus, world: World, config: Path, log: Path) -> None:
        self.bus, self.world, self.config, self.log = bus, world, config, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {key: value for key, value in os.environ.items() if key in ("PATH", "LANG")}
        env.update(PYTHONPATH=str(REPO), DBUS_SYSTEM_BUS_ADDRESS=self.bus.address)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "nsenter",
                    f"--net=/run/netns/{self.world.host_ns}",
                    PYTHON,
                    "-m",
                    "nordwgd",
                    "--config",
                    str(self.config),
                    "--log-level",
                    "debug",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        deadline = time.monotonic() + 30
        while not self.bus.name_has_owner():
            assert self.process.poll() is None, f"nordwgd exited:\n{self.log_text()}"
            assert time.monotonic() < deadline, f"nordwgd took no bus name:\n{self.log_text()}"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""


def call(bus: PrivateBus, member: str, signature: str = "", *body: object) -> list[object]:
    reply = call_as(bus, None, member, signature, list(body))
    assert "error" not in reply, reply
    result = reply["body"]
    assert isinstance(result, list)
    return result


def properties(bus: PrivateBus) -> dict[str, object]:
    reply = call_as(
        bus, None, "GetAll", "s", [INTERFACE], interface="org.freedesktop.DBus.Properties"
    )
    assert "error" not in reply, reply
    body = reply["body"]
    assert isinstance(body, list) and isinstance(body[0], dict)
    return body[0]


def wait_state(bus: PrivateBus, daemon: Daemon, wanted: str) -> dict[str, object]:
    deadline = time.monotonic() + STATE_TIMEOUT
    while True:
        props = properties(bus)
        if props["State"] == wanted:
            return props
        assert time.monotonic() < deadline, (
            f"state {props['State']} ({props['ErrorCause']}), not {wanted}:\n{daemon.log_text()}"
        )
        time.sleep(0.2)


def station_of(world: World, props: dict[str, object]) -> str:
    server = props["Server"]
    assert isinstance(server, dict)
    return world.server(str(server["hostname"])).station


def in_namespace(
    name: str, argv: list[str], *, check: bool = True, timeout: float = 15.0
) -> subprocess.CompletedProcess[str]:
    return ns.run(["ip", "netns", "exec", name, *argv], check=check, timeout=timeout)


def links_in(name: str) -> set[str]:
    out = ns.run(["ip", "-n", name, "-o", "link", "show"]).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


@pytest.fixture
def vpn_ns() -> Iterator[str]:
    """A unique name for the daemon's namespace; removed afterwards whatever happened."""
    name = f"{ns.NETNS_PREFIX}-{ns.RUN_ID}-vpn{secrets.token_hex(2)}"
    try:
        yield name
    finally:
        ns.kill_processes_in(name)
        ns.delete_netns(name)


@pytest.fixture
def namespace_daemon(
    world: World, private_bus: PrivateBus, vpn_ns: str, tmp_path: Path
) -> Iterator[tuple[World, PrivateBus, Daemon, str]]:
    config = world.write_config(
        tmp_path / "nordwgd.toml",
        network={"mode": "namespace", "namespace": vpn_ns},
    )
    daemon = Daemon(private_bus, world, config, tmp_path / "daemon.log")
    try:
        yield world, private_bus, daemon, vpn_ns
    finally:
        daemon.stop()
        with_socket = socket_path(world.interface)
        if with_socket.exists():  # a killed daemon's wireguard-go, if recovery failed
            with_socket.unlink()


def test_namespace_is_the_only_way_through_the_tunnel(
    namespace_daemon: tuple[World, PrivateBus, Daemon, str],
) -> None:
    world, bus, daemon, vpn_ns = namespace_daemon
    assert world.leak_monitor is not None
    daemon.start()
    assert properties(bus)["Mode"] == "namespace"
    call(bus, "Connect", "a{sv}", {})
    props = wait_state(bus, daemon, "connected")
    station = station_of(world, props)

    # Only loopback and the tunnel in the namespace; the tunnel is gone from the host.
    assert links_in(vpn_ns) == {"lo", world.interface}
    assert world.interface not in world.host_exec(["ip", "-o", "link"]).stdout
    web = f"http://{world.web_address}/"
    seen = in_namespace(vpn_ns, ["curl", "-sS", "--max-time", "5", web]).stdout.strip()
    assert seen == station
    resolv = in_namespace(vpn_ns, ["cat", "/etc/resolv.conf"]).stdout
    assert resolv.startswith(RESOLV_CONF_HEADER) and f"nameserver {world.tunnel_dns}" in resolv
    assert in_namespace(vpn_ns, ["getent", "hosts", "web.test"]).stdout.split()[0] == (
        world.web_address
    )
    asked = [q for q in world.dns_queries() if q.name.rstrip(".") == "web.test"]
    assert asked and all(q.server == world.tunnel_dns and q.client == station for q in asked)

    # The host's own traffic is untouched: it leaves by the uplink with the host's address,
    # and neither the firewall nor DNS of the host changed.
    assert world.http_get_from_host() == world.host_address
    assert props["Blocking"] == "open"
    assert "table inet nordwgd" not in world.host_exec(["nft", "list", "tables"]).stdout

    # Lockdown blocks the host itself; the namespace keeps its tunnel (the marked WireGuard
    # traffic passes the endpoint pinhole) and nothing leaks.
    world.leak_monitor.reset()
    call(bus, "SetLockdown", "b", True)
    try:
        assert properties(bus)["Blocking"] == "blocked"
        with pytest.raises(RuntimeError):
            world.http_get_from_host(timeout=2)
        seen = in_namespace(vpn_ns, ["curl", "-sS", "--max-time", "5", web]).stdout.strip()
        assert seen == station
    finally:
        call(bus, "SetLockdown", "b", False)
    assert properties(bus)["Blocking"] == "open"
    assert world.leak_monitor.count() == 0, world.leak_monitor.leaks()

    # A dead tunnel: the namespace reaches nothing, and nothing from it takes the uplink.
    world.leak_monitor.reset()
    world.silence_server(str(props["Server"]["hostname"]))  # type: ignore[index]
    try:
        dead = in_namespace(vpn_ns, ["curl", "-sS", "--max-time", "3", web], check=False)
        assert dead.returncode != 0, dead.stdout
    finally:
        world.unsilence_server(str(props["Server"]["hostname"]))  # type: ignore[index]
    assert world.leak_monitor.count() == 0, world.leak_monitor.leaks()

    # A process that joined the namespace keeps it after the disconnect, with no route at all.
    probe = subprocess.Popen(
        ["ip", "netns", "exec", vpn_ns, PYTHON, "-c", _PROBE, world.web_address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)  # lets it enter the namespace before the name goes away
        call(bus, "Disconnect")
        wait_state(bus, daemon, "disconnected")
        assert vpn_ns not in ns.list_netns()
        assert not (Path("/etc/netns") / vpn_ns).exists()
        outcome, _ = probe.communicate("go\n", timeout=15)
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait(5)
    assert outcome.strip() == "errno 101", outcome  # ENETUNREACH: no interface but loopback
    assert not socket_path(world.interface).exists()
    assert daemon.stop() == 0, daemon.log_text()


def test_a_killed_daemon_leaves_nothing_after_restart(
    namespace_daemon: tuple[World, PrivateBus, Daemon, str],
) -> None:
    world, bus, daemon, vpn_ns = namespace_daemon
    daemon.start()
    call(bus, "Connect", "a{sv}", {})
    wait_state(bus, daemon, "connected")
    daemon.kill()
    assert vpn_ns in ns.list_netns()  # killed: the namespace and tunnel outlive the daemon

    daemon.start()
    props = properties(bus)
    if props["State"] != "disconnected":  # a daemon that died connected resumes
        wait_state(bus, daemon, "connected")
        station = station_of(world, properties(bus))
        web = f"http://{world.web_address}/"
        assert in_namespace(vpn_ns, ["curl", "-sS", "--max-time", "5", web]).stdout.strip() == (
            station
        )
        call(bus, "Disconnect")
        wait_state(bus, daemon, "disconnected")
    assert vpn_ns not in ns.list_netns()
    assert not (Path("/etc/netns") / vpn_ns).exists()
    assert not socket_path(world.interface).exists()
    running = ns.run(["ps", "-eo", "args"]).stdout.splitlines()
    assert f"wireguard-go -f {world.interface}" not in [line.strip() for line in running]
    assert daemon.stop() == 0, daemon.log_text()
