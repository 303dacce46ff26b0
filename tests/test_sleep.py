"""Resume from sleep: a fake logind on a private dbus-daemon emits PrepareForSleep."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from dbus_fast import Message, NameFlag, RequestNameReply
from dbus_fast.aio import MessageBus

from nordwgd.bus.sleep import LOGIN1, LOGIN1_MANAGER, LOGIN1_PATH, SleepWatcher
from tests.fixtures_dbus import PrivateBus

LIMIT = 30.0


class Resumes:
    def __init__(self) -> None:
        self.count = 0
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()

    async def next(self) -> None:
        await asyncio.wait_for(self.event.wait(), LIMIT)
        self.event.clear()


def prepare_for_sleep(going_to_sleep: bool) -> Message:
    return Message.new_signal(LOGIN1_PATH, LOGIN1_MANAGER, "PrepareForSleep", "b", [going_to_sleep])


@pytest.fixture
async def buses(private_bus: PrivateBus) -> AsyncIterator[tuple[MessageBus, MessageBus]]:
    """(the daemon's connection, a fake logind owning org.freedesktop.login1)."""
    daemon = await MessageBus(bus_address=private_bus.address).connect()
    logind = await MessageBus(bus_address=private_bus.address).connect()
    try:
        reply = await logind.request_name(LOGIN1, NameFlag.DO_NOT_QUEUE)
        assert reply is RequestNameReply.PRIMARY_OWNER
        yield daemon, logind
    finally:
        daemon.disconnect()
        logind.disconnect()


async def test_resume_triggers_once_and_sleep_does_not(
    buses: tuple[MessageBus, MessageBus],
) -> None:
    daemon, logind = buses
    resumes = Resumes()
    watcher = SleepWatcher(daemon, resumes)
    assert await watcher.start()
    await logind.send(prepare_for_sleep(True))
    await logind.send(prepare_for_sleep(False))
    await resumes.next()
    # Signals from one sender arrive in order: the "going to sleep" one came first and did
    # nothing.
    assert resumes.count == 1
    await logind.send(prepare_for_sleep(False))
    await resumes.next()
    assert resumes.count == 2
    await watcher.stop()


async def test_the_signal_from_anyone_but_logind_is_ignored(
    buses: tuple[MessageBus, MessageBus], private_bus: PrivateBus
) -> None:
    daemon, logind = buses
    resumes = Resumes()
    watcher = SleepWatcher(daemon, resumes)
    assert await watcher.start()
    impostor = await MessageBus(bus_address=private_bus.address).connect()
    try:
        # Sent to the daemon's connection directly, so the bus's sender match cannot drop it.
        spoofed = prepare_for_sleep(False)
        spoofed.destination = daemon.unique_name
        await impostor.send(spoofed)
        # A round trip through the impostor's connection orders it before logind's signal.
        await impostor.call(
            Message(
                destination=daemon.unique_name,
                path="/",
                interface="org.freedesktop.DBus.Peer",
                member="Ping",
            )
        )
    finally:
        impostor.disconnect()
    assert resumes.count == 0
    await logind.send(prepare_for_sleep(False))
    await resumes.next()
    assert resumes.count == 1
    await watcher.stop()


async def test_follows_a_restarted_logind(
    buses: tuple[MessageBus, MessageBus], private_bus: PrivateBus
) -> None:
    daemon, logind = buses
    resumes = Resumes()
    watcher = SleepWatcher(daemon, resumes)
    assert await watcher.start()
    logind.disconnect()
    await logind.wait_for_disconnect()  # type: ignore[no-untyped-call]
    restarted = await MessageBus(bus_address=private_bus.address).connect()
    try:
        assert await restarted.request_name(LOGIN1) is RequestNameReply.PRIMARY_OWNER
        # NameOwnerChanged reaches the watcher before anything the new owner sends.
        await restarted.send(prepare_for_sleep(False))
        await resumes.next()
        assert resumes.count == 1
    finally:
        restarted.disconnect()
    await watcher.stop()


async def test_without_logind_nothing_is_watched(private_bus: PrivateBus) -> None:
    daemon = await MessageBus(bus_address=private_bus.address).connect()
    try:
        watcher = SleepWatcher(daemon, Resumes())
        assert await watcher.start() is False
    finally:
        daemon.disconnect()
