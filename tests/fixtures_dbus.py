"""Private D-Bus fixtures: a throw-away dbus-daemon and a runner for the real nordwgd daemon.

The bus listens on a unix socket in a fresh world-readable directory under /tmp, accepts
EXTERNAL authentication from any user (so a client dropped to ``nobody`` can talk to it), and
allows every own/send/receive: authorization is then decided only by nordwgd itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, NameFlag, RequestNameReply
from dbus_fast.aio import MessageBus

from nordwgd import errors
from nordwgd.bus import INTERFACE_NAME, OBJECT_PATH
from nordwgd.bus.polkit import Authorizer
from nordwgd.bus.service import ManagerInterface, ServiceBus, export_manager
from nordwgd.model import Server
from nordwgd.states import Blocking, State
from nordwgd.status import Status
from nordwgd.testing.privatebus import PrivateBus, start_bus

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable
BUS_NAME = "org.nordwgd.Nordwgd1"


def _start_bus() -> PrivateBus:
    return start_bus()


def _stop_process(process: subprocess.Popen[str], timeout: float = 20.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@pytest.fixture
def private_bus() -> Iterator[PrivateBus]:
    """A private system-type bus; its address is ``private_bus.address``."""
    bus = _start_bus()
    try:
        yield bus
    finally:
        bus.stop()


@dataclass
class DaemonProcess:
    """A real ``python -m nordwgd`` process attached to a private bus inside a netns."""

    bus: PrivateBus
    netns: str
    config: Path
    log: Path
    process: subprocess.Popen[str] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # nsenter keeps the machine's /sys (and its cgroup mounts), which `ip netns exec` replaces:
    # nft must see /sys/fs/cgroup to load a rule that names a cgroup.
    keep_sys: bool = False

    def start(self, timeout: float = 30.0) -> None:
        env = {key: value for key, value in os.environ.items() if key in ("PATH", "LANG")}
        env.update(self.extra_env)
        env["PYTHONPATH"] = str(REPO)
        env["DBUS_SYSTEM_BUS_ADDRESS"] = self.bus.address
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [
                    *(
                        ["nsenter", f"--net=/run/netns/{self.netns}"]
                        if self.keep_sys
                        else ["ip", "netns", "exec", self.netns]
                    ),
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
                text=True,
                env=env,
                cwd=REPO,
            )
        deadline = time.monotonic() + timeout
        while not self.bus.name_has_owner():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"nordwgd exited with {self.process.returncode}:\n{self.log_text()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nordwgd did not take its bus name:\n{self.log_text()}")
            time.sleep(0.05)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        _stop_process(self.process)
        return self.process.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-8000:] if self.log.exists() else ""


def client_argv(user: str | None = None) -> list[str]:
    """Prefix that runs a command as ``user`` (name) or as the current user."""
    if user is None:
        return []
    return ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", "--"]


_CALL_SCRIPT = r"""
import asyncio, json, sys
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from nordwgd.bus.convert import plain

async def main():
    address, interface, member, signature, body = sys.argv[1:6]
    bus = await MessageBus(bus_address=address).connect()
    args = json.loads(body)
    if signature == "a{sv}":
        args = [{k: Variant("s", v) for k, v in args[0].items()}]
    reply = await bus.call(Message(destination="org.nordwgd.Nordwgd1", path="/org/nordwgd/Nordwgd1",
        interface=interface, member=member, signature=signature, body=args))
    if reply.message_type is MessageType.ERROR:
        message = reply.body[0] if reply.body else ""
        print(json.dumps({"error": reply.error_name, "message": message}))
    else:
        print(json.dumps({"body": plain(reply.body)}, default=str))

