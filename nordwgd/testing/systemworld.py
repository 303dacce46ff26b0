"""nordwgd under real systemd with a test world: shared pieces of the system tests.

``boot_world()`` boots a throw-away container (nordwgd.testing.nspawn) in which the test world
(nordwgd.testing.world) is itself a unit, ``nordwgd-test-world.service``, started early in
boot, before ``nordwgd-killswitch.service``. Drop-ins put the kill switch and ``nordwgd.service``
into the world's host namespace (``NetworkNamespacePath=``), so a boot of the container is a
boot of a machine whose uplink the world's leak monitor watches: the kill switch, the daemon and
every probe run where a leak would be counted.

``nordwgd-test-probe.service`` runs once during boot, after the kill switch and before
``nordwgd.service``, and records what a program could reach at that moment.

The small helpers (``busctl``, ``get_property``, ``wait_for``, ``connect_and_wait``,
``kill_main_process``) work on any booted container with nordwgd installed.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from nordwgd.testing.nspawn import Container, boot_container

BUS = ("org.nordwgd.Nordwgd1", "/org/nordwgd/Nordwgd1", "org.nordwgd.Nordwgd1.Manager")
DAEMON = "nordwgd.service"
KILLSWITCH = "nordwgd-killswitch.service"
WORLD_UNIT = "nordwgd-test-world.service"
PROBE_UNIT = "nordwgd-test-probe.service"
PYTHON = sys.executable  # the container is an overlay of this machine: the same interpreter

TEST_DIR = "/usr/local/lib/nordwgd-test"
STATE_DIR = "/run/nordwgd-test"
HOST_NETNS_LINK = f"{STATE_DIR}/host-netns"
BOOT_PROBE = f"{STATE_DIR}/boot-probe.json"
WORLD_DIR = "/srv/nordwgd-world"  # not under /tmp: the daemon's PrivateTmp= would hide it


# --- small helpers -------------------------------------------------------------------------


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``check`` until it holds; the timeout only bounds a hang, it is not a measurement."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def busctl(box: Container, *args: str, user: str | None = None, check: bool = True) -> str:
    argv = ["busctl", "--system", *args]
    result = box.run_as(user, argv, check=check) if user else box.run(argv, check=check)
    return result.stdout + result.stderr if not check else result.stdout


def get_property(box: Container, name: str) -> str:
    """busctl's rendering of a Manager property, e.g. ``s "connected"``.

    Reading a property bus-activates nordwgd.service when it is stopped.
    """
    return busctl(box, "get-property", *BUS, name).strip()


def state(box: Container) -> str:
    """The daemon's State (bus-activating it when stopped)."""
    return json.loads(get_property(box, "State").removeprefix("s "))  # type: ignore[no-any-return]


def settled(box: Container) -> bool:
    return state(box) in ("connected", "disconnected", "error")


def connected_since(box: Container) -> int:
    """ConnectedSince (µs since the epoch): each connection has its own."""
    return int(get_property(box, "ConnectedSince").removeprefix("t "))


def connect_and_wait(box: Container, timeout: float = 90.0) -> None:
    """Connect, and wait for the connection this call made (not one that was up before)."""
    before = connected_since(box)
    busctl(box, "call", *BUS, "Connect", "a{sv}", "0")
    wait_for_connected(box, timeout, newer_than=before)


def wait_for_connected(box: Container, timeout: float = 90.0, newer_than: int = -1) -> None:
    """Wait until connected (since after ``newer_than``), or fail with the daemon's error
    cause and journal."""
    seen = ""

    def done() -> bool:
        nonlocal seen
        seen = state(box)  # the state that ends the wait is the one judged: it may change
        if seen == "connected":
            return connected_since(box) > newer_than
        return seen == "error"

    wait_for("the connection", done, timeout=timeout)
    assert seen == "connected", (
        f"state {seen}, {get_property(box, 'ErrorCause')}\n{box.journal(DAEMON, lines=400)}"
    )


