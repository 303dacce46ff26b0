"""Benchmarks of nordwgd, run in namespaced test worlds (``python -m bench.run``).

Shared pieces: a private D-Bus daemon, the real ``nordwgd`` daemon inside a world's host
namespace, a D-Bus client that follows the ``PropertiesChanged`` signals, and small statistics.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from nordwgd.bus.convert import plain
from nordwgd.testing import privatebus

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BUS_NAME = "org.nordwgd.Nordwgd1"
OBJECT_PATH = "/org/nordwgd/Nordwgd1"
MANAGER = "org.nordwgd.Nordwgd1.Manager"
PROPERTIES = "org.freedesktop.DBus.Properties"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def stop_process(process: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(10)


@contextlib.contextmanager
def private_bus() -> Iterator[str]:
    """A throw-away system-type dbus-daemon for many clients; yields its address."""
    with privatebus.private_bus(many_clients=True) as bus:
        yield bus.address


@dataclass
class Daemon:
    """The real ``python -m nordwgd`` in a network namespace, on a private bus."""

    bus_address: str
    netns: str
    config: Path
    log: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> subprocess.Popen[bytes]:
        env = {key: value for key, value in os.environ.items() if key in ("PATH", "LANG")}
        env.update(self.extra_env)
        env["PYTHONPATH"] = str(REPO)
        env["DBUS_SYSTEM_BUS_ADDRESS"] = self.bus_address
        with self.log.open("ab") as log:
            # ip netns exec execs the command: the pid is the daemon's own.
            self.process = subprocess.Popen(
                [
                    *("ip", "netns", "exec", self.netns, PYTHON, "-m", "nordwgd"),
                    *("--config", str(self.config), "--log-level", "info"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-200:])
        except OSError:
            return "(no log)"


class NotifySocket:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))

    def wait_for(self, word: str, timeout: float) -> float:
        """perf_counter() when a message holding ``word`` (e.g. READY=1) arrived."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {word} within {timeout} s")
            self._sock.settimeout(remaining)
            data = self._sock.recv(4096)
            if word.encode() in data.split(b"\n"):
                return time.perf_counter()

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


async def wait_for_name(address: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    bus = await MessageBus(bus_address=address).connect()
    try:
        deadline = time.monotonic() + timeout
        while True:
            reply = await bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="NameHasOwner",
                    signature="s",
                    body=[BUS_NAME],
                )
            )
            if reply is not None and reply.body and reply.body[0]:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("nordwgd did not take its bus name")
            await asyncio.sleep(0.02)
    finally:
        bus.disconnect()


class Client:
    """A D-Bus client of nordwgd that records every property change it is told about."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.state: dict[str, Any] = {}
        self.changes: list[tuple[float, dict[str, Any]]] = []
        self._changed = asyncio.Event()
        bus.add_message_handler(self._on_message)

    @classmethod
    async def open(cls, address: str) -> Client:
        bus = await MessageBus(bus_address=address).connect()
        client = cls(bus)
        await client.call(
            "AddMatch",
            "s",
            [
                f"type='signal',interface='{PROPERTIES}',member='PropertiesChanged',"
                f"path='{OBJECT_PATH}'"
            ],
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
        )
        client.state = await client.get_all()
        return client

    def _on_message(self, message: Message) -> bool:
        if message.member == "PropertiesChanged" and message.path == OBJECT_PATH:
            changed = {key: plain(value) for key, value in message.body[1].items()}
            self.state.update(changed)
            self.changes.append((time.perf_counter(), changed))
            self._changed.set()
        return False

    async def call(
        self,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        *,
        destination: str = BUS_NAME,
        path: str = OBJECT_PATH,
        interface: str = MANAGER,
    ) -> list[Any]:
        reply = await self.bus.call(
            Message(
                destination=destination,
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=list(body),
            )
        )
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            raise RuntimeError(f"{member}: {reply.error_name}: {reply.body}")
        return list(reply.body)

    async def get_all(self) -> dict[str, Any]:
        (props,) = await self.call("GetAll", "s", [MANAGER], interface=PROPERTIES)
        return {key: plain(value) for key, value in props.items()}

    async def connect_vpn(self, options: dict[str, str] | None = None) -> None:
        variants = {key: Variant("s", value) for key, value in (options or {}).items()}
        await self.call("Connect", "a{sv}", [variants])

    async def wait_state(self, *states: str, timeout: float) -> float:  # noqa: ASYNC109
        """perf_counter() when State became one of ``states`` (at once if it is already)."""
        deadline = time.monotonic() + timeout
        while self.state.get("State") not in states:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"State stayed {self.state.get('State')!r}, not {states}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        for stamp, changed in reversed(self.changes):
            if changed.get("State") in states:
                return float(stamp)
        return time.perf_counter()

    def close(self) -> None:
        self.bus.disconnect()
