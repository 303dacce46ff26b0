"""Shared pieces of the security suite: the real daemon in a test world, a D-Bus client, probes.

A ``Stack`` is one test world (nordwgd.testing.world) with the real ``python -m nordwgd``
running in its host namespace on a private dbus-daemon, and a client on that bus. Test modules
get one per module with ``stack_fixture(...)`` and call ``stack.reset()`` at the start of every
scenario: daemon running, disconnected, lockdown off, servers answering, leak monitor at zero.

Probes run in the host namespace like any program would (curl, ping, getent, a small Python
socket client, optionally as ``nobody``); the leak monitor on the router's end of the uplink
counts whatever leaves that should not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from nordwgd.bus import BUS_NAME, INTERFACE_NAME, OBJECT_PATH
from nordwgd.bus.convert import plain
from nordwgd.testing.leakmonitor import Leak
from nordwgd.testing.world import World
from tests.fixtures_dbus import PYTHON, REPO, PrivateBus, _start_bus, _stop_process

T = TypeVar("T")

ERROR_PREFIX = "org.nordwgd.Nordwgd1.Error."
NOBODY = "nobody"
UNROUTED_RESOLVER = "192.0.2.53"  # a resolver address nobody serves: any packet to it is a leak
PROBE_NAME = "web.test"

# Short health timings so that a dead peer is noticed within seconds, not minutes.
FAST_HEALTH: dict[str, Any] = {
    "interval": 2.0,
    "attempts": 2,
    "timeout": 1.0,
    "handshake_timeout": 3.0,
}


class BusError(Exception):
    """A D-Bus error reply: ``name`` is the full error name, ``message`` its text."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message

    @property
    def nick(self) -> str:
        return self.name.removeprefix(ERROR_PREFIX)


