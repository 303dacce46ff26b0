"""Desktop shells in throw-away containers, for the desktop tests and benchmarks.

A root built by ``scripts/desktop-root`` (GNOME Shell or KDE Plasma, never installed on the
machine itself) runs in ``systemd-nspawn --volatile=overlay --private-network``: writes go to
a tmpfs, the cached root stays as built, and the container has no network. One host directory
is bound at /run/nordwgd-test; it holds

- the session bus socket (the host's test connects to it directly: Shell's Eval and
  Screenshot, the tray's item and menu, the notification server),
- the system bus socket: a private bus on the host where the real nordwgd runs (in the test
  world's network namespace); the shell and the tray see it as their system bus,
- logs and screenshots.

The repository (with its .venv) is bound read-only at its own path, so the tray runs from it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nordwgd.testing.privatebus import PrivateBus, start_bus

REPO = Path(__file__).resolve().parents[2]
SHARED = Path("/run/nordwgd-test")
USER_UID = 1000
USER_HOME = "/home/desk"
SYSTEM_BUS = f"unix:path={SHARED}/system/bus.sock"
SESSION_BUS = f"unix:path={SHARED}/session.sock"

_SESSION_CONF = f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={SHARED}/session.sock</listen>
  <auth>EXTERNAL</auth>
  <standard_session_servicedirs/>
  <policy context="default">
    <!-- the test on the host (root) talks to this session as well as the desktop user -->
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""

_USER_ENV = f"""export HOME={USER_HOME} XDG_RUNTIME_DIR=/run/user/{USER_UID} USER=desk LANG=C.UTF-8
export DBUS_SESSION_BUS_ADDRESS={SESSION_BUS} DBUS_SYSTEM_BUS_ADDRESS={SYSTEM_BUS}
export NO_AT_BRIDGE=1 GTK_A11Y=none
"""

# Starts as root (pid 2 of the container), then becomes the desktop user.
_ROOT_SCRIPT = f"""set -eu
mkdir -p /run/user/{USER_UID}
chown {USER_UID}:{USER_UID} /run/user/{USER_UID}
chmod 700 /run/user/{USER_UID}
exec setpriv --reuid={USER_UID} --regid={USER_UID} --init-groups -- /bin/sh {SHARED}/session.sh
"""

_GNOME_SESSION = (
    "set -u\n"
    + _USER_ENV
    + f"""T={SHARED}
export XDG_SESSION_TYPE=wayland XDG_CURRENT_DESKTOP=GNOME
dbus-daemon --config-file=$T/session.conf --nofork --nopidfile >$T/logs/session-bus.log 2>&1 &
while [ ! -S $T/session.sock ]; do sleep 0.05; done
mkdir -p $HOME/.local/share/gnome-shell/extensions
cp -r $T/extensions/. $HOME/.local/share/gnome-shell/extensions/
gsettings set org.gnome.shell enabled-extensions "$(cat $T/enabled-extensions)"
gsettings set org.gnome.shell disable-user-extensions false
gsettings set org.gnome.shell disable-extension-version-validation true
gsettings set org.gnome.desktop.interface enable-animations false
touch $T/ready
exec gnome-shell --headless --virtual-monitor 1280x800 --wayland --no-x11 >$T/logs/shell.log 2>&1
"""
)

_KDE_SESSION = (
    "set -u\n"
    + _USER_ENV
    + f"""T={SHARED}
export DISPLAY=:7 QT_QPA_PLATFORM=xcb XDG_CURRENT_DESKTOP=KDE KDE_FULL_SESSION=true
export KDE_SESSION_VERSION=5 QT_QUICK_BACKEND=software LIBGL_ALWAYS_SOFTWARE=1
Xvfb :7 -screen 0 1024x600x24 -nolisten tcp >$T/logs/xvfb.log 2>&1 &
dbus-daemon --config-file=$T/session.conf --nofork --nopidfile >$T/logs/session-bus.log 2>&1 &
while [ ! -S $T/session.sock ] || [ ! -e /tmp/.X11-unix/X7 ]; do sleep 0.05; done
touch $T/ready
exec kded5 >$T/logs/kded5.log 2>&1
"""
)

SESSIONS = {"gnome": _GNOME_SESSION, "gnome-trixie": _GNOME_SESSION, "kde": _KDE_SESSION}
KDE_ENV = {
    "DISPLAY": ":7",
    "QT_QPA_PLATFORM": "xcb",
    "XDG_CURRENT_DESKTOP": "KDE",
    "KDE_FULL_SESSION": "true",
    "KDE_SESSION_VERSION": "5",
    "QT_QUICK_BACKEND": "software",
    "LIBGL_ALWAYS_SOFTWARE": "1",
}


class DesktopFailed(RuntimeError):
    """The container or its shell did not come up; the message carries the logs' tails."""


