"""nordwgd-tray against the real daemon (private system bus, namespaced world) and a small
real desktop (a StatusNotifierWatcher and a notification server on a private session bus).

The tray runs as its own process, as an unprivileged user, exactly as installed; the test talks
to it only over D-Bus, as a tray host does: it reads the item's properties, fetches the menu
layout and sends clicks.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pytest
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method

from nordwgd.testing.desktopdouble import Desktop, find, flatten
from nordwgd.testing.privatebus import PrivateBus, start_bus
from tests.fixtures_dbus import PYTHON, REPO, DaemonProcess, client_argv

pytestmark = [pytest.mark.root, pytest.mark.slow]

T = TypeVar("T")
WAIT = 60.0
TRAY_USER = "nobody"


async def eventually(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], what: str, limit: float = WAIT
) -> T:
    """Poll ``probe`` until ``accept`` holds; fail naming ``what`` and the last value seen."""
    deadline = time.monotonic() + limit
    last: Any = None
    while True:
        try:
            last = await probe()
            if accept(last):
                return last
        except Exception as error:  # the thing probed may not be there yet
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")
        await asyncio.sleep(0.05)


class PolicyAuthority(ServiceInterface):
    """polkit's Authority as a test machine configures it: a set of allowed actions."""

    def __init__(self, allowed: set[str]) -> None:
        super().__init__("org.freedesktop.PolicyKit1.Authority")
        self.allowed = allowed
        self.asked: list[str] = []

    @dbus_method()
    def CheckAuthorization(
        self,
        subject: Annotated[list[Any], DBusSignature("(sa{sv})")],
        action_id: DBusStr,
        details: Annotated[dict[str, str], DBusSignature("a{ss}")],
        flags: DBusUInt32,
        cancel: DBusStr,
    ) -> Annotated[list[Any], DBusSignature("(bba{ss})")]:
        self.asked.append(action_id)
        return [action_id in self.allowed, False, {}]


@pytest.fixture
async def polkit(module_bus: PrivateBus) -> AsyncIterator[PolicyAuthority]:
    """Active local users may control the connection but not change settings."""
    bus = await MessageBus(bus_address=module_bus.address).connect()
    authority = PolicyAuthority({"org.nordwgd.nordwgd1.control"})
    bus.export("/org/freedesktop/PolicyKit1/Authority", authority)
    await bus.request_name("org.freedesktop.PolicyKit1")
    try:
        yield authority
    finally:
        bus.disconnect()


@pytest.fixture
def session_bus() -> Iterator[PrivateBus]:
    bus = start_bus()
    try:
        yield bus
    finally:
        bus.stop()


@pytest.fixture
async def desktop(session_bus: PrivateBus) -> AsyncIterator[Desktop]:
    started = await Desktop.start(session_bus.address)
    try:
        yield started
    finally:
        started.stop()


class TrayProcess:
    def __init__(
        self, session: PrivateBus, system: PrivateBus, log: Path, path: str | None = None
    ) -> None:
        env = {
            "PATH": path or os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPO),
            "HOME": str(log.parent),
            "XDG_DATA_DIRS": "/nonexistent",  # no icon theme: our own icons are used
            "DBUS_SESSION_BUS_ADDRESS": session.address,
            "DBUS_SYSTEM_BUS_ADDRESS": system.address,
        }
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [*client_argv(TRAY_USER), PYTHON, "-m", "nordwgd_tray", "--log-level=info"],
                env=env,
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
async def tray(
    desktop: Desktop,
    session_bus: PrivateBus,
    world_daemon: DaemonProcess,
    polkit: PolicyAuthority,
    tmp_path: Path,
) -> AsyncIterator[TrayProcess]:
    process = TrayProcess(session_bus, world_daemon.bus, tmp_path / "tray.log")
    try:
        await eventually(
            lambda: asyncio.sleep(0, desktop.watcher.items), bool, "the tray to register"
        )
        yield process
    finally:
        process.stop()
        print(process.text())
    # Leave the daemon as the next test expects it.
    await _settle(world_daemon)


async def _settle(daemon: DaemonProcess) -> None:
    from tests.fixtures_dbus import call_as

    call_as(daemon.bus, None, "SetLockdown", "b", [False])
    call_as(daemon.bus, None, "Disconnect")


async def icon(desktop: Desktop) -> str:
    return str((await desktop.item())["IconName"])


async def state_label(desktop: Desktop) -> str:
    _revision, layout = await desktop.menu()
    return str(flatten(layout)[1][1]["label"])


def summaries(desktop: Desktop) -> list[str]:
    return [n.summary for n in desktop.notifications.received]


