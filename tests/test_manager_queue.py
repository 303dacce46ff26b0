"""Every command of the Manager goes through the state machine's one queue, in arrival order.

The races here were real: a Connect to a named server whose API look-up ran before it was
queued (so a Disconnect sent after it was handled first), a Renew that changed the planner
under a running plan, settings and tokens written to disk from racing threads. The engine is
the double of test_machine; the API is the fake one over HTTPS on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nordwgd import manager as manager_module
from nordwgd.config import Config
from nordwgd.manager import Manager, load_settings, read_target
from nordwgd.states import State
from nordwgd.testing.fakeapi import FakeApi
from nordwgd.testing.fleet import default_token
from nordwgd.token import load_token
from tests.fixtures_world import manager_on_fake_api
from tests.test_machine import FakeEngine

WAIT = 10.0  # upper bound for waits on state; never an assertion about speed


@dataclass
class Built:
    manager: Manager
    engine: FakeEngine
    config: Config
    api: FakeApi

    async def settle(self, seconds: float = 0.5) -> None:
        """Give queued work time to run (what a wrong order would do shows by then)."""
        await asyncio.sleep(seconds)


@pytest.fixture
async def built(tmp_path: Path) -> AsyncIterator[Built]:
    async with manager_on_fake_api(tmp_path) as (manager, engine, config, fake):
        await manager.set_token(default_token())
        yield Built(manager, engine, config, fake)


async def test_connect_to_a_server_then_disconnect_ends_disconnected(built: Built) -> None:
    # The look-up of the named server hangs (until the API timeout): Disconnect comes after.
    built.api.set_fault("hang", count=1, paths="/v1/servers")
    connect = asyncio.ensure_future(built.manager.connect({"server": "de1001.nordvpn.com"}))
    await asyncio.sleep(0.3)
    await built.manager.disconnect()
    await connect
    await built.settle(2.5)  # past the look-up's timeout
    status = built.manager.status()
    assert status.state == State.DISCONNECTED, status
    assert not built.engine.tunnel_is_up
    assert read_target(built.config) is None


async def test_renew_never_changes_the_planner_under_a_running_plan(built: Built) -> None:
    planner = built.manager._planner
    assert planner is not None
    running: set[str] = set()
    overlaps: list[tuple[str, frozenset[str]]] = []

    def watched(name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            if running:
                overlaps.append((name, frozenset(running)))
            running.add(name)
            try:
                return await method(*args, **kwargs)
            finally:
                running.discard(name)

        return call

    planner.plan = watched("plan", planner.plan)  # type: ignore[method-assign]
    planner.refresh = watched("refresh", planner.refresh)  # type: ignore[method-assign]
    # The first plan waits for its server list (until the API timeout).
    built.api.set_fault("hang", count=1, paths="/v1/servers/recommendations")
    await built.manager.connect({"country": "DE"})
    await asyncio.sleep(0.3)
    await built.manager.renew()
    await built.manager.wait_for(lambda status: status.state == State.CONNECTED, WAIT)
    assert overlaps == []


async def test_two_quick_setting_changes_reach_the_disk_in_order(
    built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = manager_module.save_settings
    calls = 0

    def slow_first_save(config: Config, settings: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            time.sleep(0.3)  # a slow disk under the first write
        real_save(config, settings)

    monkeypatch.setattr(manager_module, "save_settings", slow_first_save)
    await asyncio.gather(built.manager.set_lockdown(True), built.manager.set_lockdown(False))
    await built.settle()
    assert built.manager.status().lockdown is False
    saved = load_settings(built.config)
    assert saved.lockdown is False, "the first change was written last"


async def test_two_quick_tokens_reach_the_disk_in_order(
    built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_store = manager_module.store_token
    calls = 0

    def slow_first_store(state_dir: Path, token: Any) -> Path:
        nonlocal calls
        calls += 1
        if calls == 1:
            time.sleep(0.3)
        return real_store(state_dir, token)

    monkeypatch.setattr(manager_module, "store_token", slow_first_store)
    first, second = "a" * 64, "b" * 64
    await asyncio.gather(built.manager.set_token(first), built.manager.set_token(second))
    await built.settle()
    stored = load_token(built.config)
    assert stored is not None and stored.reveal() == second


async def test_logout_then_connect_is_refused_in_order(built: Built) -> None:
    await built.manager.logout()
    assert load_token(built.config) is None
    from nordwgd import errors

    with pytest.raises(errors.NotLoggedIn):
        await built.manager.connect({})
