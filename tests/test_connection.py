"""Connection against a real wireguard-go peer, in network namespaces made for each test.

Topology: netns "client" (eth0 198.51.100.2/24, default via .1) and netns "server" (eth0
198.51.100.1/24) joined by a veth; the server runs wireguard-go with tunnel address 10.5.0.1.
The Connection runs inside the client netns in a child process (this module run with
``python -m tests.test_connection``) that takes JSON commands on stdin and answers on stdout,
so it can also be SIGKILLed while the tunnel is up.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

REPO = Path(__file__).resolve().parent.parent
PYTHON = REPO / ".venv" / "bin" / "python"
SERVER_ADDRESS = "198.51.100.1"
CLIENT_ADDRESS = "198.51.100.2"
UPLINK_GATEWAY = "198.51.100.254"
SERVER_TUNNEL = "10.5.0.1"
LAN = "192.168.77.0/24"
WG_SOCKETS = Path("/var/run/wireguard")
# The child must never find a real systemd-resolved: resolv.conf mode only.
CHILD_ENV = {
    "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/nordwgd-test-bus",
}


def keypair() -> tuple[str, str]:
    key = X25519PrivateKey.generate()
    private = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()


def run(*argv: str, check: bool = True, input: bytes | None = None) -> str:
    done = subprocess.run(argv, input=input, capture_output=True, check=False, timeout=30)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {done.stderr.decode()}")
    return done.stdout.decode()


def in_ns(ns: str, *argv: str, check: bool = True) -> str:
    return run("ip", "netns", "exec", ns, *argv, check=check)


@dataclass
class Pair:
    suffix: str
    client: str
    server: str
    tmp: Path
    server_public: str
    client_private: str
    client_ifname: str
    resolv_conf: Path
    runtime_dir: Path
    extra_cleanup: list[Any] = field(default_factory=list)
    backend: str = "userspace"  # the client's; the server always runs wireguard-go

    def settings(self, **overrides: Any) -> dict[str, Any]:
        value: dict[str, Any] = {
            "interface": self.client_ifname,
            "table": 51820,
            "fwmark": 0xCA6C,
            "resolv_conf": str(self.resolv_conf),
            "runtime_dir": str(self.runtime_dir),
            "lan": [LAN],
            "backend": self.backend,
        }
        value.update(overrides)
        return value

    def params(self, **overrides: Any) -> dict[str, Any]:
        value: dict[str, Any] = {
            "private_key": self.client_private,
            "peer_public_key": self.server_public,
            "endpoint": SERVER_ADDRESS,
            "allowed_ips": ["0.0.0.0/0"],
            "dns": [SERVER_TUNNEL],
        }
        value.update(overrides)
        return value

    def snapshot(self) -> dict[str, Any]:
        """Everything a connection may change in the client netns, as text."""
        resolv: Any
        try:
            info = self.resolv_conf.lstat()
            resolv = (
                self.resolv_conf.is_symlink(),
                oct(info.st_mode),
                os.readlink(self.resolv_conf)
                if self.resolv_conf.is_symlink()
                else self.resolv_conf.read_bytes().decode(),
            )
        except FileNotFoundError:
            resolv = None
        return {
            "rules4": in_ns(self.client, "ip", "-4", "rule"),
            "rules6": in_ns(self.client, "ip", "-6", "rule"),
            "routes4": in_ns(self.client, "ip", "-4", "route", "show", "table", "all"),
            "routes6": in_ns(self.client, "ip", "-6", "route", "show", "table", "all"),
            "links": in_ns(self.client, "ip", "-o", "link", "show").count("\n"),
            "src_valid_mark": in_ns(
                self.client, "sysctl", "-n", "net.ipv4.conf.all.src_valid_mark"
            ),
            "resolv_conf": resolv,
        }


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    with pair_in_namespaces(tmp_path, backend="userspace") as made:
        yield made


@contextlib.contextmanager
def pair_in_namespaces(tmp_path: Path, *, backend: str) -> Iterator[Pair]:
    suffix = secrets.token_hex(3)
    client, server = f"nwtc-{suffix}", f"nwts-{suffix}"
    server_if = f"nwts{suffix}"
    server_private, server_public = keypair()
    client_private, client_public = keypair()
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 192.0.2.53\noptions edns0\n")
    world = Pair(
        suffix,
        client,
        server,
        tmp_path,
        server_public,
        client_private,
        f"nwtc{suffix}",
        resolv_conf,
        tmp_path / "run",
        backend=backend,
    )
    try:
        for ns in (client, server):
            run("ip", "netns", "add", ns)
            # Without duplicate address detection the link-local routes appear at once, so
            # snapshots do not change on their own a moment after set-up.
            for scope in ("all", "default"):
                in_ns(ns, "sysctl", "-qw", f"net.ipv6.conf.{scope}.accept_dad=0")
        run(
            "ip",
            "-n",
            client,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            server,
        )
        for ns, address in ((client, CLIENT_ADDRESS), (server, SERVER_ADDRESS)):
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "address", "add", f"{address}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
        # The uplink's gateway is not the server, so the server's tunnel address is reachable
        # only through the tunnel.
        run("ip", "-n", client, "route", "add", "default", "via", UPLINK_GATEWAY)
        start_wireguard_go(server, server_if)
        key_file = tmp_path / "server.key"
        key_file.touch(mode=0o600)
        key_file.write_text(server_private + "\n")
        in_ns(
            server,
            "wg",
            "set",
            server_if,
            "listen-port",
            "51820",
            "private-key",
            str(key_file),
            "peer",
            client_public,
            "allowed-ips",
            "10.5.0.2/32",
        )
        run("ip", "-n", server, "address", "add", f"{SERVER_TUNNEL}/24", "dev", server_if)
        run("ip", "-n", server, "link", "set", server_if, "up")
        yield world
    finally:
        for cleanup in world.extra_cleanup:
            with contextlib.suppress(Exception):
                cleanup()
        for name in (server_if, world.client_ifname):
            # Deleting the control socket shuts that wireguard-go instance down.
            with contextlib.suppress(FileNotFoundError):
                (WG_SOCKETS / f"{name}.sock").unlink()
        for ns in (client, server):
            run("ip", "netns", "del", ns, check=False)


class Driver:
    """A child process running a Connection inside the client netns."""

    @classmethod
    def for_pair(cls, pair: Pair, **settings: Any) -> Driver:
        driver = cls(pair.client, pair.settings(**settings), pair.tmp)
        pair.extra_cleanup.append(driver.kill)
        return driver

    def __init__(self, netns: str, settings: dict[str, Any], log_dir: Path) -> None:
        self.log = log_dir / f"driver-{secrets.token_hex(3)}.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", netns, str(PYTHON), "-m", "tests.test_connection"],
                cwd=REPO,
                env=CHILD_ENV,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        self.send({"op": "init", "settings": settings})

    def send(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"driver died: {self.log.read_text()}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        self.send({"op": "exit"})
        self.process.wait(timeout=10)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


def ping(pair: Pair, address: str) -> bool:
    done = subprocess.run(
        ["ip", "netns", "exec", pair.client, "ping", "-c", "1", "-W", "2", address],
        capture_output=True,
        check=False,
        timeout=30,
    )
    return done.returncode == 0


def assert_tunnel_state(pair: Pair) -> None:
    rules = in_ns(pair.client, "ip", "-4", "rule")
    assert "32764:\tfrom all lookup main suppress_prefixlength 0" in rules
    assert "32765:\tnot from all fwmark 0xca6c lookup 51820" in rules
    table = in_ns(pair.client, "ip", "-4", "route", "show", "table", "51820")
    assert f"default dev {pair.client_ifname}" in table
    assert f"throw {LAN}" in table
    assert in_ns(pair.client, "sysctl", "-n", "net.ipv4.conf.all.src_valid_mark").strip() == "1"
    assert pair.resolv_conf.read_text().splitlines()[1:] == [f"nameserver {SERVER_TUNNEL}"]
    link = in_ns(pair.client, "ip", "-o", "address", "show", "dev", pair.client_ifname)
    assert "10.5.0.2/32" in link
    assert "mtu 1420" in in_ns(pair.client, "ip", "link", "show", pair.client_ifname)
    # No IPv6 routing unless the tunnel carries IPv6.
    assert "51820" not in in_ns(pair.client, "ip", "-6", "rule")


@pytest.mark.root
def test_up_reaches_the_peer_and_down_restores_everything(pair: Pair) -> None:
    before = pair.snapshot()
    assert not ping(pair, SERVER_TUNNEL), "the server's tunnel address must need the tunnel"
    driver = Driver.for_pair(pair)
    reply = driver.send({"op": "up", "params": pair.params()})
    assert reply["ok"], reply
    assert reply["is_up"] and reply["interface"] == pair.client_ifname
    assert ping(pair, SERVER_TUNNEL)
    assert driver.send({"op": "handshake", "timeout": 10})["handshake"] is True
    stats = driver.send({"op": "stats"})
    assert stats["rx_bytes"] > 0 and stats["tx_bytes"] > 0
    assert_tunnel_state(pair)
    # The LAN is thrown back to main and leaves by the uplink, not the tunnel.
    route = in_ns(pair.client, "ip", "route", "get", "192.168.77.9")
    assert f"via {UPLINK_GATEWAY} dev eth0" in route
    # The marked WireGuard socket's traffic skips the tunnel table.
    marked = in_ns(pair.client, "ip", "route", "get", "192.0.2.80", "mark", "0xca6c")
    assert f"via {UPLINK_GATEWAY} dev eth0" in marked
    assert ping(pair, SERVER_TUNNEL)
    assert pair.client_ifname in in_ns(pair.client, "ip", "route", "get", "192.0.2.80")

    assert driver.send({"op": "down"})["ok"]
    assert pair.snapshot() == before
    assert not ping(pair, SERVER_TUNNEL)
    assert not (pair.runtime_dir / "connection.json").exists()
    assert not (WG_SOCKETS / f"{pair.client_ifname}.sock").exists()
    assert driver.send({"op": "down"})["ok"], "a second down must do nothing"
    driver.close()


@pytest.mark.root
def test_a_killed_process_is_cleaned_up_by_recover(pair: Pair) -> None:
    before = pair.snapshot()
    driver = Driver.for_pair(pair)
    assert driver.send({"op": "up", "params": pair.params()})["ok"]
    driver.kill()
    assert pair.snapshot() != before, "a killed process leaves its changes"
    assert (pair.runtime_dir / "connection.json").exists()

    fresh = Driver.for_pair(pair)
    assert fresh.send({"op": "recover"})["ok"]
    assert pair.snapshot() == before
    assert not (pair.runtime_dir / "connection.json").exists()
    assert not list(pair.runtime_dir.iterdir())
    # The killed process's wireguard-go went away with its socket.
    assert not (WG_SOCKETS / f"{pair.client_ifname}.sock").exists()
    # Recovered state allows a new tunnel.
    assert fresh.send({"op": "up", "params": pair.params()})["ok"]
    assert ping(pair, SERVER_TUNNEL)
    assert fresh.send({"op": "down"})["ok"]
    assert pair.snapshot() == before
    fresh.close()


@pytest.mark.root
def test_an_unreadable_record_is_cleaned_up_by_name(pair: Pair) -> None:
    before = pair.snapshot()
    driver = Driver.for_pair(pair)
    assert driver.send({"op": "up", "params": pair.params()})["ok"]
    driver.kill()
    (pair.runtime_dir / "connection.json").write_text("{not json")

    fresh = Driver.for_pair(pair)
    assert fresh.send({"op": "recover"})["ok"]
    after = pair.snapshot()
    # The old sysctl value is unknown without a record, so it is left as it was set.
    assert after.pop("src_valid_mark").strip() == "1"
    before.pop("src_valid_mark")
    assert after == before
    assert [p.name.startswith("connection.json.corrupt-") for p in pair.runtime_dir.iterdir()] == [
        True
    ]
    fresh.close()


def start_wireguard_go(netns: str, ifname: str) -> None:
    """A wireguard-go instance of its own, not the engine's (it forks into the background)."""
    # It keeps its stdio: give it none to hold.
    subprocess.run(
        ["ip", "netns", "exec", netns, "wireguard-go", ifname],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=30,
        env={
            **CHILD_ENV,
            "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1",
            "LOG_LEVEL": "error",
        },
    )