async def test_tray_shows_the_daemon_and_its_menu_connects_and_disconnects(
    desktop: Desktop, tray: TrayProcess
) -> None:
    await eventually(lambda: icon(desktop), lambda i: i == "nordwgd-open", "the open icon")
    item = await desktop.item()
    assert item["Menu"] == "/MenuBar"
    assert item["IconThemePath"].endswith("data/icons")
    assert item["ToolTip"][2] == "NordVPN: Disconnected"
    assert await state_label(desktop) == "Disconnected"

    _revision, layout = await desktop.menu()
    quick, properties = find(layout, "Quick connect")
    assert properties["enabled"] is True
    await desktop.click(quick)

    await eventually(lambda: icon(desktop), lambda i: i == "nordwgd-connected", "connected")
    label = await state_label(desktop)
    assert label.startswith("Connected to "), label
    tooltip = (await desktop.item())["ToolTip"]
    assert "Server: " in tooltip[3] and "Connected since" in tooltip[3]
    await eventually(
        lambda: asyncio.sleep(0, summaries(desktop)),
        lambda s: "VPN connected" in s,
        "the connected notification",
    )

    _revision, layout = await desktop.menu()
    await desktop.click(find(layout, "Disconnect")[0])
    await eventually(lambda: icon(desktop), lambda i: i == "nordwgd-open", "disconnected")
    await eventually(
        lambda: asyncio.sleep(0, summaries(desktop)),
        lambda s: s[-1:] == ["VPN disconnected"],
        "the disconnected notification",
    )
    assert "without the VPN" in desktop.notifications.received[-1].body


async def test_countries_submenu_lists_the_daemons_countries_and_connects_to_one(
    desktop: Desktop, tray: TrayProcess, world_daemon: DaemonProcess
) -> None:
    from tests.fixtures_dbus import call_as

    body = call_as(world_daemon.bus, None, "ListCountries")["body"]
    assert isinstance(body, list)
    countries = body[0]
    assert countries
    names = sorted(str(name) for _code, name, _id in countries)

    async def country_entries() -> list[str]:
        _revision, layout = await desktop.menu()
        return [str(p["label"]) for _id, p, depth in flatten(layout) if depth == 2 and "label" in p]

    # All countries, sorted, after the recently used ones.
    entries = await eventually(
        country_entries, lambda e: e[len(e) - len(names) :] == names, "the countries submenu"
    )
    servers = call_as(world_daemon.bus, None, "ListServers", "a{sv}", [{}])["body"]
    assert isinstance(servers, list)
    target = sorted({str(server["country"]) for server in servers[0]})[-1]
    assert target in entries
    _revision, layout = await desktop.menu()
    await desktop.click(find(layout, target)[0])
    await eventually(lambda: icon(desktop), lambda i: i == "nordwgd-connected", "connected")
    server = call_as(
        world_daemon.bus,
        None,
        "Get",
        "ss",
        ["org.nordwgd.Nordwgd1.Manager", "Server"],
        interface="org.freedesktop.DBus.Properties",
    )["body"]
    assert isinstance(server, list)
    assert server[0]["country"] == target
    # The daemon's RecentLocations put the country first in the submenu.
    await eventually(country_entries, lambda e: e[0] == target, "the recent country first")


async def test_a_refused_lockdown_is_notified_with_what_and_why(
    desktop: Desktop, tray: TrayProcess, polkit: PolicyAuthority
) -> None:
    await eventually(lambda: icon(desktop), lambda i: i == "nordwgd-open", "the open icon")
    _revision, layout = await desktop.menu()
    lockdown, properties = find(layout, "Lockdown")
    assert properties["toggle-type"] == "checkmark" and properties["toggle-state"] == 0
    await desktop.click(lockdown)
    notice = await eventually(
        lambda: asyncio.sleep(0, desktop.notifications.received[-1:]),
        lambda n: bool(n) and n[0].summary.startswith("Not allowed"),
        "the refusal notification",
    )
    assert notice[0].summary == "Not allowed: turning Lockdown on"
    assert "org.nordwgd.nordwgd1.configure" in notice[0].body and "polkit" in notice[0].body
    assert polkit.asked[-1] == "org.nordwgd.nordwgd1.configure"
    _revision, layout = await desktop.menu()
    assert find(layout, "Lockdown")[1]["toggle-state"] == 0


async def test_lockdown_set_elsewhere_shows_as_blocked(
    desktop: Desktop, tray: TrayProcess, world_daemon: DaemonProcess
) -> None:
    from tests.fixtures_dbus import call_as

    await eventually(lambda: icon(desktop), lambda i: i == "nordwgd-open", "the open icon")
    assert "error" not in call_as(world_daemon.bus, None, "SetLockdown", "b", [True])
    await eventually(lambda: icon(desktop), lambda i: i == "nordwgd-blocked", "the blocked icon")
    assert await state_label(desktop) == "Disconnected, traffic blocked (lockdown)"
    _revision, layout = await desktop.menu()
    assert find(layout, "Lockdown")[1]["toggle-state"] == 1