def kill_main_process(box: Container, signal: str = "KILL") -> tuple[str, int]:
    """Kill nordwgd's main process; returns its PID and the restart count before the kill."""
    restarts = int(box.unit_property(DAEMON, "NRestarts"))
    killed = box.unit_property(DAEMON, "MainPID")
    box.run(["kill", f"-{signal}", killed])
    return killed, restarts


def wait_restarted(box: Container, killed: str, restarts: int, timeout: float = 60.0) -> None:
    """Wait until systemd restarted nordwgd after ``kill_main_process`` (Restart=on-failure)."""
    wait_for(
        "systemd to restart nordwgd",
        lambda: (
            int(box.unit_property(DAEMON, "NRestarts")) > restarts
            and box.unit_property(DAEMON, "ActiveState") == "active"
        ),
        timeout=timeout,
    )
    assert box.unit_property(DAEMON, "MainPID") != killed


def monotonic_property(box: Container, unit: str, name: str) -> int:
    """A ``...TimestampMonotonic`` property of ``unit`` in microseconds (0 = never)."""
    return int(box.unit_property(unit, name) or 0)


# --- what a program in the host namespace can reach -----------------------------------------


@dataclass
class ProbeTally:
    """What probes from the host namespace got back."""

    rounds: int = 0
    http_answers: dict[str, int] = field(default_factory=dict)  # body (the source seen) -> count
    http_failed: int = 0
    lan_dns_answered: int = 0  # the LAN resolver answered: DNS went around the tunnel
    ping_answered: int = 0
    table_missing: int = 0  # rounds in which the kill-switch table did not exist

    @classmethod
    def from_json(cls, text: str) -> ProbeTally:
        data: dict[str, Any] = json.loads(text)
        return cls(**data)

    def answered_from(self) -> set[str]:
        return set(self.http_answers)


# Runs inside the container, in the world's host namespace: one probe round is an HTTP GET of
# the world's web server (which answers with the source address it saw), a DNS query to the LAN
# resolver, a ping of the web server, and a look at the kill-switch table.
PROBE_SCRIPT = """\
import json, selectors, socket, subprocess, sys, time
from nordwgd import dnsprobe

INFO = json.load(open("/run/nordwgd-test/world.json"))
LIMIT = 300.0


def http_get():
    try:
        with socket.create_connection((INFO["web"], 80), timeout=1.0) as sock:
            sock.sendall(b"GET / HTTP/1.0\\r\\nHost: web.test\\r\\n\\r\\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
    except OSError:
        return None
    return data.partition(b"\\r\\n\\r\\n")[2].decode(errors="replace").strip() or None


def ping():
    argv = ["ping", "-n", "-q", "-c", "1", "-W", "1", INFO["web"]]
    return subprocess.run(argv, capture_output=True).returncode == 0


def table_exists():
    argv = ["nft", "list", "table", "inet", "nordwgd"]
    return subprocess.run(argv, capture_output=True).returncode == 0


def one_round(tally):
    tally["rounds"] += 1
    body = http_get()
    if body is None:
        tally["http_failed"] += 1
    else:
        tally["http_answers"][body] = tally["http_answers"].get(body, 0) + 1
    if dnsprobe.query(INFO["lan_dns"], 0.5) is None:
        tally["lan_dns_answered"] += 1
    if ping():
        tally["ping_answered"] += 1
    if not table_exists():
        tally["table_missing"] += 1


def main():
    tally = {"rounds": 0, "http_answers": {}, "http_failed": 0, "lan_dns_answered": 0,
             "ping_answered": 0, "table_missing": 0}
    mode = sys.argv[1]
    if mode == "once":
        one_round(tally)
        with open(sys.argv[2], "w") as out:
            json.dump(tally, out)
        return
    if mode == "rounds":
        for _ in range(int(sys.argv[2])):
            one_round(tally)
        print(json.dumps(tally), flush=True)
        return
    # "loop": until stdin closes, with an upper bound so that a lost test cannot leave it.
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ)
    one_round(tally)
    print("started", flush=True)
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline and not selector.select(0.05):
        one_round(tally)
    print(json.dumps(tally), flush=True)


main()
"""

