"""A throw-away system-type D-Bus daemon for the demo and for tools outside the test suite.

The bus listens on a unix socket in a directory of the caller's choosing (or a fresh one under
/tmp), accepts EXTERNAL authentication from any user and allows every own/send/receive, so
authorization is decided only by nordwgd itself (polkit), as on a real system bus.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BUS_NAME = "org.nordwgd.Nordwgd1"
_START_TIMEOUT = 10.0

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
{limits}  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"""


_MANY_CLIENTS = """  <limit name="max_connections_per_user">1000</limit>
  <limit name="max_match_rules_per_connection">1000</limit>
"""


class BusFailed(RuntimeError):
    """dbus-daemon could not be started; the message carries its error output."""


@dataclass
class PrivateBus:
    address: str  # "unix:path=/.../bus.sock", usable with busctl --address and nordwgctl --bus
    socket: Path
    directory: Path
    process: subprocess.Popen[str]
    owns_directory: bool

    def name_has_owner(self, name: str = BUS_NAME, *, timeout: float = 10.0) -> bool:
        result = subprocess.run(
            [
                "busctl",
                f"--address={self.address}",
                "call",
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "NameHasOwner",
                "s",
                name,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return result.stdout.strip() == "b true"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop dbus-daemon and remove its files; idempotent."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self.owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
        else:
            for path in (self.socket, self.directory / "bus.conf"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def start_bus(
    directory: Path | None = None, *, own_session: bool = False, many_clients: bool = False
) -> PrivateBus:
    """Start dbus-daemon listening on ``directory``/bus.sock (a fresh /tmp directory if None).

    ``own_session`` starts it in a new session, so a Ctrl-C at the terminal does not stop it
    before its clients are done with it. ``many_clients`` lifts the per-user connection and
    match-rule limits (benchmarks connect hundreds of clients as one user).
    """
    owns_directory = directory is None
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="nordwgd-bus-"))
    directory.mkdir(parents=True, exist_ok=True)
    # World-traversable so that a client running as an unprivileged user reaches the socket.
    directory.chmod(0o755)
    socket = directory / "bus.sock"
    config = directory / "bus.conf"
    limits = _MANY_CLIENTS if many_clients else ""
    config.write_text(_BUS_CONFIG.format(socket=socket, limits=limits))
    process = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--nopidfile", "--print-address=1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=own_session,
    )
    bus = PrivateBus(
        address=f"unix:path={socket}",
        socket=socket,
        directory=directory,
        process=process,
        owns_directory=owns_directory,
    )
    assert process.stdout is not None
    # dbus-daemon prints its address once it listens; a failure closes stdout instead.
    printed = process.stdout.readline().strip()
    deadline = time.monotonic() + _START_TIMEOUT
    while not printed or not socket.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            bus.stop()
            error = process.stderr.read().strip() if process.stderr else ""
            raise BusFailed(f"dbus-daemon did not start: {error or 'no address printed'}")
        time.sleep(0.01)
    socket.chmod(0o777)
    return bus


@contextlib.contextmanager
def private_bus(
    directory: Path | None = None, *, own_session: bool = False, many_clients: bool = False
) -> Iterator[PrivateBus]:
    bus = start_bus(directory, own_session=own_session, many_clients=many_clients)
    try:
        yield bus
    finally:
        bus.stop()
