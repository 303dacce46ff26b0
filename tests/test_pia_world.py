"""PIA for real in the test world: connect, the forwarded port, the hook, nothing leaking.

A driver runs the Manager (real engine: nftables, wireguard-go, routes) in the host namespace
with ``provider = "pia"`` against the fake PIA, and speaks JSON lines on stdin and stdout; the
login travels on stdin. A listener in the host (or in the daemon's namespace) is reached from
the "Internet" side through the port the fake VPN server forwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nordwgd.testing import netns as ns
from nordwgd.testing.piaworld import ROUTER_WAN, PiaWorld
from tests.fixtures_world import DriverProcess

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent

DRIVER = r"""
import asyncio, json, logging, sys
from pathlib import Path

from nordwgd.bus.convert import plain, status_values
from nordwgd.config import load_config
from nordwgd.errors import NordwgdError
from nordwgd.machine import Tuning
from nordwgd.manager import Manager

def props(status):
    return plain(status_values(status))

def emit(message):
    sys.stdout.write(json.dumps(message, default=str) + "\n")
    sys.stdout.flush()

def matches(status, want):
    if "State" in want and status.state != want["State"]:
        return False
    if "port_not" in want and status.forwarded_port in (0, want["port_not"]):
        return False
    if "port" in want and status.forwarded_port != want["port"]:
        return False
    return True