WORLD_RUNNER = """\
import json, signal, sys
from pathlib import Path
from nordwgd import systemd
from nordwgd.testing.world import World, cleanup_run

state = Path("/run/nordwgd-test")
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
world = World.build(Path(sys.argv[2]))
try:
    world.write_config(
        Path("/etc/nordwgd/nordwgd.toml"),
        network={"lockdown": sys.argv[1] == "lockdown"},
        paths={"state_dir": "/var/lib/nordwgd", "runtime_dir": "/run/nordwgd"},
    )
    assert world.leak_monitor is not None
    info = {
        "host_ns": world.host_ns,
        "router_ns": world.router_ns,
        "uplink_router": world.uplink_router,
        "interface": world.interface,
        "web": world.web_address,
        "lan_dns": world.lan_dns,
        "host_address": world.host_address,
        "stations": [server.station for server in world.servers],
        "api_addresses": list(world.api_addresses),
    }
    state.mkdir(parents=True, exist_ok=True)
    (state / "world.json").write_text(json.dumps(info))
    link = state / "host-netns"
    link.unlink(missing_ok=True)
    link.symlink_to(f"/run/netns/{world.host_ns}")
    systemd.ready("world " + world.host_ns)
    while not stop:
        signal.pause()
finally:
    world.close()
    cleanup_run()
"""

LEAKS_SCRIPT = """\
import json, sys
from dataclasses import asdict
from nordwgd.testing.leakmonitor import LeakMonitor

info = json.load(open("/run/nordwgd-test/world.json"))
monitor = LeakMonitor(
    info["router_ns"], info["uplink_router"], info["stations"], info["api_addresses"]
)
if sys.argv[1] == "reset":
    monitor.reset()
else:
    print(json.dumps([asdict(leak) for leak in monitor.leaks()]))
"""


def _world_unit(lockdown: bool) -> str:
    mode = "lockdown" if lockdown else "open"
    return f"""\
[Unit]
Description=nordwgd test world (namespaces, fake VPN servers, fake API, leak monitor)
DefaultDependencies=no
After=local-fs.target systemd-tmpfiles-setup.service
Before=sysinit.target {KILLSWITCH} {DAEMON} shutdown.target
Conflicts=shutdown.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={PYTHON} {TEST_DIR}/world.py {mode} {WORLD_DIR}
TimeoutStartSec=120s
TimeoutStopSec=60s

[Install]
WantedBy=sysinit.target
"""


PROBE_UNIT_TEXT = f"""\
[Unit]
Description=nordwgd test: what a program can reach between the kill switch and the daemon
DefaultDependencies=no
Requires={WORLD_UNIT}
After={WORLD_UNIT} {KILLSWITCH}
Before={DAEMON}

[Service]
Type=oneshot
RemainAfterExit=yes
NetworkNamespacePath={HOST_NETNS_LINK}
ExecStart={PYTHON} {TEST_DIR}/probe.py once {BOOT_PROBE}

[Install]
WantedBy=multi-user.target
"""

IN_WORLD_DROPIN = f"""\
[Unit]
Requires={WORLD_UNIT}
After={WORLD_UNIT}

[Service]
NetworkNamespacePath={HOST_NETNS_LINK}
"""


def world_files(lockdown: bool) -> dict[str, str]:
    """The files ``boot_world`` adds to the container before it boots."""
    return {
        f"{TEST_DIR}/world.py": WORLD_RUNNER,
        f"{TEST_DIR}/probe.py": PROBE_SCRIPT,
        f"{TEST_DIR}/leaks.py": LEAKS_SCRIPT,
        f"/etc/systemd/system/{WORLD_UNIT}": _world_unit(lockdown),
        f"/etc/systemd/system/{PROBE_UNIT}": PROBE_UNIT_TEXT,
        f"/etc/systemd/system/{KILLSWITCH}.d/50-test-world.conf": IN_WORLD_DROPIN,
        # The world's resolv.conf lives in /etc/netns/<host namespace>/.
        f"/etc/systemd/system/{DAEMON}.d/50-test-world.conf": IN_WORLD_DROPIN
        + "ReadWritePaths=-/etc/netns\n",
    }


