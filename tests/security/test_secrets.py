"""No secret escapes a debug-level session of the real daemon.

One session in the test world with ``log_level = "debug"``: login (SetToken), connect,
reconnect, full diagnosis, the API refusing the token and failing with 500 (error paths and
whatever tracebacks they log), recovery, disconnect, logout. Then the access token and the
NordLynx private key (base64, and hex as the WireGuard UAPI carries it) are searched for in:
the daemon's whole log, /proc/<pid>/cmdline and environ of every process in the daemon's
namespace (the daemon, wireguard-go) taken while connected, every property value and method
reply, every signal a monitoring client saw, and the files under the state and runtime
directories (a file that holds a secret must be 0600, owned by root).
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nordwgd.config import load_config
from tests.fixtures_dbus import PYTHON, REPO
from tests.security.harness import Stack, stack_fixture
from tests.security.ledger import ScenarioRecorder

pytestmark = pytest.mark.root

stack = stack_fixture(token_file=None, api={"timeout": 1.0, "attempts": 1})

# Prints "ready" once subscribed, then one JSON line per signal on the bus.
_SIGNAL_MONITOR = r"""
import asyncio, json, sys
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from nordwgd.bus.convert import plain

async def main():
    bus = await MessageBus(bus_address=sys.argv[1]).connect()
    def on_message(msg):
        if msg.message_type is MessageType.SIGNAL:
            print(json.dumps({"member": msg.member, "sender": msg.sender, "path": msg.path,
                              "body": plain(msg.body)}, default=str), flush=True)
    bus.add_message_handler(on_message)
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="AddMatch", signature="s",
        body=["type='signal'"]))
    print("ready", flush=True)
    await bus.wait_for_disconnect()

asyncio.run(main())
"""


@dataclass
class Evidence:
    """Everything observed during the session, by where it was seen."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, where: str, value: object) -> None:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        self.texts[where] = self.texts.get(where, "") + "\n" + text

    def find(self, secrets: dict[str, str]) -> list[tuple[str, str]]:
        return [
            (where, name)
            for where, text in self.texts.items()
            for name, secret in secrets.items()
            if secret in text
        ]


def secret_forms(stack: Stack) -> dict[str, str]:
    world = stack.world
    token = world.token.reveal()
    key = world.client_private_key.reveal()
    assert token and key
    return {
        "token": token,
        "token as HTTP Basic credentials": base64.b64encode(f"token:{token}".encode()).decode(),
        "private key (base64)": key,
        "private key (hex, as UAPI)": base64.b64decode(key).hex(),
    }


@dataclass
class SignalMonitor:
    """The monitoring client, and the signals it printed before it was subscribed to all."""

    process: subprocess.Popen[str]
    early: list[str]

    def stop(self) -> str:
        """Every line of signals it printed, early ones included."""
        assert self.process.stdout is not None
        self.process.terminate()
        return "".join(self.early) + self.process.stdout.read()


@pytest.fixture
def signal_monitor(stack: Stack) -> Iterator[SignalMonitor]:
    process = subprocess.Popen(
        [PYTHON, "-c", _SIGNAL_MONITOR, stack.bus.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)},
    )
    try:
        # The bus sends NameAcquired to every new connection, and it may reach the handler
        # before the AddMatch reply: a signal can come before "ready" and is evidence too.
        assert process.stdout is not None
        early = []
        while (line := process.stdout.readline()) not in ("", "ready\n"):
            early.append(line)
        assert line == "ready\n", f"the signal monitor ended before it was ready: {early}"
        yield SignalMonitor(process, early)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(10)