def wireguard_go_alive(netns: str, ifname: str) -> bool:
    shown = subprocess.run(
        ["ip", "netns", "exec", netns, "wg", "show", ifname],
        capture_output=True,
        check=False,
        timeout=30,
    )
    return shown.returncode == 0 and (WG_SOCKETS / f"{ifname}.sock").exists()


def stop_wireguard_go(netns: str, ifname: str) -> None:
    """Delete the control socket (which stops the instance) and wait for its link to go."""
    with contextlib.suppress(FileNotFoundError):
        (WG_SOCKETS / f"{ifname}.sock").unlink()
    for _ in range(100):
        if in_ns(netns, "ip", "link", "show", ifname, check=False) == "":
            return
        time.sleep(0.05)
    raise AssertionError(f"{ifname} did not go away")


@pytest.mark.root
def test_an_interface_that_exists_already_is_refused_and_left_alone(pair: Pair) -> None:
    ifname = pair.client_ifname
    start_wireguard_go(pair.client, ifname)
    assert wireguard_go_alive(pair.client, ifname)
    before = pair.snapshot()
    driver = Driver.for_pair(pair)
    reply = driver.send({"op": "up", "params": pair.params()})
    assert not reply["ok"] and reply["error"] == "TunnelFailed", reply
    assert wireguard_go_alive(pair.client, ifname), "the other wireguard-go was stopped"
    assert driver.send({"op": "down"})["ok"]
    assert driver.send({"op": "recover"})["ok"]
    assert wireguard_go_alive(pair.client, ifname), "the other wireguard-go was stopped"
    assert f"{ifname} exists already" in reply["message"]
    assert "did not create" in reply["message"]
    assert pair.snapshot() == before
    assert not (pair.runtime_dir / "connection.json").exists()

    # a link of another kind with that name
    stop_wireguard_go(pair.client, ifname)
    run(
        "ip", "-n", pair.client, "link", "add", ifname, "type", "veth", "peer", "name", f"{ifname}p"
    )
    reply = driver.send({"op": "up", "params": pair.params()})
    assert not reply["ok"] and f"{ifname} exists already" in reply["message"], reply
    assert driver.send({"op": "down"})["ok"]
    assert "veth" in in_ns(pair.client, "ip", "-d", "link", "show", ifname)
    driver.close()