class SystemWorld:
    """The booted container and the test world inside it."""

    def __init__(self, box: Container) -> None:
        self.box = box
        self.info: dict[str, Any] = json.loads(box.run(["cat", f"{STATE_DIR}/world.json"]).stdout)
        self.host_ns: str = self.info["host_ns"]
        self.stations: set[str] = set(self.info["stations"])

    def host(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the world's host namespace (where nordwgd runs)."""
        return self.box.run(["ip", "netns", "exec", self.host_ns, *argv], check=check)

    def web_get(self, timeout: float = 5.0) -> str:
        """The source address the web server saw, or "" when nothing came back."""
        url = f"http://{self.info['web']}/"
        result = self.host(["curl", "-sS", "--max-time", str(timeout), url], check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    def table(self) -> str | None:
        """The kill-switch table in the host namespace, or None when there is none."""
        result = self.host(["nft", "--stateless", "list", "table", "inet", "nordwgd"], check=False)
        return result.stdout if result.returncode == 0 else None

    def leaks(self) -> list[dict[str, Any]]:
        """What the leak monitor counted since the last reset (destination, protocol, packets)."""
        found: list[dict[str, Any]] = json.loads(
            self.box.run([PYTHON, f"{TEST_DIR}/leaks.py", "list"]).stdout
        )
        return found

    def leaked_packets(self) -> int:
        return sum(int(leak["packets"]) for leak in self.leaks())

    def reset_leaks(self) -> None:
        self.box.run([PYTHON, f"{TEST_DIR}/leaks.py", "reset"])

    def probe_rounds(self, rounds: int) -> ProbeTally:
        out = self.host([PYTHON, f"{TEST_DIR}/probe.py", "rounds", str(rounds)]).stdout
        return ProbeTally.from_json(out)

    def boot_probe(self) -> ProbeTally:
        return ProbeTally.from_json(self.box.run(["cat", BOOT_PROBE]).stdout)

    @contextlib.contextmanager
    def probing(self) -> Iterator[ProbeLoop]:
        """Probes from the host namespace, one round after the other, for the ``with`` body."""
        process = self.box.popen(
            ["ip", "netns", "exec", self.host_ns, PYTHON, f"{TEST_DIR}/probe.py", "loop"]
        )
        loop = ProbeLoop(process)
        try:
            loop.wait_started()
            yield loop
        finally:
            loop.finish()


class ProbeLoop:
    """A running probe loop; ``tally`` is filled in when the loop has finished."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._process = process
        self.tally: ProbeTally | None = None

    def _line(self, timeout: float) -> str:
        assert self._process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise AssertionError("the probe loop did not answer")
        line = self._process.stdout.readline()
        if not line:
            assert self._process.stderr is not None
            raise AssertionError(f"the probe loop exited: {self._process.stderr.read()}")
        return line

    def wait_started(self) -> None:
        assert self._line(timeout=30).strip() == "started"

    def finish(self) -> ProbeTally:
        if self.tally is None:
            assert self._process.stdin is not None
            self._process.stdin.close()  # the loop ends after the round under way
            try:
                self.tally = ProbeTally.from_json(self._line(timeout=30))
            finally:
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout=10)
        return self.tally


@contextlib.contextmanager
def boot_world(
    *,
    lockdown: bool,
    enable: tuple[str, ...] = (KILLSWITCH, DAEMON),
    files: dict[str, str] | None = None,
) -> Iterator[SystemWorld]:
    """Boot a container whose boot builds the test world first; see the module docstring.

    ``enable`` names the nordwgd units enabled before boot (the world and the boot probe
    always are). The config in /etc/nordwgd/nordwgd.toml is the world's, with ``lockdown``;
    its state directory is /var/lib/nordwgd. ``files`` adds files (path -> content).
    """
    units = (WORLD_UNIT, PROBE_UNIT, *enable)
    with boot_container(files={**world_files(lockdown), **(files or {})}, enable=units) as box:
        for unit in (WORLD_UNIT, PROBE_UNIT):
            active = box.unit_property(unit, "ActiveState")
            assert active == "active", f"{unit} is {active}:\n{box.journal(unit)}"
        yield SystemWorld(box)