def build_root(kind: str) -> Path:
    """The cached root for ``kind`` (built now when missing)."""
    result = subprocess.run(
        [str(REPO / "scripts" / "desktop-root"), kind],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise DesktopFailed(f"scripts/desktop-root {kind} failed ({result.returncode})")
    return Path(result.stdout.strip().splitlines()[-1])


def wait_until(condition: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise DesktopFailed(f"timed out after {limit:g} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Desktop:
    """A running container with a desktop session; ``host_dir`` is bound at SHARED."""

    kind: str
    root: Path
    host_dir: Path
    machine: str
    process: subprocess.Popen[bytes] | None = None
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    system_bus: PrivateBus | None = None

    @property
    def session_address(self) -> str:
        return f"unix:path={self.host_dir}/session.sock"

    @property
    def shots(self) -> Path:
        return self.host_dir / "shots"

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.host_dir / "logs" / name
        return path.read_text(errors="replace")[-tail:] if path.exists() else f"(no {name})"

    def logs(self) -> str:
        names = sorted(p.name for p in (self.host_dir / "logs").iterdir())
        return "\n".join(f"--- {name}\n{self.log(name, 2500)}" for name in names)

    def start(self, extensions: Sequence[Path] = (), enabled: Sequence[str] = ()) -> None:
        for sub in ("logs", "shots", "extensions", "system"):
            (self.host_dir / sub).mkdir(parents=True, exist_ok=True)
        self.host_dir.chmod(0o1777)  # the desktop user makes its session bus socket here
        for sub in ("logs", "shots"):
            (self.host_dir / sub).chmod(0o777)
        for extension in extensions:
            shutil.copytree(extension, self.host_dir / "extensions" / extension.name)
        (self.host_dir / "enabled-extensions").write_text(repr(list(enabled)))
        (self.host_dir / "session.conf").write_text(_SESSION_CONF)
        (self.host_dir / "root.sh").write_text(_ROOT_SCRIPT)
        (self.host_dir / "session.sh").write_text(SESSIONS[self.kind])
        with (self.host_dir / "logs" / "nspawn.log").open("wb") as log:
            self.process = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "-q",
                    f"--directory={self.root}",
                    f"--machine={self.machine}",
                    "--volatile=overlay",
                    "--register=no",
                    "--keep-unit",
                    "--private-network",
                    "--as-pid2",
                    f"--bind={self.host_dir}:{SHARED}",
                    f"--bind-ro={REPO}",
                    "--setenv=LANG=C.UTF-8",
                    "/bin/sh",
                    f"{SHARED}/root.sh",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(self._ready, f"the {self.kind} session to start", 90)
        except DesktopFailed as error:
            raise DesktopFailed(f"{error}\n{self.logs()}") from None

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise DesktopFailed(f"the container exited ({self.process.returncode})\n{self.logs()}")
        return (self.host_dir / "ready").exists() and (self.host_dir / "session.sock").exists()

    def init_pid(self) -> int:
        """The container's PID 1 (nspawn's stub init), as the host sees it."""
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = children.read_text().split()
        if not pids:
            raise DesktopFailed("the container has no init process")
        return int(pids[0])

    def argv(self, command: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
        """``command`` run inside, as the desktop user, with the session's environment."""
        variables = {
            "HOME": USER_HOME,
            "USER": "desk",
            "LANG": "C.UTF-8",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "XDG_RUNTIME_DIR": f"/run/user/{USER_UID}",
            "DBUS_SESSION_BUS_ADDRESS": SESSION_BUS,
            "DBUS_SYSTEM_BUS_ADDRESS": SYSTEM_BUS,
            **(KDE_ENV if self.kind == "kde" else {}),
            **(env or {}),
        }
        return [
            "nsenter",
            f"--target={self.init_pid()}",
            "--all",
            "--wd=/",
            "setpriv",
            f"--reuid={USER_UID}",
            f"--regid={USER_UID}",
            "--init-groups",
            "--",
            "env",
            "-i",
            *(f"{key}={value}" for key, value in variables.items()),
            *command,
        ]

    def run(
        self, command: Sequence[str], *, env: Mapping[str, str] | None = None, limit: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command, env), capture_output=True, text=True, timeout=limit, check=False
        )

    def spawn(
        self, name: str, command: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``command`` inside in the background; its output goes to logs/NAME.log and
        its PID (inside) to NAME.pid, for ``kill``."""
        pidfile = f"{SHARED}/{name}.pid"
        wrapped = ["sh", "-c", f'echo $$ >{pidfile}; exec "$@"', name, *command]
        with (self.host_dir / "logs" / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                self.argv(wrapped, env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(process)
        return process

    def kill(self, name: str, process: subprocess.Popen[bytes], limit: float = 10) -> None:
        """End what ``spawn(name, ...)`` started (nsenter does not pass signals on)."""
        pid = (self.host_dir / f"{name}.pid").read_text().strip()
        self.run(["kill", "-TERM", pid])
        process.wait(limit)

    def stop(self) -> None:
        for process in self.started:
            _end(process, 5)
        if self.process is None:
            return
        with contextlib.suppress(DesktopFailed, OSError, ValueError):
            # Killing the container's init takes down everything inside it.
            os.kill(self.init_pid(), signal.SIGKILL)
        _end(self.process, 20)


def _end(process: subprocess.Popen[bytes], limit: float) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        process.wait(limit)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(limit)


@contextlib.contextmanager
def running_desktop(
    kind: str, root: Path, *, extensions: Sequence[Path] = (), enabled: Sequence[str] = ()
) -> Iterator[Desktop]:
    """A desktop of ``kind`` with a private system bus (``desktop.system_bus``), which GNOME
    Shell needs from its first second: it crashes at start without one."""
    host_dir = Path(tempfile.mkdtemp(prefix=f"nordwgd-desktop-{kind}-"))
    desktop = Desktop(kind, root, host_dir, machine=f"nwgd-{kind}-{uuid.uuid4().hex[:8]}")
    try:
        desktop.system_bus = start_bus(host_dir / "system")
        desktop.start(extensions, enabled)
        yield desktop
    finally:
        desktop.stop()
        if desktop.system_bus is not None:
            desktop.system_bus.stop()
        shutil.rmtree(host_dir, ignore_errors=True)