@pytest.mark.root
def test_recover_leaves_a_link_that_took_the_name_after_ours_went(pair: Pair) -> None:
    ifname = pair.client_ifname
    driver = Driver.for_pair(pair)
    assert driver.send({"op": "up", "params": pair.params()})["ok"]
    driver.kill()
    # The killed process's wireguard-go goes too (systemd's KillMode=mixed), and another
    # program starts its own instance under the same name before nordwgd starts again.
    stop_wireguard_go(pair.client, ifname)
    start_wireguard_go(pair.client, ifname)
    assert (pair.runtime_dir / "connection.json").exists()

    fresh = Driver.for_pair(pair)
    assert fresh.send({"op": "recover"})["ok"]
    assert wireguard_go_alive(pair.client, ifname), "recover stopped another program's instance"
    assert not (pair.runtime_dir / "connection.json").exists()
    fresh.close()


@pytest.mark.root
def test_a_failed_routing_step_leaves_what_others_made(pair: Pair) -> None:
    # The rule wg-quick makes for its own tunnel, at the priority nordwgd uses too: adding
    # nordwgd's equal rule fails (EEXIST), and undoing must not remove wg-quick's.
    rule = ("priority", "32764", "from", "all", "lookup", "main", "suppress_prefixlength", "0")
    run("ip", "-n", pair.client, "-4", "rule", "add", *rule)
    before = pair.snapshot()
    driver = Driver.for_pair(pair)
    reply = driver.send({"op": "up", "params": pair.params()})
    assert not reply["ok"] and reply["error"] == "RoutingFailed", reply
    assert "32764:\tfrom all lookup main suppress_prefixlength 0" in in_ns(
        pair.client, "ip", "-4", "rule"
    ), "the other program's rule was removed"
    assert pair.snapshot() == before
    assert not (pair.runtime_dir / "connection.json").exists()
    driver.close()


