"""The applets: from a change on nordwgd's bus to the tray's icon (and to the GNOME Shell
toggle's icon) having changed, the tray's idle memory and wakeups, and beside them the anchor:
what a widget that runs ``nordwgctl status --json`` once a second costs.

The change is Lockdown toggled by root through the real daemon (the icon goes from "open" to
"blocked" and back). Everything is stamped with CLOCK_MONOTONIC: the SetLockdown call leaving
the bench, the daemon's PropertiesChanged reaching the bench (the daemon's own share: applying
the firewall), and the applet's change: the tray's NewIcon reaching the bench on the session bus
(a small desktop: StatusNotifierWatcher and notification server), or in GNOME Shell the
toggle's notify::icon-name, stamped by a handler installed through Eval with
GLib.get_monotonic_time(). The figures run from the call, because the bench's own receipt of
the signal can come after the applet's on a loaded machine.

Run: ``.venv/bin/python -m bench.bench_desktop [--gnome]`` (as root; --gnome needs the
desktop root that scripts/desktop-root builds).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from bench import REPO, Daemon, median, ms, percentile, private_bus, wait_for_name
from nordwgd.testing.desktopdouble import Desktop
from nordwgd.testing.privatebus import start_bus
from nordwgd.testing.world import World

PYTHON = str(REPO / ".venv" / "bin" / "python")
CHANGES = 40
IDLE_SECONDS = 60.0
MANAGER = "org.nordwgd.Nordwgd1.Manager"


def _context_switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Stamps:
    """CLOCK_MONOTONIC of each PropertiesChanged carrying Lockdown, and of each NewIcon."""

    def __init__(self) -> None:
        self.sent: list[float] = []
        self.changed: list[float] = []
        self.icons: list[float] = []
        self.icon_event = asyncio.Event()

    def on_system(self, message: Message) -> None:
        if message.member == "PropertiesChanged" and "Lockdown" in message.body[1]:
            self.changed.append(time.monotonic())

    def on_session(self, message: Message) -> None:
        if message.member == "NewIcon" and message.interface == "org.kde.StatusNotifierItem":
            self.icons.append(time.monotonic())
            self.icon_event.set()


async def _match(bus: MessageBus, rule: str) -> None:
    await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=[rule],
        )
    )


async def _set_lockdown(bus: MessageBus, value: bool, stamps: Stamps) -> None:
    stamps.sent.append(time.monotonic())
    reply = await bus.call(
        Message(
            destination="org.nordwgd.Nordwgd1",
            path="/org/nordwgd/Nordwgd1",
            interface=MANAGER,
            member="SetLockdown",
            signature="b",
            body=[value],
        )
    )
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply


async def _tray_latency(
    system_address: str, session_address: str
) -> tuple[list[float], list[float]]:
    stamps = Stamps()
    system = await MessageBus(bus_address=system_address).connect()
    session = await MessageBus(bus_address=session_address).connect()
    await _match(system, "type='signal',interface='org.freedesktop.DBus.Properties'")
    await _match(session, "type='signal',interface='org.kde.StatusNotifierItem'")
    system.add_message_handler(stamps.on_system)
    session.add_message_handler(stamps.on_session)
    latencies: list[float] = []
    for index in range(CHANGES):
        stamps.icon_event.clear()
        before = len(stamps.icons)
        await _set_lockdown(system, index % 2 == 0, stamps)
        await asyncio.wait_for(stamps.icon_event.wait(), 10)
        assert len(stamps.icons) == before + 1
        latencies.append(stamps.icons[-1] - stamps.sent[-1])
        await asyncio.sleep(0.05)
    system.disconnect()
    session.disconnect()
    return latencies, _daemon_share(stamps)


def _daemon_share(stamps: Stamps) -> list[float]:
    return [changed - sent for sent, changed in zip(stamps.sent, stamps.changed, strict=True)]


def _anchor(address: str, seconds: float) -> dict[str, float]:
    """``nordwgctl status --json`` once a second: the anchor widgets' way."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)}
    runs = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        tick = time.monotonic()
        subprocess.run(
            [PYTHON, "-m", "nordwgd.cli", "--bus", address, "status", "--json"],
            stdout=subprocess.DEVNULL, env=env, check=True,
        )  # fmt: skip
        runs += 1
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    minutes = (time.monotonic() - started) / 60
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    switches = (after.ru_nvcsw - before.ru_nvcsw) + (after.ru_nivcsw - before.ru_nivcsw)
    return {
        "runs": runs,
        "cpu_s_per_min": round(cpu / minutes, 2),
        "wakeups_per_min": round(switches / minutes),
    }


