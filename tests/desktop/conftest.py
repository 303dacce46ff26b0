"""The desktop suite's stage: a desktop container, the real nordwgd on a private system bus
that the desktop sees as its own, and polkit as a desktop machine would configure it.

Run by ``scripts/check-desktop`` (NORDWGD_SUITE=desktop). Every wait polls a condition with a
generous limit; the container, the bus and the daemon are removed even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from nordwgd.testing.desktopshell import Desktop, DesktopFailed, build_root, running_desktop
from nordwgd.testing.privatebus import PrivateBus
from nordwgd.testing.world import World
from tests.fixtures_dbus import PYTHON, REPO, DaemonProcess, call_as

T = TypeVar("T")
MANAGER = "org.nordwgd.Nordwgd1.Manager"
WAIT = 90.0
# The screenshots of the last run; docs/screenshots/ holds a chosen set of them.
SHOTS = Path(os.environ.get("NORDWGD_DESKTOP_SHOTS", REPO / ".cache" / "desktop-shots"))
# Desktop users may control the connection; settings need an administrator (refused here).
ALLOWED_ACTIONS = ("org.nordwgd.nordwgd1.control",)


def eventually(
    probe: Callable[[], T], accept: Callable[[T], bool], what: str, limit: float = WAIT
) -> T:
    """Poll ``probe`` until ``accept`` holds; fail naming ``what`` and the last value seen."""
    deadline = time.monotonic() + limit
    last: Any = None
    while True:
        try:
            last = probe()
            if accept(last):
                return last
        except Exception as error:  # not there yet (a shell starting, a name not owned)
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:g} s waiting for {what}; last: {last!r}")
        time.sleep(0.1)


@dataclass
class Stage:
    desktop: Desktop
    bus: PrivateBus
    daemon: DaemonProcess
    polkit: subprocess.Popen[str]

    def call(self, member: str, signature: str = "", body: list[Any] | None = None) -> Any:
        reply = call_as(self.bus, None, member, signature, body or [])
        if "error" in reply:
            raise AssertionError(f"{member}: {reply}")
        result = reply["body"]
        assert isinstance(result, list)
        return result[0] if len(result) == 1 else result

    def prop(self, name: str) -> Any:
        reply = call_as(
            self.bus,
            None,
            "Get",
            "ss",
            [MANAGER, name],
            interface="org.freedesktop.DBus.Properties",
        )
        body = reply["body"]
        assert isinstance(body, list)
        return body[0]

    def wait_state(self, state: str, limit: float = WAIT) -> None:
        eventually(lambda: self.prop("State"), lambda s: s == state, f"State {state}", limit)

    def settle(self) -> None:
        """Back to disconnected with Lockdown off, as every test starts."""
        if self.daemon.process is None or self.daemon.process.poll() is not None:
            self.daemon.start()
        self.call("SetLockdown", "b", [False])
        self.call("Disconnect")
        self.wait_state("disconnected")

    def shot(self, name: str) -> Path:
        """Copy a screenshot taken inside (shots/NAME.png) to SHOTS."""
        source = self.desktop.shots / f"{name}.png"
        eventually(lambda: source.stat().st_size, lambda size: size > 0, f"screenshot {name}", 30)
        SHOTS.mkdir(parents=True, exist_ok=True)
        target = SHOTS / f"{self.desktop.kind}-{name}.png"
        shutil.copyfile(source, target)
        return target


def busctl(address: str, *argv: str, limit: float = 30) -> Any:
    result = subprocess.run(
        ["busctl", f"--address={address}", "--json=short", *argv],
        capture_output=True,
        text=True,
        timeout=limit,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"busctl {' '.join(argv[:4])}: {result.stderr.strip()}")
    return json.loads(result.stdout)["data"] if result.stdout.strip() else None


@contextlib.contextmanager
def stage_for(kind: str, world: World, **desktop_args: Any) -> Iterator[Stage]:
    try:
        root = build_root(kind)
    except DesktopFailed as error:
        pytest.fail(str(error))
    with running_desktop(kind, root, **desktop_args) as desktop:
        bus = desktop.system_bus
        assert bus is not None
        polkit = subprocess.Popen(
            [PYTHON, "-m", "nordwgd.testing.polkitdouble", bus.address, *ALLOWED_ACTIONS],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)},
        )
        daemon = DaemonProcess(
            bus=bus,
            netns=world.host_ns,
            config=world.write_config(desktop.host_dir / "nordwgd.toml"),
            log=desktop.host_dir / "logs" / "nordwgd.log",
        )
        try:
            assert polkit.stdout is not None and polkit.stdout.readline().strip() == "ready"
            daemon.start()
            yield Stage(desktop, bus, daemon, polkit)
        except BaseException:
            print(desktop.logs(), file=sys.stderr)
            raise
        finally:
            daemon.stop()
            polkit.terminate()
            polkit.wait(10)