@pytest.mark.root
def test_a_dns_failure_undoes_the_steps_before_it(pair: Pair) -> None:
    unwritable = pair.tmp / "missing-dir" / "resolv.conf"
    pair.resolv_conf = unwritable
    before = pair.snapshot()
    driver = Driver.for_pair(pair)
    reply = driver.send({"op": "up", "params": pair.params()})
    assert not reply["ok"]
    assert reply["error"] == "DnsFailed"
    assert str(unwritable) in reply["message"]
    assert reply["is_up"] is False
    assert pair.snapshot() == before
    assert not (pair.runtime_dir / "connection.json").exists()
    assert not (WG_SOCKETS / f"{pair.client_ifname}.sock").exists()
    driver.close()


@pytest.mark.root
def test_an_invalid_peer_key_undoes_the_link(pair: Pair) -> None:
    before = pair.snapshot()
    driver = Driver.for_pair(pair)
    reply = driver.send({"op": "up", "params": pair.params(peer_public_key="bm90LWEta2V5")})
    assert not reply["ok"]
    assert reply["error"] == "TunnelFailed"
    assert pair.client_ifname in reply["message"]
    assert pair.snapshot() == before
    assert not (WG_SOCKETS / f"{pair.client_ifname}.sock").exists()
    driver.close()