def run_tray(idle_seconds: float = IDLE_SECONDS) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="nordwgd-bench-desktop-") as tmp:
        directory = Path(tmp)
        world = World.build(directory / "world")
        session = start_bus(directory / "session")
        tray: subprocess.Popen[bytes] | None = None
        try:
            with private_bus() as address:
                daemon = Daemon(address, world.host_ns, world.write_config(directory / "c.toml"),
                                directory / "daemon.log")  # fmt: skip
                daemon.spawn()
                try:
                    asyncio.run(wait_for_name(address))
                    loop = asyncio.new_event_loop()
                    desk = loop.run_until_complete(Desktop.start(session.address))
                    env = {
                        "PATH": os.environ.get("PATH", ""),
                        "PYTHONPATH": str(REPO),
                        "DBUS_SESSION_BUS_ADDRESS": session.address,
                        "DBUS_SYSTEM_BUS_ADDRESS": address,
                        "XDG_DATA_DIRS": "/nonexistent",
                    }
                    tray = subprocess.Popen(
                        [PYTHON, "-m", "nordwgd_tray"], env=env, cwd="/",
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                    while not desk.watcher.items:
                        loop.run_until_complete(asyncio.sleep(0.05))
                    latencies, daemon_part = loop.run_until_complete(
                        _tray_latency(address, session.address)
                    )
                    time.sleep(7)  # the tray's registration checks end 6 s after registering
                    rss = _rss_mb(tray.pid)
                    before = _context_switches(tray.pid)
                    anchor = _anchor(address, idle_seconds)
                    wakeups = _context_switches(tray.pid) - before
                    desk.stop()
                    loop.close()
                finally:
                    daemon.stop()
        finally:
            if tray is not None:
                tray.terminate()
                tray.wait(10)
            session.stop()
            world.close()
    return {
        "name": "tray",
        "changes": CHANGES,
        "call_to_icon_ms_median": ms(median(latencies)),
        "call_to_icon_ms_p99": ms(percentile(latencies, 0.99)),
        "daemon_share_ms_median": ms(median(daemon_part)),
        "tray_idle_rss_mb": round(rss, 1),
        "tray_idle_wakeups_per_min": round(wakeups * 60 / idle_seconds),
        "anchor": anchor,
    }


def run_gnome() -> dict[str, object]:
    """Lockdown changes to the toggle's icon in a real GNOME Shell 43."""
    sys.path.insert(0, str(REPO))
    from tests.desktop.conftest import stage_for  # the desktop suite's stage
    from tests.desktop.gnome import (
        APPINDICATOR_UUID,
        UNSAFE_UUID,
        UUID,
        Shell,
        extensions_for,
    )

    with tempfile.TemporaryDirectory(prefix="nordwgd-bench-gnome-") as tmp:
        world = World.build(Path(tmp) / "world")
        try:
            with stage_for("gnome", world, extensions=extensions_for("43"),
                           enabled=[UUID, UNSAFE_UUID, APPINDICATOR_UUID]) as stage:  # fmt: skip
                shell = Shell(stage.desktop)
                shell.wait_started()
                deadline = time.monotonic() + 60
                while shell.toggle()["subtitle"] != "Off":
                    assert time.monotonic() < deadline, "the toggle never showed the daemon"
                    time.sleep(0.1)
                shell.eval(
                    "const {GLib} = imports.gi; globalThis.nwgdStamps = [];"
                    "toggle.connect('notify::icon-name',"
                    " () => globalThis.nwgdStamps.push(GLib.get_monotonic_time()));"
                    " return true;"
                )
                latencies, daemon_part = asyncio.run(_gnome_latency(stage.bus.address, shell))
        finally:
            world.close()
    return {
        "name": "gnome-toggle",
        "changes": len(latencies),
        "call_to_toggle_ms_median": ms(median(latencies)),
        "call_to_toggle_ms_p99": ms(percentile(latencies, 0.99)),
        "daemon_share_ms_median": ms(median(daemon_part)),
    }


async def _gnome_latency(address: str, shell: Any) -> tuple[list[float], list[float]]:
    stamps = Stamps()
    system = await MessageBus(bus_address=address).connect()
    await _match(system, "type='signal',interface='org.freedesktop.DBus.Properties'")
    system.add_message_handler(stamps.on_system)
    for index in range(CHANGES):
        await _set_lockdown(system, index % 2 == 0, stamps)
        deadline = time.monotonic() + 10
        while len(shell.eval("return globalThis.nwgdStamps;")) < index + 1:
            assert time.monotonic() < deadline, "the toggle did not change"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
    shown = shell.eval("return globalThis.nwgdStamps;")
    system.disconnect()
    latencies = [at / 1e6 - sent for at, sent in zip(shown, stamps.sent, strict=True)]
    return latencies, _daemon_share(stamps)


if __name__ == "__main__":
    results = [run_tray()]
    if "--gnome" in sys.argv:
        results.append(run_gnome())
    print(json.dumps(results, indent=2))