async def test_daemon_stop_and_start_are_followed(
    desktop: Desktop, tray: TrayProcess, world_daemon: DaemonProcess
) -> None:
    await eventually(lambda: icon(desktop), lambda i: i == "nordwgd-open", "the open icon")
    world_daemon.stop()
    await eventually(lambda: icon(desktop), lambda i: i == "nordwgd-absent", "the absent icon")
    assert await state_label(desktop) == "nordwgd is not running"
    assert summaries(desktop)[-1] == "VPN service stopped"
    _revision, layout = await desktop.menu()
    assert find(layout, "Quick connect")[1]["enabled"] is False
    world_daemon.start()
    await eventually(lambda: icon(desktop), lambda i: i == "nordwgd-open", "the icon back")
    _revision, layout = await desktop.menu()
    assert find(layout, "Quick connect")[1]["enabled"] is True


async def test_tray_registers_again_with_a_new_watcher_and_after_being_dropped(
    desktop: Desktop, tray: TrayProcess, session_bus: PrivateBus
) -> None:
    name = desktop.watcher.items[-1][0]
    # The AppIndicator extension sometimes forgets an item right after it registered.
    desktop.watcher.drop(name)
    await eventually(
        lambda: asyncio.sleep(0, desktop.watcher.items), bool, "registering again after a drop"
    )
    # The tray host restarts: a new watcher appears on the bus.
    desktop.stop()
    again = await Desktop.start(session_bus.address)
    try:
        await eventually(
            lambda: asyncio.sleep(0, again.watcher.items), bool, "registering with a new watcher"
        )
        assert (await again.item())["Id"] == "nordwgd"
    finally:
        again.stop()


def _switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


async def test_idle_tray_does_not_wake_up(desktop: Desktop, tray: TrayProcess) -> None:
    await eventually(lambda: icon(desktop), lambda i: i == "nordwgd-open", "the open icon")
    pid = tray.process.pid  # setpriv execs the tray: this is the tray itself
    # The registration checks (the AppIndicator workaround) end 6 s after registering.
    await asyncio.sleep(7)
    before = _switches(pid)
    await asyncio.sleep(5)
    assert _switches(pid) - before == 0


def _fake_terminal(bin_dir: Path) -> tuple[Path, Path]:
    """An x-terminal-emulator that writes its arguments to a file the tray's user can write."""
    bin_dir.chmod(0o755)
    record = bin_dir / "argv"
    record.touch()
    record.chmod(0o666)
    terminal = bin_dir / "x-terminal-emulator"
    terminal.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    terminal.chmod(0o755)
    return bin_dir, record


async def test_show_status_opens_a_terminal_or_else_tells_the_status(
    desktop: Desktop, session_bus: PrivateBus, world_daemon: DaemonProcess, polkit: object
) -> None:
    """Activating the item (a left click in most trays) shows the status: in a terminal when
    there is one, else in a notification."""
    with tempfile.TemporaryDirectory(prefix="nordwgd-terminal-") as top:
        bin_dir, record = _fake_terminal(Path(top))
        for path, expect_terminal in ((f"{bin_dir}:/usr/bin:/bin", True), ("/usr/bin:/bin", False)):
            desktop.watcher.items.clear()
            tray = TrayProcess(session_bus, world_daemon.bus, bin_dir / "tray.log", path=path)
            try:
                await eventually(
                    lambda: asyncio.sleep(0, desktop.watcher.items), bool, "the tray to register"
                )
                await eventually(lambda: icon(desktop), lambda i: i == "nordwgd-open", "open")
                name, _sender = desktop.watcher.items[-1]
                await desktop.call(
                    name,
                    "/StatusNotifierItem",
                    "org.kde.StatusNotifierItem",
                    "Activate",
                    "ii",
                    [0, 0],
                )
                if expect_terminal:
                    argv = await eventually(
                        lambda: asyncio.sleep(0, record.read_text().split("\n")),
                        lambda lines: len(lines) > 3,
                        "the terminal to be started",
                    )
                    assert argv[:3] == ["-e", "sh", "-c"]
                    assert argv[3].startswith("nordwgctl status")
                else:
                    notice = await eventually(
                        lambda: asyncio.sleep(0, desktop.notifications.received[-1:]),
                        lambda n: bool(n) and n[0].summary == "NordVPN: Disconnected",
                        "the status notification",
                    )
                    assert "Lockdown: off" in notice[0].body
            finally:
                tray.stop()
