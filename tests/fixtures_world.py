"""pytest fixtures for the namespaced test world (nordwgd.testing.world): the driver process a
world test runs the Manager in, and the Manager on the in-process world (the engine double of
test_machine, the fake API on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from nordwgd.config import ApiConfig, Config, PathsConfig
from nordwgd.manager import Manager
from nordwgd.provider.factory import open_provider
from nordwgd.provider.nordvpn.api import NordVpnApi
from nordwgd.testing.fakeapi import FakeApi
from nordwgd.testing.fleet import default_fleet
from nordwgd.testing.pki import make_pki
from nordwgd.testing.world import World, cleanup_run

if TYPE_CHECKING:
    from tests.test_machine import FakeEngine


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, nftables, wireguard-go)")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A fresh world per test: host, router with fake API, web and DNS, 3 VPN servers."""
    _need_root()
    built = World.build(tmp_path / "world")
    try:
        yield built
    finally:
        built.close()


@pytest.fixture(scope="module")
def shared_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One world for a whole test module; tests must undo what they change in it."""
    _need_root()
    built = World.build(tmp_path_factory.mktemp("world"))
    try:
        yield built
    finally:
        built.close()


@pytest.fixture(scope="session", autouse=True)
def _world_leftovers() -> Iterator[None]:
    yield
    if os.geteuid() == 0:
        cleanup_run()


@contextlib.asynccontextmanager
async def manager_on_fake_api(
    tmp_path: Path,
) -> AsyncIterator[tuple[Manager, FakeEngine, Config, FakeApi]]:
    """A started Manager (no token yet) with the engine double, talking HTTPS to the fake API;
    stopped on the way out."""
    # Imported here: this module is loaded for every test file, test_machine only when used.
    from tests.test_machine import FakeEngine

    pki = make_pki(tmp_path / "pki")
    with FakeApi(default_fleet(), pki) as fake:
        host, port = fake.addresses[0]
        api_config = ApiConfig(
            addresses=(ip_address(host),), port=port, ca_file=pki.ca_cert, timeout=2, attempts=1
        )
        config = Config(
            api=api_config,
            paths=PathsConfig(state_dir=tmp_path / "state", runtime_dir=tmp_path / "run"),
        )
        config = replace(config, health=replace(config.health, handshake_timeout=0.2))
        engine = FakeEngine()
        manager = Manager(
            config,
            engine_factory=lambda _: engine,
            provider_factory=functools.partial(
                open_provider, nordvpn_api=NordVpnApi(api_config, backoff=0.01)
            ),
        )
        await manager.start()
        try:
            yield manager, engine, config, fake
        finally:
            await manager.stop(keep_blocking=False)


class DriverProcess:
    """A process that runs a Manager and speaks JSON lines: commands on stdin; replies, and
    every property change as an event "changed", on stdout, read by a thread into a queue."""

    def __init__(self, process: subprocess.Popen[str], log: Path) -> None:
        self.process = process
        self.log = log
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.changes: list[dict[str, Any]] = []
        self.other: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                self.other.append(line)
                continue
            if message.get("event") == "changed":
                self.changes.append(message["changed"])
            else:
                self.lines.put(message)

    def next(self, limit: float) -> dict[str, Any]:
        try:
            return self.lines.get(timeout=limit)
        except queue.Empty:
            raise AssertionError(f"no answer from the driver; log:\n{self.tail()}") from None

    def send(self, op: str, within: float = 30.0, **fields: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        return self.next(within + 10.0)

    def call(self, op: str, within: float = 30.0, **fields: Any) -> Any:
        reply = self.send(op, within, **fields)
        assert reply.get("reply") == "ok", f"{op}: {reply}\n{self.tail()}"
        return reply["result"]

    def wait(self, limit: float = 30.0, **want: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.call("wait", limit, want=want, limit=limit)
        return result

    def tail(self) -> str:
        try:
            lines = self.log.read_text().splitlines()[-40:]
        except OSError:
            lines = []
        return "\n".join(lines + self.other[-20:])

    def close(self) -> None:
        if self.process.poll() is None:
            if self.process.stdin is not None:
                self.process.stdin.close()  # the driver stops the manager at end of input
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