class BusClient:
    """A dbus-fast client on its own event loop thread, for synchronous tests."""

    def __init__(self, address: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._bus: MessageBus = self._run(self._open(address))

    @staticmethod
    async def _open(address: str) -> MessageBus:
        return await MessageBus(bus_address=address).connect()

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _call(
        self, member: str, signature: str, body: Sequence[Any], interface: str
    ) -> list[Any]:
        reply = await self._bus.call(
            Message(
                destination=BUS_NAME,
                path=OBJECT_PATH,
                interface=interface,
                member=member,
                signature=signature,
                body=list(body),
            )
        )
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise BusError(reply.error_name or "", str(text))
        return list(reply.body)

    def call(
        self,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        *,
        interface: str = INTERFACE_NAME,
        timeout: float = 60.0,
    ) -> list[Any]:
        """Call a Manager method; BusError on an error reply."""
        return self._run(self._call(member, signature, body, interface), timeout)

    def connect(self, **options: str) -> None:
        self.call("Connect", "a{sv}", [{k: Variant("s", v) for k, v in options.items()}])

    def properties(self) -> dict[str, Any]:
        (values,) = self.call(
            "GetAll", "s", [INTERFACE_NAME], interface="org.freedesktop.DBus.Properties"
        )
        result = plain(values)
        assert isinstance(result, dict)
        return result

    def call_many(
        self, member: str, count: int, concurrency: int, timeout: float = 300.0
    ) -> list[BusError | None]:
        """``count`` calls of ``member`` with at most ``concurrency`` in flight at once."""

        async def run_all() -> list[BusError | None]:
            gate = asyncio.Semaphore(concurrency)

            async def one() -> BusError | None:
                async with gate:
                    try:
                        await self._call(member, "", (), INTERFACE_NAME)
                    except BusError as error:
                        return error
                    return None

            return list(await asyncio.gather(*(one() for _ in range(count))))

        return self._run(run_all(), timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._bus.disconnect()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@dataclass
class WorldDaemon:
    """``python -m nordwgd`` in the world's host namespace, on a private bus.

    ``path_prefix`` puts a directory first on PATH and ``python_path_prefix`` one first on
    PYTHONPATH: the fault injections (a failing ``nft``, a hidden ``wireguard-go``) use them.
    """

    world: World
    bus: PrivateBus
    config: Path
    log: Path
    path: str | None = None
    python_path_prefix: Path | None = None
    process: subprocess.Popen[str] | None = None
    exits: list[int] = field(default_factory=list)

    def environment(self) -> dict[str, str]:
        env = {"LANG": os.environ.get("LANG", "C.UTF-8")}
        env["PATH"] = self.path if self.path is not None else os.environ.get("PATH", "")
        python_path = [str(REPO)]
        if self.python_path_prefix is not None:
            python_path.insert(0, str(self.python_path_prefix))
        env["PYTHONPATH"] = os.pathsep.join(python_path)
        env["DBUS_SYSTEM_BUS_ADDRESS"] = self.bus.address
        return env

    def argv(self) -> list[str]:
        return [
            "ip",
            "netns",
            "exec",
            self.world.host_ns,
            PYTHON,
            "-m",
            "nordwgd",
            "--config",
            str(self.config),
            "--log-level",
            "debug",
        ]

    def spawn(self) -> subprocess.Popen[str]:
        with self.log.open("a") as log:
            log.write(f"---- start {time.strftime('%H:%M:%S')} ----\n")
            log.flush()
            self.process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                env=self.environment(),
                cwd=REPO,
            )
        return self.process

    def start(self, timeout: float = 30.0) -> None:
        """Start and wait until the daemon owns its bus name."""
        process = self.spawn()
        deadline = time.monotonic() + timeout
        while not self.bus.name_has_owner():
            if process.poll() is not None:
                self.exits.append(process.returncode)
                raise RuntimeError(f"nordwgd exited with {process.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.terminate()
                raise RuntimeError(f"nordwgd did not take its bus name:\n{self.tail()}")
            time.sleep(0.05)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, like a crash or the OOM killer."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.exits.append(self.process.wait(10))
        self._wait_name_released()

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (what systemd sends on stop and restart) and wait for the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            _stop_process(self.process, timeout)
            self.exits.append(self.process.returncode)
        self._wait_name_released()
        return self.process.returncode

    def _wait_name_released(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.bus.name_has_owner() and time.monotonic() < deadline:
            time.sleep(0.05)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no daemon log)"


# Probes ---------------------------------------------------------------------------------------

_SOCKET_PROBE = r"""
import json, random, socket, struct, sys

def dns_query(name):
    ident = random.randrange(65536)
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return header + labels + b"\0" + struct.pack("!HH", 1, 1)

def probe(spec):
    family = socket.AF_INET6 if ":" in spec["host"] else socket.AF_INET
    kind = spec["kind"]
    try:
        if kind == "tcp":
            with socket.create_connection((spec["host"], spec["port"]), spec["timeout"]):
                return "answered"
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(spec["timeout"])
            if kind == "dns":
                sock.sendto(dns_query(spec["name"]), (spec["host"], spec["port"]))
            else:
                sock.sendto(spec["payload"].encode(), (spec["host"], spec["port"]))
                if not spec.get("wait"):
                    return "sent"
            sock.recvfrom(2048)
            return "answered"
    except socket.timeout:
        return "timeout"
    except OSError as error:
        return "error: " + (error.strerror or type(error).__name__)

print(json.dumps([probe(spec) for spec in json.loads(sys.argv[1])]))
"""


def user_prefix(user: str | None) -> list[str]:
    if user is None:
        return []
    return ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", "--"]


@dataclass(frozen=True)
class Probes:
    """Traffic a program on the host would send; each returns what it got back."""

    world: World

    def http(self, url: str | None = None, timeout: float = 2.0) -> str | None:
        """The web server's answer (the source address it saw), or None when nothing came."""
        argv = [
            "curl",
            "-sS",
            "--max-time",
            str(timeout),
            url or f"http://{self.world.web_address}/",
        ]
        result = self.world.host_exec(argv, check=False, timeout=timeout + 10)
        return result.stdout.strip() if result.returncode == 0 else None

    def ping(self, address: str, timeout: int = 1, count: int = 1) -> bool:
        argv = ["ping", "-n", "-c", str(count), "-W", str(timeout), address]
        return self.world.host_exec(argv, check=False, timeout=timeout * count + 10).returncode == 0

    def resolve(self, name: str = PROBE_NAME) -> str | None:
        """Resolve through the host's resolv.conf, as every program does."""
        result = self.world.host_exec(["getent", "ahostsv4", name], check=False, timeout=30)
        words = result.stdout.split()
        return words[0] if result.returncode == 0 and words else None

    def sockets(self, specs: Sequence[Mapping[str, Any]], *, user: str | None = None) -> list[str]:
        """Run socket probes (kind tcp | udp | dns) in one process; "answered", "timeout", ..."""
        argv = [*user_prefix(user), sys.executable, "-c", _SOCKET_PROBE, json.dumps(list(specs))]
        result = self.world.host_exec(argv, check=False, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"socket probe failed: {result.stderr.strip()}")
        answers: list[str] = json.loads(result.stdout)
        return answers

    def dns(self, server: str, name: str = PROBE_NAME, timeout: float = 1.0) -> str:
        spec = {"kind": "dns", "host": server, "port": 53, "name": name, "timeout": timeout}
        return self.sockets([spec])[0]

    def udp(
        self, host: str, port: int, payload: str, *, user: str | None = None, wait: bool = False
    ) -> str:
        spec = {"kind": "udp", "host": host, "port": port, "payload": payload, "timeout": 1.0}
        return self.sockets([{**spec, "wait": wait}], user=user)[0]

    def standard(self) -> dict[str, object]:
        """The usual leak attempts: web, ping, DNS to the LAN resolver and another port-53
        address, and UDP to a station's WireGuard port from an unprivileged user."""
        world = self.world
        station = world.servers[0].station
        results: dict[str, object] = {"http": self.http(timeout=1.5)}
        results["ping"] = self.ping(world.web_address)
        dns = [
            {"kind": "dns", "host": world.lan_dns, "port": 53, "name": PROBE_NAME, "timeout": 1.0},
            {
                "kind": "dns",
                "host": UNROUTED_RESOLVER,
                "port": 53,
                "name": PROBE_NAME,
                "timeout": 0.5,
            },
            {"kind": "tcp", "host": world.web_address, "port": 80, "timeout": 1.0},
        ]
        results["dns_lan"], results["dns_other"], results["tcp_web"] = self.sockets(dns)
        results["udp_nobody"] = self.udp(station, 51820, "nordwgd-probe", user=NOBODY)
        return results


def answered(results: Mapping[str, object]) -> list[str]:
    """The probes of ``Probes.standard`` that got an answer from outside the host."""
    return [
        name
        for name, value in results.items()
        if value is True or value == "answered" or (name == "http" and value is not None)
    ]


# Firewall inspection ---------------------------------------------------------------------------


def nordwgd_table(world: World) -> list[dict[str, Any]] | None:
    """The JSON listing of ``inet nordwgd`` in the host namespace, None when it is absent."""
    result = world.host_exec(["nft", "-j", "list", "table", "inet", "nordwgd"], check=False)
    if result.returncode != 0:
        return None
    objects: list[dict[str, Any]] = json.loads(result.stdout)["nftables"]
    return objects


def table_drops_by_default(objects: list[dict[str, Any]] | None) -> bool:
    """The table exists and its input, output and forward chains all drop by default."""
    if objects is None:
        return False
    chains = {o["chain"]["name"]: o["chain"] for o in objects if "chain" in o}
    return all(
        name in chains and chains[name].get("policy") == "drop"
        for name in ("input", "output", "forward")
    )


def table_comment(objects: list[dict[str, Any]] | None) -> str:
    """The policy marker the daemon writes into its rules ("nordwgd <state> <digest>")."""
    for item in objects or []:
        for kind in ("table", "rule"):
            comment = item.get(kind, {}).get("comment", "")
            if comment:
                return str(comment)
    return ""


# A base chain blocks when whatever its rules do not accept is dropped by its last rule. The
# chain policy alone is not enough, nor always visible: the kernel defers a new base chain's
# drop policy to the end of the commit, after the old table's hooks are gone and the new rules
# are in force, so a listing taken then shows "policy accept" and, without the final drop rule,
# packets pass in that moment. The table is recreated on every apply, so both are checked.
_TABLE_SAMPLER = r"""
import json, select, sys
import nftables

nft = nftables.Nftables()
nft.set_json_output(True)

def unconditional_drop(rule):
    *before, last = rule["expr"]
    return last == {"drop": None} and all(set(e) == {"counter"} for e in before)

def problem(objects):
    chains = {o["chain"]["name"]: o["chain"] for o in objects if "chain" in o}
    for name in ("input", "output", "forward"):
        chain = chains.get(name, {})
        rules = [o["rule"] for o in objects if "rule" in o and o["rule"]["chain"] == name]
        if chain.get("hook") != name or chain.get("policy") not in ("drop", "accept"):
            return f"{name}: not a base chain with a policy: {chain}"
        if not rules or not unconditional_drop(rules[-1]):
            return f"{name} (policy {chain['policy']}) does not end in a drop: {rules[-1:]}"
    return None

total, bad, deferred = 0, [], 0
while not select.select([sys.stdin], [], [], 0)[0]:
    rc, out, err = nft.cmd("list table inet nordwgd")
    total += 1
    if rc != 0:
        bad.append("no table: " + err.strip()[:120])
        continue
    objects = json.loads(out)["nftables"]
    found = problem(objects)
    if found:
        bad.append(found[:300])
    elif any(o["chain"].get("policy") != "drop" for o in objects if "chain" in o
             and o["chain"]["name"] in ("input", "output", "forward")):
        deferred += 1
print(json.dumps({"samples": total, "bad": len(bad), "examples": bad[:5],
                  "drop_policy_deferred": deferred}))
"""


class TableSampler:
    """Lists ``inet nordwgd`` in the host namespace as fast as it can, in one process, until
    ``stop()``; then reports how many listings there were, how many did not block (see
    ``_TABLE_SAMPLER``), and how many caught a commit with the drop policy still deferred."""

    def __init__(self, world: World) -> None:
        self._process = world.host_popen(
            [sys.executable, "-c", _TABLE_SAMPLER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> dict[str, Any]:
        out, err = self._process.communicate("stop\n", timeout=60)
        if self._process.returncode != 0:
            raise RuntimeError(f"table sampler failed: {err.strip()}")
        report: dict[str, Any] = json.loads(out)
        return report


# The stack --------------------------------------------------------------------------------------


@dataclass
class Stack:
    world: World
    bus: PrivateBus
    daemon: WorldDaemon
    client: BusClient
    directory: Path
    states_seen: list[str] = field(default_factory=list)

    @property
    def probes(self) -> Probes:
        return Probes(self.world)

    def props(self) -> dict[str, Any]:
        props = self.client.properties()
        state = str(props.get("State", ""))
        if not self.states_seen or self.states_seen[-1] != state:
            self.states_seen.append(state)
        return props

    def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 30.0,
        what: str = "",
        *,
        interval: float = 0.1,
    ) -> dict[str, Any]:
        """Poll the properties until ``predicate`` holds; AssertionError with the log if not."""
        deadline = time.monotonic() + timeout
        props: dict[str, Any] = {}
        while True:
            try:
                props = self.props()
            except BusError:
                props = {}
            if props and predicate(props):
                return props
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what or predicate}; last {props}; "
                    f"states seen {self.states_seen}\n{self.daemon.tail()}"
                )
            time.sleep(interval)

    def wait_for_state(self, *states: str, timeout: float = 30.0, **equal: Any) -> dict[str, Any]:
        """Wait until State is one of ``states`` and every ``Name=value`` matches."""

        def matches(props: dict[str, Any]) -> bool:
            return props.get("State") in states and all(
                props.get(name) == value for name, value in equal.items()
            )

        return self.wait_for(matches, timeout, f"State in {states} with {equal}")

    def connect_and_wait(self, timeout: float = 60.0, **options: str) -> dict[str, Any]:
        self.client.connect(**options)
        return self.wait_for_state("connected", timeout=timeout)

    def leaked(self) -> int:
        assert self.world.leak_monitor is not None
        return self.world.leak_monitor.count()

    def leaks(self) -> list[Leak]:
        assert self.world.leak_monitor is not None
        return self.world.leak_monitor.leaks()

    def reset_leaks(self) -> None:
        assert self.world.leak_monitor is not None
        self.world.leak_monitor.reset()

    def reset(self) -> None:
        """Back to a known start: daemon up, disconnected and open, every server answering."""
        for server in self.world.servers:
            self.world.unsilence_server(server.hostname)
        self.world.fault(None)
        if not self.daemon.alive:
            self.daemon.start()
        self.client.call("SetLockdown", "b", [False])
        self.client.call("SetAllowLan", "b", [False])
        self.client.call("Disconnect")
        self.wait_for_state("disconnected", timeout=30, Blocking="open")
        self.states_seen.clear()
        self.reset_leaks()

    def restart(self, **daemon_changes: Any) -> None:
        """Stop (SIGTERM) and start the daemon again, with changed attributes if given."""
        self.daemon.terminate()
        for name, value in daemon_changes.items():
            setattr(self.daemon, name, value)
        self.daemon.start()


def build_stack(directory: Path, **config: Any) -> Iterator[Stack]:
    """A world, a private bus, the daemon started with ``config`` overrides and a client."""
    world = World.build(directory / "world")
    bus: PrivateBus | None = None
    daemon: WorldDaemon | None = None
    client: BusClient | None = None
    try:
        bus = _start_bus()
        settings = {"health": {"urls": [f"http://{world.web_address}/health"], **FAST_HEALTH}}
        for key, value in config.items():
            if isinstance(value, Mapping) and isinstance(settings.get(key), dict):
                settings[key] = {**settings[key], **value}
            else:
                settings[key] = value
        config_path = world.write_config(directory / "nordwgd.toml", **settings)
        daemon = WorldDaemon(world, bus, config_path, directory / "daemon.log")
        daemon.start()
        client = BusClient(bus.address)
        yield Stack(world, bus, daemon, client, directory)
    finally:
        if client is not None:
            client.close()
        if daemon is not None:
            daemon.terminate()
        if bus is not None:
            bus.stop()
        world.close()


def stack_fixture(**config: Any) -> Any:
    """A module-scoped ``stack`` fixture; ``config`` overrides the world's daemon config."""

    @pytest.fixture(scope="module")
    def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
        if os.geteuid() != 0:
            pytest.skip("needs root (network namespaces, nftables, wireguard-go)")
        yield from build_stack(tmp_path_factory.mktemp("security"), **config)

    return stack


# Fault injection helpers -----------------------------------------------------------------------


def tool_dir(prefix: str) -> Path:
    """A fresh directory for substitute programs; the caller removes it."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(0o755)
    return directory


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def path_without(program: str) -> str:
    """PATH with every directory that holds ``program`` left out."""
    keep = [
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and not (Path(entry) / program).exists()
    ]
    return os.pathsep.join(keep)


def sigkill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
