"""Leak-proof under faults, resilience: the real daemon killed, restarted, starved and stormed.

One world and one daemon serve the module (``stack.reset()`` before each scenario). The faults
are real: SIGKILL and SIGTERM of the process, garbage in its files, a firewall that the kernel
refuses (the nftables binding replaced by one that fails), programs missing from PATH, a peer
that stops answering, and a storm of Reconnect calls. The leak monitor on the uplink must
count nothing in any of them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nordwgd.wireguard.uapi import socket_path
from tests.security.harness import (
    FAST_HEALTH,
    BusError,
    Stack,
    TableSampler,
    answered,
    nordwgd_table,
    stack_fixture,
    table_comment,
    table_drops_by_default,
    tool_dir,
    write_script,
)
from tests.security.ledger import ScenarioRecorder

pytestmark = [pytest.mark.root, pytest.mark.slow]

stack = stack_fixture()

RECONNECTS = 200
RECONNECT_CONCURRENCY = 8
RECONNECT_WAVE = 10


def _record_leaks(stack: Stack, ledger: ScenarioRecorder) -> int:
    count = stack.leaked()
    ledger.leaked(count)
    return count


@pytest.fixture
def fresh_daemon(stack: Stack) -> Iterator[Stack]:
    """The module's stack with the daemon's original environment restored afterwards."""
    daemon = stack.daemon
    saved = (daemon.path, daemon.python_path_prefix, daemon.config)
    try:
        yield stack
    finally:
        if (daemon.path, daemon.python_path_prefix, daemon.config) != saved:
            daemon.terminate()
            daemon.path, daemon.python_path_prefix, daemon.config = saved
            daemon.start()


def test_silent_peer_fails_over_without_leaking(stack: Stack, ledger: ScenarioRecorder) -> None:
    stack.reset()
    stack.restart()  # a fresh machine: no failover earlier in its life delays this one
    first = stack.connect_and_wait()
    first_host = first["Server"]["hostname"]
    stack.reset_leaks()

    stack.world.silence_server(first_host)
    ledger.fault(f"{first_host} stops answering while connected")
    second = stack.wait_for(
        lambda p: p["State"] == "connected" and p["Server"].get("hostname") not in ("", first_host),
        timeout=60,
        what="a failover to another server",
        interval=0.2,
    )
    second_host = second["Server"]["hostname"]
    seen = stack.probes.http()

    assert second["ConnectedSince"] > first["ConnectedSince"]
    assert seen == stack.world.server(second_host).station
    assert _record_leaks(stack, ledger) == 0, stack.leaks()


def test_sigkill_while_connected_keeps_blocking_and_resumes(
    stack: Stack, ledger: ScenarioRecorder
) -> None:
    stack.reset()
    props = stack.connect_and_wait()
    station = stack.world.server(props["Server"]["hostname"]).station
    stack.reset_leaks()

    stack.daemon.kill()
    ledger.fault("daemon SIGKILLed while connected")
    table = nordwgd_table(stack.world)
    while_dead = stack.probes.standard()
    leaked_while_dead = stack.leaked()

    stack.daemon.start()
    resumed = stack.wait_for_state("connected", timeout=60)
    after = stack.probes.http()

    assert table_drops_by_default(table), table
    assert "connected" in table_comment(table)
    # Through the tunnel that outlived the process, or nowhere.
    assert while_dead["http"] in (None, station), while_dead
    assert leaked_while_dead == 0, stack.leaks()
    assert after == stack.world.server(resumed["Server"]["hostname"]).station
    assert stack.daemon.alive
    assert _record_leaks(stack, ledger) == 0, stack.leaks()


def test_restart_while_connected_keeps_the_kill_switch(
    stack: Stack, ledger: ScenarioRecorder
) -> None:
    stack.reset()
    stack.connect_and_wait()
    stack.reset_leaks()

    code = stack.daemon.terminate()
    ledger.fault("daemon restarted (SIGTERM) while connected")
    table = nordwgd_table(stack.world)
    in_the_gap = stack.probes.standard()
    stack.daemon.start()
    starting = stack.props()
    resumed = stack.wait_for_state("connected", timeout=60)

    assert code == 0
    assert table_drops_by_default(table), "the kill switch went away with the process"
    assert in_the_gap["dns_lan"] != "answered" and in_the_gap["dns_other"] != "answered"
    assert starting["Blocking"] == "blocked"
    assert stack.probes.http() == stack.world.server(resumed["Server"]["hostname"]).station
    assert _record_leaks(stack, ledger) == 0, stack.leaks()


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_a_wanted_tunnel_that_cannot_be_resumed_blocks_in_error(
    fresh_daemon: Stack, ledger: ScenarioRecorder, stop: str
) -> None:
    """Connected to the default location, then the location becomes unknown (a typo in the
    config; a catalog change does the same) and the daemon restarts: the tunnel is still
    wanted, so it must block in error with a cause a client can show, never come up open."""
    stack = fresh_daemon
    stack.reset()
    world = stack.world
    stack.connect_and_wait()
    typo = world.write_config(
        stack.directory / f"typo-{stop}.toml",
        health={"urls": [f"http://{world.web_address}/health"], **FAST_HEALTH},
        location={"country": ["Germny"]},
    )
    if stop == "SIGTERM":
        assert stack.daemon.terminate() == 0
    else:
        stack.daemon.kill()
    ledger.fault(f"{stop}, a typo in [location] country, start")
    stack.reset_leaks()
    stack.daemon.config = typo
    stack.daemon.start()
    time.sleep(2.0)  # a late opening would show by now
    props = stack.props()
    results = stack.probes.standard()
    table = nordwgd_table(world)
    leaked = _record_leaks(stack, ledger)

    assert (props["State"], props["ErrorCause"], props["Blocking"]) == (
        "error",
        "unknown-location",
        "blocked",
    ), stack.daemon.tail()
    assert table_drops_by_default(table), table
    assert answered(results) == [], results
    assert leaked == 0, stack.leaks()
    # The way out: Disconnect forgets the wanted tunnel and opens as asked.
    stack.client.call("Disconnect")
    stack.wait_for_state("disconnected", timeout=30, Blocking="open")


def _garble(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00{garbage\xff\n" * 3)


def test_corrupt_files_at_start_fail_closed(fresh_daemon: Stack, ledger: ScenarioRecorder) -> None:
    stack = fresh_daemon
    stack.reset()
    world = stack.world
    runtime = Path(world.config_values()["paths"]["runtime_dir"])
    settings = Path(world.config_values()["paths"]["state_dir"]) / "settings.json"
    stack.client.call("SetLockdown", "b", [True])
    stack.connect_and_wait()
    assert stack.daemon.terminate() == 0
    files = [p for p in runtime.iterdir() if p.is_file()] + [settings]
    for path in files:
        _garble(path)
        ledger.fault(f"garbage in {path.name}")
    stack.reset_leaks()

    stack.daemon.start()
    time.sleep(3.0)  # a crash loop or a late opening would show by now
    props = stack.props()
    results = stack.probes.standard()
    table = nordwgd_table(world)

    stations = {server.station for server in world.servers}
    assert stack.daemon.alive, stack.daemon.tail()
    # A tunnel was wanted (the record says so, unreadably): the daemon connects to the
    # default location again, blocking meanwhile; Lockdown is assumed from now on.
    assert props["State"] in ("connecting", "connected"), props
    assert (props["Blocking"], props["Lockdown"]) == ("blocked", True), props
    assert table_drops_by_default(table)
    assert results["http"] in (None, *stations), results
    assert results["dns_lan"] != "answered" and results["dns_other"] != "answered"
    assert _record_leaks(stack, ledger) == 0, stack.leaks()


def test_missing_files_at_start_fail_closed(fresh_daemon: Stack, ledger: ScenarioRecorder) -> None:
    stack = fresh_daemon
    stack.reset()
    world = stack.world
    paths = world.config_values()["paths"]
    stack.connect_and_wait()
    # Files vanish as after a reboot, which also takes the tunnel, its routes and rules: a
    # daemon finding those without their record would leave them alone (it never removes
    # what it cannot prove it made), so this one takes its tunnel down first.
    stack.client.call("Disconnect")
    stack.wait_for_state("disconnected", timeout=20)
    assert stack.daemon.terminate() == 0
    shutil.rmtree(paths["runtime_dir"])
    (Path(paths["state_dir"]) / "settings.json").unlink(missing_ok=True)
    ledger.fault("runtime directory and settings.json deleted")
    # The administrator's config asks for lockdown: with no saved choice, that is the rule.
    stack.daemon.config = world.write_config(
        stack.directory / "lockdown.toml", network={"lockdown": True}
    )
    stack.reset_leaks()

    stack.daemon.start()
    time.sleep(2.0)
    props = stack.props()
    results = stack.probes.standard()

    assert stack.daemon.alive, stack.daemon.tail()
    assert (props["State"], props["Blocking"], props["Lockdown"]) == (
        "disconnected",
        "blocked",
        True,
    )
    assert table_drops_by_default(nordwgd_table(world))
    assert answered(results) == [], results
    assert _record_leaks(stack, ledger) == 0, stack.leaks()


# -- the firewall refused -------------------------------------------------------------------

_NFTABLES_SHIM = '''"""Stand-in for python3-nftables: {why}"""
import importlib.util
import os
import sys

if {missing!r}:
    raise ImportError("libnftables is not usable here")

_REAL = {real!r}
_spec = importlib.util.spec_from_file_location(
    "_nwgt_real_nftables", os.path.join(_REAL, "__init__.py"), submodule_search_locations=[_REAL]
)
_real = importlib.util.module_from_spec(_spec)
sys.modules["_nwgt_real_nftables"] = _real
_spec.loader.exec_module(_real)


class Nftables(_real.Nftables):
    def cmd(self, cmdline):
        if os.path.exists({trigger!r}) and not cmdline.lstrip().startswith("list"):
            return 1, "", "Error: Could not process rule: Operation not permitted\\n"
        return super().cmd(cmdline)
'''

_FAILING_TOOL = (
    '#!/bin/sh\necho "$(basename "$0"): cannot run: Operation not permitted" >&2\nexit 1\n'
)
_FIREWALL_TOOLS = (
    "nft",
    "iptables-save",
    "iptables-restore",
    "ip6tables-save",
    "ip6tables-restore",
    "iptables-legacy-save",
    "iptables-legacy-restore",
    "ip6tables-legacy-save",
    "ip6tables-legacy-restore",
)


def _real_nftables() -> str:
    import nftables

    return str(Path(nftables.__file__).parent)


def _nftables_shim(directory: Path, *, missing: bool, trigger: Path) -> Path:
    why = "missing" if missing else f"every change fails while {trigger} exists"
    source = _NFTABLES_SHIM.format(
        why=why, missing=missing, real=_real_nftables(), trigger=str(trigger)
    )
    (directory / "nftables.py").write_text(source)
    return directory


def _failing_firewall_path(directory: Path) -> str:
    for name in _FIREWALL_TOOLS:
        write_script(directory / name, _FAILING_TOOL)
    return os.pathsep.join([str(directory), os.environ.get("PATH", "")])


def _never_connects(stack: Stack, seconds: float) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.append(stack.props())
        time.sleep(0.2)
    return seen


def test_no_usable_firewall_at_start(fresh_daemon: Stack, ledger: ScenarioRecorder) -> None:
    stack = fresh_daemon
    stack.reset()
    stack.client.call("SetLockdown", "b", [True])  # the table an earlier process left
    stack.wait_for_state("disconnected", Blocking="blocked", timeout=10)
    tools = tool_dir("nwgt-nft-")
    try:
        stack.restart(
            path=_failing_firewall_path(tools),
            python_path_prefix=_nftables_shim(tools, missing=True, trigger=tools / "x"),
        )
        ledger.fault("nft, libnftables and iptables all unusable at start")
        props = stack.wait_for_state("error", timeout=20)
        stack.reset_leaks()
        stack.client.connect()
        seen = _never_connects(stack, 8.0)
        results = stack.probes.standard()
        alive = stack.daemon.alive
        table = nordwgd_table(stack.world)
    finally:
        shutil.rmtree(tools, ignore_errors=True)

    assert (props["Blocking"], props["ErrorCause"]) == ("block-failed", "firewall-failed")
    assert all(p["State"] != "connected" for p in seen), [p["State"] for p in seen]
    assert seen[-1]["Blocking"] == "block-failed"
    assert alive
    assert table_drops_by_default(table)  # the earlier table is never removed
    assert answered(results) == [], results
    assert _record_leaks(stack, ledger) == 0, stack.leaks()


def test_firewall_refused_while_connected(fresh_daemon: Stack, ledger: ScenarioRecorder) -> None:
    stack = fresh_daemon
    stack.reset()
    tools = tool_dir("nwgt-nft-")
    trigger = tools / "refuse"
    try:
        stack.restart(python_path_prefix=_nftables_shim(tools, missing=False, trigger=trigger))
        stack.connect_and_wait()
        stack.reset_leaks()
        trigger.touch()
        ledger.fault("the kernel refuses every firewall change")
        stack.client.call("Reconnect")
        props = stack.wait_for_state("error", timeout=20)
        seen = _never_connects(stack, 5.0)
        results = stack.probes.standard()
        table = nordwgd_table(stack.world)

        trigger.unlink()
        stack.client.call("Disconnect")
        recovered = stack.wait_for_state("disconnected", timeout=20)
    finally:
        shutil.rmtree(tools, ignore_errors=True)

    assert (props["Blocking"], props["ErrorCause"]) == ("block-failed", "firewall-failed")
    assert all(p["State"] != "connected" for p in seen)
    assert table_drops_by_default(table)
    assert answered(results) == [], results
    assert recovered["Blocking"] == "open"
    assert _record_leaks(stack, ledger) == 0, stack.leaks()


def _path_without(program: str, directory: Path) -> str:
    """A PATH like ours in which ``program`` cannot be found (links to everything else)."""
    entries = []
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        folder = Path(entry)
        if not entry or not folder.is_dir():
            continue
        if not (folder / program).exists():
            entries.append(entry)
            continue
        mirror = directory / f"mirror{len(entries)}"
        mirror.mkdir()
        for item in folder.iterdir():
            if item.name != program and not (mirror / item.name).exists():
                (mirror / item.name).symlink_to(item)
        entries.append(str(mirror))
    return os.pathsep.join(entries)


def test_wireguard_go_missing(fresh_daemon: Stack, ledger: ScenarioRecorder) -> None:
    stack = fresh_daemon
    stack.reset()
    tools = tool_dir("nwgt-path-")
    try:
        stack.restart(path=_path_without("wireguard-go", tools))
        ledger.fault("wireguard-go missing from PATH")
        stack.client.connect()
        props = stack.wait_for_state("error", timeout=30)
        during = stack.probes.standard()
        seen = _never_connects(stack, 3.0)
        alive = stack.daemon.alive
        stack.daemon.terminate()  # before its PATH goes away; the fixture starts a normal one
    finally:
        shutil.rmtree(tools, ignore_errors=True)

    assert (props["Blocking"], props["ErrorCause"]) == ("blocked", "tunnel-failed")
    assert all(p["State"] != "connected" for p in seen)
    assert alive
    assert answered(during) == [], during
    assert _record_leaks(stack, ledger) == 0, stack.leaks()


def test_interface_taken_by_another_program(stack: Stack, ledger: ScenarioRecorder) -> None:
    """Another program's wireguard-go holds the configured interface name: the connect ends in
    error (blocked) with the reason, and the other instance keeps running."""
    stack.reset()
    world = stack.world
    other = world.host_popen(
        ["wireguard-go", "-f", world.interface],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PATH": os.environ.get("PATH", ""), "LOG_LEVEL": "error",
             "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not socket_path(world.interface).exists():
            assert other.poll() is None and time.monotonic() < deadline, "wireguard-go failed"
            time.sleep(0.05)
        ledger.fault(f"another program's wireguard-go holds {world.interface}")
        stack.client.connect()
        props = stack.wait_for_state("error", timeout=30)
        during = stack.probes.standard()
        still_running = other.poll() is None and socket_path(world.interface).exists()
    finally:
        socket_path(world.interface).unlink(missing_ok=True)  # stops that instance
        other.wait(10)
    reason = stack.daemon.log.read_text(errors="replace")

    assert (props["Blocking"], props["ErrorCause"]) == ("blocked", "tunnel-failed")
    assert still_running, "nordwgd stopped another program's wireguard-go"
    assert f"an interface named {world.interface} exists already" in reason
    assert answered(during) == [], during
    assert _record_leaks(stack, ledger) == 0, stack.leaks()
    # with the name free again, the same daemon connects
    stack.client.call("Disconnect")
    stack.wait_for_state("disconnected", timeout=20)
    stack.connect_and_wait()


# -- a storm of reconnects --------------------------------------------------------------------


class _Sampler(threading.Thread):
    """Calls ``sample`` in a loop until stopped; keeps every result."""

    def __init__(self, sample: Callable[[], str], pause: float) -> None:
        super().__init__(daemon=True)
        self._sample = sample
        self._pause = pause
        self._stop_event = threading.Event()
        self.results: list[str] = []

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.results.append(self._sample())
            self._stop_event.wait(self._pause)

    def stop(self) -> list[str]:
        self._stop_event.set()
        self.join(60)
        return self.results


def test_reconnect_storm_never_opens(stack: Stack, ledger: ScenarioRecorder) -> None:
    stack.reset()
    stack.connect_and_wait()
    stack.reset_leaks()
    world = stack.world
    tables = TableSampler(world)
    probes = _Sampler(lambda: stack.probes.dns(world.lan_dns, timeout=0.3), 0.05)
    probes.start()
    failures: list[BusError | None] = []
    try:
        # In waves, so that the machine is caught in every phase of a reconnect, not only
        # preempted by a queue of 200.
        for _ in range(RECONNECTS // RECONNECT_WAVE):
            failures += stack.client.call_many("Reconnect", RECONNECT_WAVE, RECONNECT_CONCURRENCY)
            time.sleep(0.05)
        ledger.fault(f"{RECONNECTS} Reconnect calls, {RECONNECT_CONCURRENCY} at a time")
        final = stack.wait_for_state("connected", timeout=120)
    finally:
        sampled = tables.stop()
        dns = probes.stop()

    assert [f for f in failures if f is not None] == []
    assert sampled["samples"] > 100 and sampled["bad"] == 0, sampled
    assert dns and "answered" not in dns
    assert stack.probes.http() == world.server(final["Server"]["hostname"]).station
    assert _record_leaks(stack, ledger) == 0, stack.leaks()