def namespace_processes(stack: Stack) -> dict[int, dict[str, bytes]]:
    """cmdline and environ of every process in the daemon's network namespace."""
    listed = subprocess.run(
        ["ip", "netns", "pids", stack.world.host_ns],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.split()
    pids = {int(pid) for pid in listed}
    assert stack.daemon.process is not None
    pids.add(stack.daemon.process.pid)
    found: dict[int, dict[str, bytes]] = {}
    for pid in sorted(pids):
        try:
            found[pid] = {
                "cmdline": Path(f"/proc/{pid}/cmdline").read_bytes(),
                "environ": Path(f"/proc/{pid}/environ").read_bytes(),
            }
        except (FileNotFoundError, ProcessLookupError):
            continue  # a probe that ended meanwhile
    return found


def files_under(directories: Iterable[Path]) -> list[Path]:
    return [
        path
        for directory in directories
        if directory.exists()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and not path.is_symlink()
    ]


def check_files(directories: Iterable[Path], secrets: dict[str, str]) -> list[str]:
    """Files that hold a secret and are not 0600 root-owned; returns what is wrong."""
    problems = []
    for path in files_under(directories):
        data = path.read_bytes().decode(errors="replace")
        held = [name for name, secret in secrets.items() if secret in data]
        if not held:
            continue
        info = path.stat()
        if stat.S_IMODE(info.st_mode) & 0o077 or info.st_uid != 0:
            problems.append(f"{path} holds {held} with mode {stat.S_IMODE(info.st_mode):o}")
    return problems


def test_no_secret_leaves_a_debug_session(
    stack: Stack, signal_monitor: SignalMonitor, ledger: ScenarioRecorder
) -> None:
    stack.reset()
    world, client = stack.world, stack.client
    secrets = secret_forms(stack)
    config = load_config(stack.daemon.config)
    assert config.log_level == "debug" and config.token_file is None
    directories = (config.paths.state_dir, config.paths.runtime_dir)
    evidence = Evidence()
    file_problems: list[str] = []
    stored_token_seen = False

    def snapshot(label: str) -> None:
        nonlocal stored_token_seen
        evidence.add(f"properties ({label})", stack.props())
        evidence.add(f"GetStatistics ({label})", client.call("GetStatistics"))
        for pid, entries in namespace_processes(stack).items():
            for kind, raw in entries.items():
                text = raw.replace(b"\0", b" ").decode(errors="replace")
                evidence.add(f"/proc/{pid}/{kind}", text)
        file_problems.extend(check_files(directories, secrets))
        stored_token_seen |= any(
            secrets["token"] in path.read_text(errors="replace")
            for path in files_under(directories)
        )

    try:
        client.call("SetToken", "s", [secrets["token"]])
        stack.connect_and_wait()
        snapshot("connected")
        first = stack.props()["Server"]["hostname"]

        client.call("Reconnect")
        props = stack.wait_for(
            lambda p: p["State"] == "connected" and p["Server"].get("hostname") not in ("", first),
            timeout=60,
            what="connected to another server",
        )
        snapshot("reconnected")
        evidence.add("Diagnose full", client.call("Diagnose", "s", ["full"], timeout=120))
        evidence.add("ListServers", client.call("ListServers", "a{sv}", [{}]))
        evidence.add("CheckHealth", client.call("CheckHealth"))
        assert props["Interface"]

        # Error paths: the token refused, then the API failing while it is sent.
        world.fault("401")
        ledger.fault("API 401 with a debug log")
        client.call("Reconnect")
        props = stack.wait_for_state("error", timeout=60)
        assert props["ErrorCause"] == "auth-failed", props
        snapshot("auth-failed")
        world.fault("500")
        ledger.fault("API 500 with a debug log")
        client.call("SetToken", "s", [secrets["token"]])  # drop cached credentials
        stack.client.connect()
        props = stack.wait_for(
            lambda p: p["State"] == "error" and p["ErrorCause"] == "api-unavailable",
            timeout=60,
            what="api-unavailable",
        )
        snapshot("api-unavailable")
        world.fault(None)
        stack.wait_for_state("connected", timeout=120)
        snapshot("recovered")

        client.call("Disconnect")
        stack.wait_for_state("disconnected", timeout=30)
        client.call("Logout")
        snapshot("logged out")
    finally:
        world.fault(None)
    stack.daemon.terminate()  # its last words are in the log too
    signals = signal_monitor.stop()

    log = stack.daemon.log.read_text(errors="replace")
    evidence.add("daemon log", log)
    evidence.add("signals", signals)
    assert "auth-failed" in log or "refused the access token" in log  # the error path ran
    assert '"PropertiesChanged"' in signals and "connected" in signals
    assert stored_token_seen, "the stored login was never seen: the file check checked nothing"

    assert evidence.find(secrets) == []
    assert file_problems == []
    assert check_files(directories, secrets) == []
    # After Logout nothing under the state directory holds the token any more.
    assert not any(
        secrets["token"] in path.read_text(errors="replace")
        for path in files_under([config.paths.state_dir])
    )
    stack.daemon.start()  # for the fixture's own orderly stop
