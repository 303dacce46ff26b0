"""The newcomer demo (python -m nordwgd.testing.demo, behind scripts/demo) run as a user would:
a separate process whose printed tour must show a working VPN and that leaves nothing behind,
whether it ends normally, after --keep, or on Ctrl-C."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from nordwgd.testing.demo import Output, Shell
from tests.fixtures_dbus import PYTHON, REPO

DEMO_TIMEOUT = 180.0
_ANSI = re.compile(r"\x1b\[")


def _env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "LANG": "C.UTF-8"}


@dataclass
class Run:
    """What a demo run made, as read from its output."""

    namespaces: list[str]
    world_id: str
    directory: Path
    bus_socket: Path


def _what_it_made(out: str) -> Run:
    namespaces = re.findall(r"\b(nwgt-[0-9a-f]+-(?:host|rtr|s\d+))\b", out)
    host = re.search(r"\bnwgt-([0-9a-f]+)-host\b", out)
    bus = re.search(r"BUS=unix:path=(\S+/bus\.sock)", out)
    assert host and bus and namespaces, out
    socket = Path(bus.group(1))
    return Run(sorted(set(namespaces)), host.group(1), socket.parent.parent, socket)


def _netns_names() -> set[str]:
    listing = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def _processes_mentioning(markers: list[str]) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(marker in cmdline for marker in markers):
            found.append(f"{entry.name}: {cmdline}")
    return found


def _assert_nothing_left(run: Run) -> None:
    assert not set(run.namespaces) & _netns_names()
    assert not _processes_mentioning(
        [f"nwgt-{run.world_id}", f"ws{run.world_id}", f"wc{run.world_id}", str(run.directory)]
    )
    assert not run.directory.exists()
    assert not (Path("/etc/netns") / f"nwgt-{run.world_id}-host").exists()
    wireguard = Path("/var/run/wireguard")
    assert not (wireguard.exists() and list(wireguard.glob(f"*{run.world_id}*")))


def _section(out: str, title: str) -> str:
    """The text of the step whose heading contains ``title``."""
    match = re.search(
        rf"^Step \d+\. [^\n]*{re.escape(title)}[^\n]*\n(.*?)(?=^Step \d+\.|\Z)",
        out,
        re.MULTILINE | re.DOTALL,
    )
    assert match, f"no step {title!r} in:\n{out}"
    return match.group(1)


def _start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """Start the demo in its own session (so a Ctrl-C can go to its whole process group, as
    from a terminal), its output going to a file."""
    log = tmp_path / "demo.out"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [PYTHON, "-m", "nordwgd.testing.demo", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=REPO,
            start_new_session=True,
        )
    return process, log


def _wait_for(process: subprocess.Popen[bytes], log: Path, marker: str) -> str:
    deadline = time.monotonic() + DEMO_TIMEOUT
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if marker in text:
            return text
        if process.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"the demo never printed {marker!r}:\n{log.read_text(errors='replace')}")


def _finish(process: subprocess.Popen[bytes]) -> int:
    try:
        return process.wait(DEMO_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        raise


def _ctrl_c(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGINT)


@pytest.mark.root
def test_tour_connects_checks_and_cleans_up() -> None:
    result = subprocess.run(
        [PYTHON, "-m", "nordwgd.testing.demo"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=DEMO_TIMEOUT,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert not _ANSI.search(out), "colours although stdout is not a terminal"
    run = _what_it_made(out)

    connected = re.search(r"^connected to (\S+)$", out, re.MULTILINE)
    assert connected, out
    hostname = connected.group(1)
    station = re.search(rf"VPN server {re.escape(hostname)} \(.*\) at (\S+)", out)
    assert station, out
    assert "State:      connected" in _section(out, "Connect")

    tunnel = _section(out, "leaves through the VPN server")
    seen = re.search(r"^\$ ip netns exec \$HOST curl -sS http://\S+\n(\S+)$", tunnel, re.MULTILINE)
    assert seen and seen.group(1) == station.group(1), tunnel

    dns = _section(out, "DNS")
    assert "nameserver 198.51.100.53" in dns
    assert f"got the query from {station.group(1)}" in dns

    leaks = _section(out, "Leaks are blocked")
    assert "packets 0 bytes 0" in leaks
    assert "0 packets leaked" in leaks
    assert "(exit status 9)" in leaks  # dig found no server: the LAN resolver was unreachable

    api = _section(out, "D-Bus API")
    assert ".Connect" in api and "method" in api
    assert 's "connected"' in api

    assert "State:      disconnected" in _section(out, "Disconnect")
    assert "nothing is left behind" in _section(out, "Tear down")
    assert "Traceback" not in out + result.stderr
    _assert_nothing_left(run)


@pytest.mark.root
def test_pia_tour_forwards_a_port_from_the_internet() -> None:
    result = subprocess.run(
        [PYTHON, "-m", "nordwgd.testing.demo", "--provider", "pia"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=DEMO_TIMEOUT,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    run = _what_it_made(out)
    assert "logged in" in _section(out, "Log in to PIA")
    assert re.search(r"^connected to london41[01]$", out, re.MULTILINE), out
    port = re.search(r"^Forwarded:  port (\d+)$", out, re.MULTILINE)
    assert port, out
    forwarded = _section(out, "forwarded port")
    assert f"{port.group(1)}\n" in forwarded
    assert "answered a caller from the Internet (203.0.113.1) through" in forwarded
    assert "0 packets leaked" in _section(out, "Leaks are blocked")
    assert "Provider:   pia" in _section(out, "Disconnect")
    assert "nothing is left behind" in _section(out, "Tear down")
    assert "Traceback" not in out + result.stderr
    _assert_nothing_left(run)


@pytest.mark.root
def test_keep_leaves_it_running_for_the_printed_commands(tmp_path: Path) -> None:
    process, log = _start(tmp_path, "--keep")
    try:
        out = _wait_for(process, log, "Press Ctrl-C")
        exports = re.search(r"^  (export .*)$", out, re.MULTILINE)
        status = re.search(
            r"^  (ip netns exec \$HOST nordwgctl --bus \$BUS status)$", out, re.MULTILINE
        )
        busctl = re.search(r"^  (busctl --address=\$BUS get-property .* State)$", out, re.MULTILINE)
        assert exports and status and busctl, out
        # Exactly what a user pastes into a root shell.
        script = f"{exports.group(1)}\n{status.group(1)}\n{busctl.group(1)}\n"
        pasted = subprocess.run(
            ["bash", "-e"], input=script, capture_output=True, text=True, timeout=60, check=False
        )
        assert pasted.returncode == 0, pasted.stderr
        assert "State:      connected" in pasted.stdout
        assert 's "connected"' in pasted.stdout
    finally:
        _ctrl_c(process)
        code = _finish(process)
    out = log.read_text(errors="replace")
    assert code == 0, out
    assert "nothing is left behind" in out
    _assert_nothing_left(_what_it_made(out))


@pytest.mark.root
def test_ctrl_c_while_connecting_removes_everything(tmp_path: Path) -> None:
    process, log = _start(tmp_path)
    try:
        _wait_for(process, log, "connect Germany")
    finally:
        _ctrl_c(process)
        code = _finish(process)
    out = log.read_text(errors="replace")
    assert code == 130, out
    assert "Interrupted." in out
    assert "nothing is left behind" in out
    assert "Traceback" not in out
    _assert_nothing_left(_what_it_made(out))


# Output formatting (no root) --------------------------------------------------------------


def test_commands_are_shown_with_variables_and_run_with_values() -> None:
    stream = io.StringIO()
    shell = Shell(Output(stream, color=False))
    shell.define("HOST", "nwgt-1-host")
    shell.define("HOSTNAME", "de1")
    argv = ["echo", "$HOST", "$HOSTNAME", "two words"]
    result = shell.run(argv)
    assert result.text == "nwgt-1-host de1 two words"
    assert stream.getvalue().splitlines() == [
        "$ echo $HOST $HOSTNAME 'two words'",
        "nwgt-1-host de1 two words",
    ]
    assert not _ANSI.search(stream.getvalue())


def test_expected_failures_are_reported_not_raised() -> None:
    from nordwgd.testing.demo import DemoFailed

    stream = io.StringIO()
    shell = Shell(Output(stream, color=True))
    result = shell.run(["false"], expect=False)
    assert result.code == 1
    assert "(exit status 1)" in stream.getvalue()
    assert _ANSI.search(stream.getvalue())
    with pytest.raises(DemoFailed, match="succeeded but should have been blocked"):
        shell.run(["true"], expect=False)
    with pytest.raises(DemoFailed, match="did not finish within"):
        shell.run(["sleep", "5"], timeout=0.3)