@pytest.mark.root
def test_netns_resolv_conf_bind_mount_is_written_in_place(pair: Pair) -> None:
    etc = Path("/etc/netns") / pair.client
    etc.mkdir(parents=True)
    pair.extra_cleanup.append(lambda: (etc / "resolv.conf").unlink())
    pair.extra_cleanup.append(etc.rmdir)
    original = b"# per-namespace resolver\nnameserver 192.0.2.54\n"
    (etc / "resolv.conf").write_bytes(original)
    machine_resolv = Path("/etc/resolv.conf").read_bytes()

    driver = Driver.for_pair(pair, resolv_conf="/etc/resolv.conf")
    assert driver.send({"op": "up", "params": pair.params()})["ok"]
    assert (etc / "resolv.conf").read_text().endswith(f"nameserver {SERVER_TUNNEL}\n")
    assert Path("/etc/resolv.conf").read_bytes() == machine_resolv
    assert driver.send({"op": "down"})["ok"]
    assert (etc / "resolv.conf").read_bytes() == original
    assert Path("/etc/resolv.conf").read_bytes() == machine_resolv
    driver.close()


@pytest.mark.root
def test_in_the_world_traffic_and_dns_go_through_the_tunnel(world: Any, tmp_path: Path) -> None:
    server = world.servers[0]
    resolv_conf = Path("/etc/netns") / world.host_ns / "resolv.conf"
    original = resolv_conf.read_bytes()
    assert world.http_get_from_host() == world.host_address
    driver = Driver(
        world.host_ns,
        {
            "interface": world.interface,
            "table": 51820,
            "fwmark": 0xCA6C,
            "resolv_conf": str(resolv_conf),
            "runtime_dir": str(tmp_path / "run"),
            "lan": [str(world.lan_network)],
        },
        tmp_path,
    )
    try:
        reply = driver.send(
            {
                "op": "up",
                "params": {
                    "private_key": world.client_private_key.reveal(),
                    "peer_public_key": server.public_key,
                    "endpoint": server.station,
                    "allowed_ips": ["0.0.0.0/0"],
                    "dns": [world.tunnel_dns],
                },
            }
        )
        assert reply["ok"], reply
        assert driver.send({"op": "handshake", "timeout": 10})["handshake"] is True
        assert world.http_get_from_host() == server.station
        # The LAN stays reachable by the uplink.
        world.host_exec(["ping", "-c", "1", "-W", "2", world.router_lan])
        looked_up = world.host_exec(["getent", "ahostsv4", "web.test"]).stdout
        assert world.web_address in looked_up
        queries = [q for q in world.dns_queries() if q.name.rstrip(".") == "web.test"]
        assert queries
        assert all(q.server == world.tunnel_dns and q.client == server.station for q in queries), (
            queries
        )
        assert driver.send({"op": "down"})["ok"]
        assert resolv_conf.read_bytes() == original
        assert world.http_get_from_host() == world.host_address
        driver.close()
    finally:
        driver.kill()