async def main():
    logging.basicConfig(
        filename=sys.argv[2], level=logging.DEBUG,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    config = load_config(Path(sys.argv[1]))
    tuning = Tuning(health_tick=0.5, retry_base=0.5, retry_max=2.0, failover_min_interval=2.0)
    manager = Manager(config, tuning=tuning)
    manager.subscribe(lambda status: emit({"event": "changed", "changed": props(status)}))
    await manager.start()
    emit({"event": "started", "props": props(manager.status())})
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            await manager.stop(keep_blocking=False)
            return
        command = json.loads(line)
        op = command["op"]
        try:
            if op == "login":
                await manager.set_login(command["username"], command["password"])
                result = None
            elif op == "connect":
                await manager.connect(command.get("options", {}))
                result = None
            elif op == "reconnect":
                await manager.reconnect()
                result = None
            elif op == "disconnect":
                await manager.disconnect()
                result = None
            elif op == "renew":
                await manager.renew()
                result = None
            elif op == "wait":
                want = command["want"]
                result = props(
                    await manager.wait_for(lambda p: matches(p, want), command["limit"])
                )
            elif op == "diagnose":
                result = await manager.diagnose("basic")
            else:
                raise ValueError(op)
        except NordwgdError as error:
            emit({"reply": "error", "error": error.nick, "message": str(error)})
        except TimeoutError:
            emit({"reply": "timeout", "props": props(manager.status())})
        else:
            emit({"reply": "ok", "result": result})

asyncio.run(main())
"""

HOOK = r"""#!/bin/sh
env | sort > "$(dirname "$0")/hook-env.$NORDWGD_PORT"
echo "hook saw port $NORDWGD_PORT"
"""


class Driver(DriverProcess):
    def __init__(self, world: PiaWorld, config: Path, log: Path) -> None:
        self.world = world
        # nsenter keeps the system's mount namespace (as systemd would): a namespace the
        # daemon makes under /run/netns is then usable by everyone.
        process = subprocess.Popen(
            [
                *("nsenter", f"--net=/run/netns/{world.host_ns}"),
                *(sys.executable, "-c", DRIVER, str(config), str(log)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=ns.python_env(),
            cwd=str(REPO),
        )
        super().__init__(process, log)
        started = self.next(60.0)
        assert started.get("event") == "started", f"{started}\n{self.tail()}"

    def login(self) -> None:
        self.call("login", username=self.world.username, password=self.world.password)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PiaWorld]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, nftables, wireguard-go)")
    built = PiaWorld.build(tmp_path_factory.mktemp("piaworld"))
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def start(world: PiaWorld, tmp_path: Path) -> Iterator[Callable[..., Driver]]:
    drivers: list[Driver] = []
    world.fault(None)

    def started(**overrides: Any) -> Driver:
        hook = tmp_path / "hook"
        hook.write_text(HOOK)
        hook.chmod(0o755)
        values: dict[str, Any] = {
            "paths": {"state_dir": str(tmp_path / "state"), "runtime_dir": str(tmp_path / "run")},
            "health": {"interval": 1.0, "timeout": 1.0, "handshake_timeout": 5.0},
            "port_forward": {"enabled": True, "bind_interval": 1.5, "hook": [str(hook)]},
        }
        for key, value in overrides.items():
            values[key] = {**values.get(key, {}), **value}
        config = world.write_config(tmp_path / "nordwgd.toml", **values)
        driver = Driver(world, config, tmp_path / "driver.log")
        drivers.append(driver)
        return driver

    try:
        yield started
    finally:
        for driver in drivers:
            driver.close()
            assert world.password not in driver.log.read_text(errors="replace")
        world.fault(None)


def serve_in(world: PiaWorld, netns: str, port: int) -> subprocess.Popen[str]:
    """The world's echo-the-caller web server on ``port`` in ``netns``."""
    process = subprocess.Popen(
        ns.exec_argv(
            netns,
            [sys.executable, "-m", "nordwgd.testing.webserver", f"--listen=0.0.0.0:{port}"],
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ns.python_env(),
        cwd=str(REPO),
    )
    assert process.stdout is not None and process.stderr is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise AssertionError(f"no listener in {netns}: {process.stderr.read()[-2000:]}")
    return process


def from_internet(world: PiaWorld, station: str, port: int) -> str:
    """GET http://STATION:PORT/ from the router (the "Internet" side); the body or ""."""
    out = world.router_exec(
        ["curl", "-sS", "--max-time", "5", f"http://{station}:{port}/"], check=False
    )
    return out.strip()


def eventually(check: Callable[[], bool], limit: float = 10.0) -> bool:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def bind_count(world: PiaWorld) -> int:
    return sum(r["path"] == "/bindPort" for r in world.pia_requests())


def test_connect_forward_a_port_to_the_host_and_run_the_hook(
    world: PiaWorld, start: Callable[..., Driver], tmp_path: Path
) -> None:
    driver = start()
    driver.login()
    assert (tmp_path / "state" / "pia-login").stat().st_mode & 0o777 == 0o600
    assert world.leak_monitor is not None
    world.leak_monitor.reset()
    driver.call("connect", options={"region": "uk"})
    props = driver.wait(60.0, State="connected")
    assert props["Provider"] == "pia"
    server = world.server(props["Server"]["hostname"])
    assert world.http_get_from_host() == server.station  # through the tunnel

    props = driver.wait(30.0, State="connected", port_not=0)
    port = props["ForwardedPort"]
    assert (tmp_path / "run" / "forwarded-port").read_text() == f"{port}\n"

    listener = serve_in(world, world.host_ns, port)
    try:
        # From the Internet, through the VPN server, the tunnel and the firewall to the host.
        assert from_internet(world, server.station, port) == ROUTER_WAN
        # Another port stays closed.
        assert from_internet(world, server.station, port + 1 if port < 65535 else port - 1) == ""
    finally:
        listener.terminate()
        listener.wait()

    # bindPort again and again on the (shortened) interval.
    before = bind_count(world)
    time.sleep(5.0)
    assert bind_count(world) - before >= 2

    # The hook saw the port, the interface and the address, and nothing secret.
    env_file = tmp_path / f"hook-env.{port}"
    assert eventually(env_file.exists)
    lines = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert lines["NORDWGD_PORT"] == str(port)
    assert lines["NORDWGD_INTERFACE"] == world.interface
    assert lines["NORDWGD_TUNNEL_ADDRESS"] == props["TunnelAddress"].split("/")[0]
    assert set(lines) <= {
        "PATH",
        "PWD",
        "SHLVL",
        "_",
        "NORDWGD_PORT",
        "NORDWGD_INTERFACE",
        "NORDWGD_TUNNEL_ADDRESS",
    }
    text = env_file.read_text()
    assert world.password not in text and "pia" not in text.lower()
    assert "hook saw port" in (tmp_path / "driver.log").read_text()

    # Nothing left the host outside the tunnel while the port was forwarded.
    assert world.leak_monitor.count() == 0, world.leak_monitor.leaks()

    driver.call("disconnect")
    props = driver.wait(30.0, State="disconnected")
    assert props["ForwardedPort"] == 0
    assert not (tmp_path / "run" / "forwarded-port").exists()
    # The hook was told the port went, so it can close what it opened.
    gone = tmp_path / "hook-env.0"
    assert eventually(gone.exists)
    lines = dict(line.split("=", 1) for line in gone.read_text().splitlines())
    assert lines["NORDWGD_PORT"] == "0"
    assert lines["NORDWGD_INTERFACE"] == world.interface


def test_a_busy_port_gets_a_new_one_and_the_hook_sees_it(
    world: PiaWorld, start: Callable[..., Driver], tmp_path: Path
) -> None:
    driver = start()
    driver.login()
    driver.call("connect", options={"region": "uk"})
    first = driver.wait(60.0, State="connected", port_not=0)["ForwardedPort"]
    world.fault("port-busy", count=1)
    second = driver.wait(30.0, State="connected", port_not=first)["ForwardedPort"]
    assert second != first
    assert (tmp_path / f"hook-env.{first}").exists()
    assert eventually(lambda: (tmp_path / f"hook-env.{second}").exists())
    assert (tmp_path / "run" / "forwarded-port").read_text() == f"{second}\n"
    # A new port replaces the old one without a 0 in between; the disconnect gives the 0.
    assert not (tmp_path / "hook-env.0").exists()
    driver.call("disconnect")
    driver.wait(30.0, State="disconnected")
    assert eventually((tmp_path / "hook-env.0").exists)


def test_the_signature_is_reused_after_a_reconnect(
    world: PiaWorld, start: Callable[..., Driver]
) -> None:
    driver = start()
    driver.login()
    driver.call("connect", options={"region": "uk"})
    port = driver.wait(60.0, State="connected", port_not=0)["ForwardedPort"]
    signatures = sum(r["path"] == "/getSignature" for r in world.pia_requests())
    driver.call("reconnect")
    props = driver.wait(60.0, State="connected", port=port)
    assert props["ForwardedPort"] == port
    assert sum(r["path"] == "/getSignature" for r in world.pia_requests()) == signatures


def test_a_region_without_port_forwarding_is_refused_at_connect(
    world: PiaWorld, start: Callable[..., Driver]
) -> None:
    driver = start()
    driver.login()
    reply = driver.send("connect", options={"region": "us_california"})
    assert reply["reply"] == "error" and reply["error"] == "NoServer"
    assert "regions with port forwarding: uk" in reply["message"]


def test_add_key_refused_gives_auth_failed(world: PiaWorld, start: Callable[..., Driver]) -> None:
    driver = start(port_forward={"enabled": False})
    driver.login()
    world.fault("login-failed")
    driver.call("connect", options={"region": "uk"})
    props = driver.wait(60.0, State="error")
    assert props["ErrorCause"] == "auth-failed"
    assert props["Provider"] == "pia"


def test_the_port_reaches_a_service_in_the_namespace(
    world: PiaWorld, start: Callable[..., Driver]
) -> None:
    namespace = f"{ns.NETNS_PREFIX}-{ns.RUN_ID}-pf{os.urandom(2).hex()}"
    try:
        driver = start(network={"mode": "namespace", "namespace": namespace})
        driver.login()
        driver.call("connect", options={"region": "uk"})
        props = driver.wait(60.0, State="connected", port_not=0)
        port = props["ForwardedPort"]
        station = world.server(props["Server"]["hostname"]).station
        listener = serve_in(world, namespace, port)
        try:
            assert from_internet(world, station, port) == ROUTER_WAN
        finally:
            listener.terminate()
            listener.wait()
        driver.call("disconnect")
        driver.wait(30.0, State="disconnected")
    finally:
        ns.kill_processes_in(namespace)
        ns.delete_netns(namespace)


def test_gateway_mode_sends_the_port_on_to_one_lan_host(
    world: PiaWorld, start: Callable[..., Driver]
) -> None:
    from tests.test_gateway_mode import LanClient

    client = LanClient(world)
    try:
        client.build()
        driver = start(
            network={"mode": "gateway", "forward_from": [str(client.network)]},
            port_forward={"forward_to": f"{client.address}:8080"},
        )
        driver.login()
        driver.call("connect", options={"region": "uk"})
        props = driver.wait(60.0, State="connected", port_not=0)
        port = props["ForwardedPort"]
        station = world.server(props["Server"]["hostname"]).station
        listener = serve_in(world, client.netns, 8080)
        try:
            assert from_internet(world, station, port) == ROUTER_WAN
        finally:
            listener.terminate()
            listener.wait()
        # The host itself does not get the port: it went on to the LAN host.
        on_host = serve_in(world, world.host_ns, port)
        try:
            assert from_internet(world, station, port) == ""
        finally:
            on_host.terminate()
            on_host.wait()
    finally:
        client.close()


def test_renew_fetches_a_new_token_and_region_list(
    world: PiaWorld, start: Callable[..., Driver]
) -> None:
    driver = start(port_forward={"enabled": False})
    driver.login()
    driver.call("connect", options={"region": "uk"})
    driver.wait(60.0, State="connected")

    def asked(path: str) -> int:
        return sum(r["path"] == path for r in world.pia_requests())

    tokens, lists = asked("/authv3/generateToken"), asked("/vpninfo/servers/v6")
    driver.call("renew")
    driver.wait(60.0, State="connected")
    assert asked("/authv3/generateToken") == tokens + 1
    assert asked("/vpninfo/servers/v6") == lists + 1
    report = driver.call("diagnose")
    assert report["provider"] == "pia"


@pytest.mark.parametrize("fault", ["short-payload", "expired-payload"])
def test_a_signature_near_its_end_is_replaced(
    world: PiaWorld, start: Callable[..., Driver], fault: str
) -> None:
    def signatures() -> int:
        return sum(r["path"] == "/getSignature" for r in world.pia_requests())

    driver = start()
    driver.login()
    world.fault(fault, count=1)
    before = signatures()
    driver.call("connect", options={"region": "uk"})
    port = driver.wait(60.0, State="connected", port_not=0)["ForwardedPort"]
    if fault == "short-payload":
        # Three days left, fewer than renew_before (7 days): a new port at the next bind.
        port = driver.wait(30.0, State="connected", port_not=port)["ForwardedPort"]
    # An expired one is refused by bindPort, and one new signature follows at once.
    assert signatures() - before == 2
    time.sleep(3.5)
    assert signatures() - before == 2  # the good one is kept and bound again
    assert driver.wait(5.0, State="connected")["ForwardedPort"] == port