asyncio.run(main())
"""


def call_as(
    bus: PrivateBus,
    user: str | None,
    member: str,
    signature: str = "",
    body: Sequence[object] = (),
    *,
    interface: str = "org.nordwgd.Nordwgd1.Manager",
) -> dict[str, object]:
    """Call a method from a separate client process (as ``user``); {"error"|"body": ...}."""
    result = subprocess.run(
        [
            *client_argv(user),
            PYTHON,
            "-c",
            _CALL_SCRIPT,
            bus.address,
            interface,
            member,
            signature,
            json.dumps(list(body)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)},
    )
    if result.returncode != 0:
        raise RuntimeError(f"client as {user} failed: {result.stderr}")
    reply: dict[str, object] = json.loads(result.stdout)
    return reply


@contextlib.contextmanager
def running_daemon(
    bus: PrivateBus, netns: str, config: Path, log: Path, *, keep_sys: bool = False
) -> Iterator[DaemonProcess]:
    """Start nordwgd on ``bus`` inside ``netns``; stop it (SIGTERM) afterwards."""
    daemon = DaemonProcess(bus=bus, netns=netns, config=config, log=log, keep_sys=keep_sys)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


# In-process service around a Manager double (adapter tests) ---------------------------


def sample_server(hostname: str = "de1001.nordvpn.com", **fields: Any) -> Server:
    """A server as the catalog would give it (documentation addresses only)."""
    values: dict[str, Any] = {
        "id": 1001,
        "name": "Germany #1001",
        "hostname": hostname,
        "station": IPv4Address("203.0.113.10"),
        "ipv6_station": None,
        "load": 12,
        "status": "online",
        "country": "Germany",
        "country_code": "DE",
        "country_id": 81,
        "city": "Frankfurt",
        "city_id": 2215709,
        "groups": ("legacy_standard",),
        "group_titles": ("Standard VPN servers",),
        "public_key": "A" * 43 + "=",
    }
    values.update(fields)
    return Server(**values)


class RecordingManager:
    """Implements the Manager facade in memory and records every call it gets."""

    def __init__(self) -> None:
        self.current = Status(allow_lan=True, version="0.1.0")
        self.calls: list[tuple[str, object]] = []
        self.failure: BaseException | None = None
        self._subscribers: list[Callable[[Status], None]] = []

    def status(self) -> Status:
        return self.current

    def subscribe(self, callback: Callable[[Status], None]) -> None:
        self._subscribers.append(callback)

    def set(self, **fields: Any) -> None:
        """Change the status without publishing it (the counters change that way)."""
        self.current = replace(self.current, **fields)

    def change(self, **fields: Any) -> None:
        """Change the status and publish it, as the state machine does at a transition."""
        self.set(**fields)
        for callback in self._subscribers:
            callback(self.current)

    def _record(self, name: str, argument: object = None) -> None:
        self.calls.append((name, argument))
        if self.failure is not None:
            raise self.failure

    async def connect(self, options: Mapping[str, str]) -> None:
        self._record("connect", dict(options))
        self.change(state=State.CONNECTING, blocking=Blocking.BLOCKED)
        self.change(
            state=State.CONNECTED,
            interface="nwg0",
            server=sample_server(load=7, groups=("legacy_p2p",)),
            connected_since=1_700_000_000_000_000,
            rx_bytes=10,
        )

    async def disconnect(self) -> None:
        self._record("disconnect")
        self.change(state=State.DISCONNECTED, blocking=Blocking.OPEN, server=None, interface="")

    async def reconnect(self) -> None:
        self._record("reconnect")

    async def renew(self) -> None:
        self._record("renew")

    async def check_health(self) -> tuple[bool, dict[str, object]]:
        self._record("check_health")
        return True, {"handshake_age": 1.5, "probes": {"http://192.0.2.1/": "ok"}}

    async def set_lockdown(self, enabled: bool, /) -> None:
        self._record("set_lockdown", enabled)
        self.change(lockdown=enabled)

    async def set_allow_lan(self, enabled: bool, /) -> None:
        self._record("set_allow_lan", enabled)
        self.change(allow_lan=enabled)

    async def set_token(self, token: str, /) -> None:
        self._record("set_token", len(token))

    async def set_login(self, username: str, password: str, /) -> None:
        self._record("set_login", (username, len(password)))

    async def logout(self) -> None:
        self._record("logout")

    async def list_countries(self) -> list[tuple[str, str, str]]:
        self._record("list_countries")
        return [("DE", "Germany", "81"), ("SE", "Sweden", "208")]

    async def list_cities(self, country: str, /) -> list[tuple[str, str]]:
        self._record("list_cities", country)
        if country != "DE":
            raise errors.UnknownLocation(f"country {country!r}", ["Germany"])
        return [("Frankfurt", "2215")]

    async def list_groups(self) -> list[tuple[str, str]]:
        self._record("list_groups")
        return [("legacy_double_vpn", "Double VPN"), ("legacy_p2p", "P2P")]

    async def list_servers(self, filter: Mapping[str, str], /) -> list[dict[str, object]]:
        self._record("list_servers", dict(filter))
        return [{"hostname": "de1001.nordvpn.com", "load": 7, "groups": ["P2P"], "x": None}]

    async def get_statistics(self) -> dict[str, object]:
        self._record("get_statistics")
        return {"rx_bytes": 10, "tx_bytes": 20, "latest_handshake": 0}

    async def diagnose(self, mode: str, /) -> dict[str, object]:
        self._record("diagnose", mode)
        return {"mode": mode, "public_ip": "198.51.100.7"}


async def connect_client(address: str) -> MessageBus:
    return await MessageBus(bus_address=address).connect()


class Service:
    def __init__(
        self,
        bus: MessageBus,
        client: MessageBus,
        manager: RecordingManager,
        interface: ManagerInterface | None = None,
    ) -> None:
        self.bus = bus
        self.client = client
        self.manager = manager
        self.interface = interface

    async def call(
        self,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        interface: str = INTERFACE_NAME,
    ) -> Message:
        reply = await self.client.call(
            Message(
                destination=BUS_NAME,
                path=OBJECT_PATH,
                interface=interface,
                member=member,
                signature=signature,
                body=body or [],
            )
        )
        assert reply is not None
        return reply

    async def error_of(
        self, member: str, signature: str = "", body: list[Any] | None = None
    ) -> str:
        reply = await self.call(member, signature, body)
        assert reply.message_type is MessageType.ERROR, f"{member} unexpectedly succeeded"
        assert reply.error_name is not None
        return reply.error_name

    async def ok(
        self, member: str, signature: str = "", body: list[Any] | None = None
    ) -> list[Any]:
        reply = await self.call(member, signature, body)
        assert reply.message_type is MessageType.METHOD_RETURN, (reply.error_name, reply.body)
        return list(reply.body)


@pytest.fixture
async def service(private_bus: PrivateBus) -> AsyncIterator[Service]:
    bus = await ServiceBus(bus_address=private_bus.address).connect()
    manager = RecordingManager()
    interface = export_manager(bus, manager, Authorizer(bus, timeout=30))
    assert await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE) is RequestNameReply.PRIMARY_OWNER
    client = await connect_client(private_bus.address)
    try:
        yield Service(bus, client, manager, interface)
    finally:
        client.disconnect()
        bus.disconnect()


@pytest.fixture(scope="module")
def module_bus() -> Iterator[PrivateBus]:
    """A private bus shared by a test module (for one long-lived daemon)."""
    bus = _start_bus()
    try:
        yield bus
    finally:
        bus.stop()


@pytest.fixture(scope="module")
def world_daemon(
    shared_world: Any, module_bus: PrivateBus, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProcess]:
    """The real daemon in the shared test world's host namespace, on ``module_bus``."""
    directory = tmp_path_factory.mktemp("daemon")
    config = shared_world.write_config(directory / "nordwgd.toml")
    daemon = DaemonProcess(
        bus=module_bus, netns=shared_world.host_ns, config=config, log=directory / "daemon.log"
    )
    daemon.start()
    try:
        yield daemon
    finally:
        code = daemon.stop()
        if code != 0:
            raise AssertionError(f"nordwgd exited with {code}:\n{daemon.log_text()}")