# -- the child process ---------------------------------------------------------------------


async def _serve() -> None:
    from nordwgd.config import Config, DnsConfig, NetworkConfig, PathsConfig
    from nordwgd.connection import Connection
    from nordwgd.errors import NordwgdError
    from nordwgd.model import Endpoint, Secret, TunnelParams
    from nordwgd.wireguard import open_backend

    connection: Connection | None = None

    def params_of(raw: dict[str, Any]) -> TunnelParams:
        return TunnelParams(
            private_key=Secret(raw["private_key"]),
            address=IPv4Interface("10.5.0.2/32"),
            peer_public_key=raw["peer_public_key"],
            endpoint=Endpoint(IPv4Address(raw["endpoint"])),
            allowed_ips=tuple(ip_network(n) for n in raw["allowed_ips"]),
            dns=tuple(ip_address(a) for a in raw["dns"]),
        )

    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return
        command = json.loads(line)
        op = command["op"]
        reply: dict[str, Any] = {"ok": True}
        try:
            if op == "init":
                s = command["settings"]
                backend = s.get("backend", "userspace")
                config = Config(
                    dns=DnsConfig(resolv_conf=Path(s["resolv_conf"])),
                    network=replace(
                        NetworkConfig(),
                        interface=s["interface"],
                        backend=backend,
                        table=s["table"],
                        fwmark=s["fwmark"],
                        lan=tuple(ip_network(n) for n in s["lan"]),
                    ),
                    paths=PathsConfig(runtime_dir=Path(s["runtime_dir"])),
                )
                connection = Connection(config, open_backend(backend), config.paths.runtime_dir)
            elif op == "exit":
                print(json.dumps(reply), flush=True)
                return
            else:
                assert connection is not None
                if op == "up":
                    await connection.up(params_of(command["params"]))
                elif op == "down":
                    await connection.down()
                elif op == "recover":
                    await connection.recover()
                elif op == "handshake":
                    reply["handshake"] = await connection.wait_handshake(command["timeout"])
                elif op == "stats":
                    stats = await connection.statistics()
                    reply.update(
                        rx_bytes=stats.rx_bytes,
                        tx_bytes=stats.tx_bytes,
                        latest_handshake=stats.latest_handshake,
                    )
        except NordwgdError as exc:
            reply = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
        if connection is not None:
            reply.update(
                is_up=connection.is_up, interface=connection.interface, ifindex=connection.ifindex
            )
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(_serve())
