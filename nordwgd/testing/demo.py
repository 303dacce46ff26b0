"""A guided tour of nordwgd in a throw-away world of network namespaces; no account needed.

``python -m nordwgd.testing.demo [--keep] [--country NAME]`` (as root; ``scripts/demo`` installs
what it needs first). It builds the test world (a fake NordVPN API, fake VPN servers, an
"Internet" web server and DNS), starts the real daemon on a private system-type bus inside the
world's host namespace, and walks through connect, status, where traffic and DNS go, blocked
leaks and the D-Bus API, then disconnects and removes everything, also on Ctrl-C or failure.
With ``--keep`` it leaves the world and the daemon running, prints commands to try, and tears
down on Ctrl-C. Nothing runs in the machine's own network namespace and the machine's
/etc/resolv.conf is never written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO

from nordwgd.split import cgroups
from nordwgd.testing.fleet import country_record
from nordwgd.testing.leakmonitor import TABLE as LEAK_TABLE
from nordwgd.testing.netns import NETNS_PREFIX, cleanup_run, list_netns
from nordwgd.testing.piaworld import ROUTER_WAN, PiaWorld
from nordwgd.testing.privatebus import PrivateBus, start_bus
from nordwgd.testing.world import World

BUS_NAME = "org.nordwgd.Nordwgd1"
OBJECT_PATH = "/org/nordwgd/Nordwgd1"
INTERFACE = "org.nordwgd.Nordwgd1.Manager"
REQUIRED_TOOLS = ("ip", "nft", "wireguard-go", "dbus-daemon", "busctl", "curl", "dig", "setpriv")
N_SERVERS = 3
COMMAND_TIMEOUT = 30.0
CONNECT_TIMEOUT = 45
DAEMON_START_TIMEOUT = 30.0
DAEMON_STOP_TIMEOUT = 20.0
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_REPO_ROOT = Path(__file__).resolve().parents[2]
_SAFE_WORD = re.compile(r"^[\w$@%+=:,./-]+$")


def _empty_cgroup(directory: Path) -> None:
    """Move what is left in ``directory`` (a cgroup) to its parent, so it can be removed."""
    procs = directory / "cgroup.procs"
    if procs.exists():
        for pid in procs.read_text().split():
            with contextlib.suppress(OSError):
                (directory.parent / "cgroup.procs").write_text(pid)


class DemoFailed(Exception):
    """A step could not be carried out; the demo stops and tears down."""


class Interrupted(BaseException):
    """Ctrl-C, SIGTERM or SIGHUP: stop and tear down (a BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` on the way swallows it)."""


# Output -----------------------------------------------------------------------------------


class Output:
    """Tutorial-style text: numbered steps, ``$ command`` lines, results. ANSI colours only
    when writing to a terminal (and NO_COLOR is unset)."""

    def __init__(self, stream: TextIO, *, color: bool) -> None:
        self.stream = stream
        self.color = color
        self.step_number = 0
        self.closed = False
        utf8 = (getattr(stream, "encoding", "") or "").lower().replace("-", "") == "utf8"
        self.tick = "✔" if utf8 else "OK"
        self.cross = "✘" if utf8 else "FAILED"

    def _paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def line(self, text: str = "") -> None:
        if self.closed:
            return
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            # The terminal went away (SIGHUP) or a pager quit: keep going quietly, so that
            # the teardown still runs to the end.
            self.closed = True

    def title(self, text: str) -> None:
        self.line(self._paint(text, "1"))

    def step(self, text: str) -> None:
        self.step_number += 1
        self.line()
        self.line(self._paint(f"Step {self.step_number}. {text}", "1;34"))

    def say(self, text: str) -> None:
        self.line(text)

    def note(self, text: str) -> None:
        self.line(self._paint(text, "2"))

    def command(self, text: str) -> None:
        self.line(self._paint(f"$ {text}", "1;36"))

    def output(self, text: str) -> None:
        self.line(text)

    def ok(self, text: str) -> None:
        self.line(self._paint(f"{self.tick} {text}", "32"))

    def bad(self, text: str) -> None:
        self.line(self._paint(f"{self.cross} {text}", "1;31"))


# Running commands -------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    code: int
    text: str


class Shell:
    """Runs commands written with shell-style variables ($HOST, $BUS, ...): shows them as a
    reader would type them, runs them with the values filled in, and streams their output."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.variables: dict[str, str] = {}
        bin_dir = str(Path(sys.executable).parent)
        self.env = {key: value for key, value in os.environ.items() if key in ("LANG", "HOME")}
        self.env["PATH"] = f"{bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        self.env["PYTHONPATH"] = str(_REPO_ROOT)
        self.bin_dir = bin_dir

    def define(self, name: str, value: str) -> None:
        self.variables[name] = value

    def expand(self, word: str) -> str:
        # Longest names first, so $HOSTX never matches as $HOST followed by X.
        for name in sorted(self.variables, key=len, reverse=True):
            word = word.replace(f"${name}", self.variables[name])
        return word

    def show(self, argv: Sequence[str]) -> str:
        return " ".join(word if _SAFE_WORD.match(word) else shlex.quote(word) for word in argv)

    def run(
        self,
        argv: Sequence[str],
        *,
        expect: bool | None = True,
        timeout: float = COMMAND_TIMEOUT,
        quiet: bool = False,
        clip: int | None = None,
    ) -> Result:
        """Show and run ``argv``. ``expect``: True = must succeed, False = must fail,
        None = either. Output is printed as it arrives unless ``quiet``; lines longer than
        ``clip`` characters are shown cut (the returned text is whole)."""
        shown = self.show(argv)
        if not quiet:
            self.out.command(shown)
        text = self._stream([self.expand(word) for word in argv], timeout, quiet, clip)
        if not quiet and text.code != 0:
            self.out.note(f"(exit status {text.code})")
        if expect is True and text.code != 0:
            raise DemoFailed(f"`{shown}` failed with exit status {text.code}")
        if expect is False and text.code == 0:
            raise DemoFailed(f"`{shown}` succeeded but should have been blocked")
        return text

    def _stream(self, argv: list[str], timeout: float, quiet: bool, clip: int | None) -> Result:
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=_REPO_ROOT,
            )
        except OSError as error:
            raise DemoFailed(f"cannot run {argv[0]}: {error}") from None
        assert process.stdout is not None
        collected: list[str] = []
        pending = b""
        deadline = time.monotonic() + timeout
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DemoFailed(f"`{self.show(argv)}` did not finish within {timeout:g} s")
                if not selector.select(timeout=min(remaining, 0.2)):
                    continue
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    self._emit(raw, collected, quiet, clip)
            if pending:
                self._emit(pending, collected, quiet, clip)
            code = process.wait(timeout=max(deadline - time.monotonic(), 1.0))
        finally:
            selector.close()
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
        return Result(code, "\n".join(collected))

    def _emit(self, raw: bytes, collected: list[str], quiet: bool, clip: int | None) -> None:
        line = raw.decode(errors="replace").rstrip()
        collected.append(line)
        if quiet:
            return
        if clip is not None and len(line) > clip:
            line = line[: clip - 3] + "..."
        self.out.output(line)


# The demo ---------------------------------------------------------------------------------


class Demo:
    def __init__(
        self, out: Output, *, keep: bool, country: str | None, provider: str = "nordvpn"
    ) -> None:
        self.out = out
        self.provider = provider
        self.shell = Shell(out)
        self.keep = keep
        self.country = country
        self.directory = Path(tempfile.mkdtemp(prefix="nordwgd-demo-"))
        self.directory.chmod(0o755)
        self.world: World | None = None
        self.bus: PrivateBus | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.namespaces: list[str] = []
        self.failures: list[str] = []
        self.excluded_cgroup: Path | None = None  # made by the user in --keep, removed here
        self.shell.define("DEMO", str(self.directory))
        ctl = Path(self.shell.bin_dir) / "nordwgctl"
        self.python = Path(sys.executable).name  # found first on the children's PATH
        self.ctl = ["nordwgctl"] if ctl.exists() else [self.python, "-m", "nordwgd.cli"]

    # helpers

    def host(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", "$HOST", *argv]

    def nordwgctl(self, *argv: str) -> list[str]:
        return self.host(*self.ctl, "--bus", "$BUS", *argv)

    def check(self, ok: bool, good: str, bad: str) -> None:
        if ok:
            self.out.ok(good)
        else:
            self.out.bad(bad)
            self.failures.append(bad)

    @property
    def log_path(self) -> Path:
        return self.directory / "nordwgd.log"

    def status(self) -> dict[str, Any]:
        result = self.shell.run(self.nordwgctl("status", "--json"), quiet=True)
        try:
            values = json.loads(result.text)
        except ValueError:
            raise DemoFailed(f"nordwgctl status --json printed no JSON: {result.text}") from None
        if not isinstance(values, dict):
            raise DemoFailed("nordwgctl status --json printed no object")
        return values

    # the tour

    def run(self) -> None:
        out = self.out
        pia = self.provider == "pia"
        service = "Private Internet Access (PIA)" if pia else "NordVPN NordLynx"
        out.title(f"nordwgd demo: a {service} daemon in a throw-away world")
        out.say(
            "Everything below runs inside network namespaces made for this run; your machine's\n"
            "own network and /etc/resolv.conf are not touched, and no VPN account is used."
        )
        self.build_world()
        self.show_direct_traffic()
        self.start_bus()
        self.start_daemon()
        if pia:
            self.login()
        self.connect()
        self.show_tunnel_traffic()
        self.show_tunnel_dns()
        if pia:
            self.show_forwarded_port()
        self.show_blocked_leaks()
        self.show_dbus_api()
        if self.keep:
            self.wait_for_ctrl_c()
        else:
            self.disconnect()

    def build_world(self) -> None:
        out = self.out
        out.step("Build the world")
        out.say(
            "A 'host' namespace (where nordwgd runs) behind a 'router' namespace that plays LAN\n"
            "gateway, fake NordVPN API, 'Internet' web server and DNS, plus one namespace per\n"
            "fake VPN server, each a real WireGuard peer (wireguard-go) that NATs to the Internet."
        )
        started = time.monotonic()
        if self.provider == "pia":
            out.say(
                "The router also plays PIA's meta servers (token, signed region list) and every\n"
                "VPN server answers addKey on :1337 and port forwarding on :19999 in its tunnel."
            )
            world: World = PiaWorld.build(self.directory / "world")
        else:
            world = World(self.directory / "world", n_servers=N_SERVERS)
        self.world = world
        world.__enter__()
        self.namespaces = [world.host_ns, world.router_ns, *(s.netns for s in world.servers)]
        self.shell.define("HOST", world.host_ns)
        self.shell.define("ROUTER", world.router_ns)
        out.ok(f"built in {time.monotonic() - started:.1f} s")
        rows = [
            (
                "$HOST",
                world.host_ns,
                f"{world.uplink} {world.host_address}/24, LAN resolver {world.lan_dns}",
            ),
            ("$ROUTER", world.router_ns, f"LAN gateway {world.router_lan}"),
            ("", "", f"fake API https://{world.api_host} at {', '.join(world.api_addresses)}"),
            ("", "", f"web server http://{world.web_address}/ (answers with the caller's address)"),
            ("", "", f"tunnel DNS {world.tunnel_dns}"),
        ]
        for server in world.servers:
            name = (
                server.city
                if self.provider == "pia"
                else country_record(server.country_code)["name"]
            )
            rows.append(
                (
                    "",
                    server.netns,
                    f"VPN server {server.hostname} ({server.city}, {name}) at {server.station}",
                )
            )
        for variable, namespace, role in rows:
            out.output(f"  {variable:8} {namespace:20} {role}")
        if isinstance(world, PiaWorld):
            for region in world.region_specs:
                names = ", ".join(cn for cn, _ in region.servers)
                forwarding = "port forwarding" if region.port_forward else "no port forwarding"
                state = ", offline" if region.offline else ""
                out.output(f"  region {region.id:14} {region.name} ({forwarding}{state}): {names}")
            out.say(
                "The fake PIA accepts only the login the world made; its region list is signed\n"
                "with a test key, which the daemon's config names (PIA's real key is the default)."
            )
            return
        out.say(
            f"The fake API accepts only the access token the world made ({world.token_file},\n"
            "mode 0600); the daemon's config points at it, at the API addresses and at the test CA."
        )

    def show_direct_traffic(self) -> None:
        assert self.world is not None
        self.out.step("Without a VPN, the web server sees the host's own address")
        result = self.shell.run(self.host("curl", "-sS", f"http://{self.world.web_address}/"))
        self.check(
            result.text.strip() == self.world.host_address,
            f"the web server saw {self.world.host_address}, the host's LAN address",
            f"the web server saw {result.text.strip()!r}, not {self.world.host_address}",
        )

    def start_bus(self) -> None:
        self.out.step("Start a private system bus")
        self.out.say(
            "A dbus-daemon of type 'system' just for this demo (nordwgd's bus policy"
            " and polkit apply as on a real system bus)."
        )
        self.out.command(
            "dbus-daemon --config-file=$DEMO/bus/bus.conf --nofork --nopidfile --print-address=1 &"
        )
        self.bus = start_bus(self.directory / "bus", own_session=True)
        self.shell.define("BUS", self.bus.address)
        self.out.ok(f"listening: BUS={self.bus.address}")

    def start_daemon(self) -> None:
        assert self.world is not None and self.bus is not None
        out = self.out
        out.step("Start the real daemon in the host namespace")
        extra: dict[str, Any] = {}
        if self.provider == "pia":
            extra["port_forward"] = {"enabled": True}
        # A slice name of this run: its cgroup is global to the machine.
        excluded = f"nwgdemo{self.world.id}-excluded.slice"
        extra["split"] = {"excluded_slice": excluded}
        config = self.world.write_config(self.directory / "nordwgd.toml", log_level="info", **extra)
        hierarchy = cgroups.detect()
        if hierarchy is not None:
            self.excluded_cgroup = hierarchy.mount / cgroups.slice_path(excluded)
            self.shell.define("EXCLUDED", str(self.excluded_cgroup))
        self.shell.run(["cat", "$DEMO/nordwgd.toml"])
        # nsenter rather than ip netns exec: the daemon keeps the machine's /sys and so sees
        # the cgroup hierarchy it matches excluded apps in.
        argv = [
            "nsenter",
            "--net=/run/netns/$HOST",
            self.python,
            "-m",
            "nordwgd",
            "--config",
            "$DEMO/nordwgd.toml",
        ]
        shown = self.shell.show(argv)
        out.command(f"DBUS_SYSTEM_BUS_ADDRESS=$BUS {shown} >$DEMO/nordwgd.log 2>&1 &")
        env = dict(self.shell.env, DBUS_SYSTEM_BUS_ADDRESS=self.bus.address)
        real = [self.shell.expand(word) for word in argv]
        real[2] = sys.executable
        assert Path(self.shell.expand("$DEMO/nordwgd.toml")) == config
        with self.log_path.open("ab") as log:
            # Its own session: a Ctrl-C at the terminal must not stop it before the teardown.
            self.daemon = subprocess.Popen(
                real,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=_REPO_ROOT,
                start_new_session=True,
            )
        started = time.monotonic()
        while not self.bus.name_has_owner(BUS_NAME):
            if self.daemon.poll() is not None:
                raise DemoFailed(f"nordwgd exited with status {self.daemon.returncode}")
            if time.monotonic() - started > DAEMON_START_TIMEOUT:
                raise DemoFailed(
                    f"nordwgd did not take {BUS_NAME} within {DAEMON_START_TIMEOUT:g} s"
                )
            time.sleep(0.05)
        out.ok(
            f"nordwgd (pid {self.daemon.pid}) owns {BUS_NAME} after "
            f"{time.monotonic() - started:.1f} s; its kill switch is in place"
        )
        self.shell.run(self.nordwgctl("status"))

    def login(self) -> None:
        world = self.world
        assert isinstance(world, PiaWorld)
        self.out.step("Log in to PIA")
        self.out.say(
            "nordwgctl login asks the daemon which provider it serves; for PIA it asks for the\n"
            "username and password (here read from a 0600 file, never from arguments):"
        )
        secret = self.directory / "pia-login"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(world.login_text())
        ctl = " ".join(self.ctl)
        self.shell.run(self.host("sh", "-c", f"{ctl} --bus $BUS login --stdin < $DEMO/pia-login"))
        state_dir = self.directory / "world" / "state"
        self.shell.run(["ls", "-l", str(state_dir)])

    def connect(self) -> None:
        assert self.world is not None
        self.out.step("Connect")
        if self.provider == "pia":
            self.out.say("The daemon fetched and verified PIA's signed region list:")
            self.shell.run(self.nordwgctl("countries"))
            country = self.country or "uk"
        else:
            self.out.say("The daemon fetched the server list from the fake API:")
            self.shell.run(self.nordwgctl("servers"))
            country = self.country or country_record(self.world.servers[0].country_code)["name"]
        self.out.say("nordwgctl follows the daemon's State signals until it is connected:")
        self.shell.run(
            self.nordwgctl("connect", country, "--timeout", str(CONNECT_TIMEOUT)),
            timeout=CONNECT_TIMEOUT + 10,
        )
        self.shell.run(self.nordwgctl("status"))
        self.out.say("What the daemon did, from its log (like wg-quick, it logs each change):")
        self.shell.run(
            ["grep", "-E", r"state: |\[#\]|policy applied|attempt", "$DEMO/nordwgd.log"],
            expect=None,
        )
        state = self.status().get("State")
        self.check(state == "connected", "connected", f"the daemon is {state}, not connected")
        if state != "connected":
            raise DemoFailed("the connection did not come up")

    def connected_server(self) -> tuple[str, str]:
        """The hostname and station address of the server the daemon is connected to."""
        assert self.world is not None
        server = self.status().get("Server") or {}
        hostname = str(server.get("hostname", "")) if isinstance(server, dict) else ""
        try:
            return hostname, self.world.server(hostname).station
        except KeyError:
            raise DemoFailed(f"the daemon reports an unknown server {hostname!r}") from None

    def show_tunnel_traffic(self) -> None:
        assert self.world is not None
        self.out.step("Traffic now leaves through the VPN server")
        hostname, station = self.connected_server()
        result = self.shell.run(self.host("curl", "-sS", f"http://{self.world.web_address}/"))
        seen = result.text.strip()
        self.check(
            seen == station,
            f"the web server saw {station}, the address of {hostname}, "
            f"not the host's {self.world.host_address}",
            f"the web server saw {seen!r}, not {station} ({hostname})",
        )
        self.shell.run(self.host("ip", "route", "get", self.world.web_address))
        self.shell.run(self.host("ip", "rule"))

    def show_tunnel_dns(self) -> None:
        world = self.world
        assert world is not None
        self.out.step("DNS goes to the tunnel's resolver, through the tunnel")
        self.out.say(
            "ip netns exec shows the host namespace its own /etc/resolv.conf, "
            "/etc/netns/$HOST/resolv.conf, which nordwgd manages:"
        )
        self.shell.run(self.host("cat", "/etc/resolv.conf"))
        before = len(world.dns_queries())
        result = self.shell.run(self.host("dig", "+short", "+time=3", "+tries=1", "web.test"))
        _, station = self.connected_server()
        asked = [q for q in world.dns_queries()[before:] if q.name == "web.test"]
        via_tunnel = [q for q in asked if q.server == world.tunnel_dns and q.client == station]
        self.check(
            result.text.strip() == world.web_address
            and bool(via_tunnel)
            and len(asked) == len(via_tunnel),
            f"the resolver {world.tunnel_dns} got the query from {station} (the VPN server), "
            f"not from the host's {world.host_address}",
            "the query did not go to the tunnel DNS through the tunnel: "
            + ", ".join(f"{q.server} from {q.client}" for q in asked),
        )

    def show_forwarded_port(self) -> None:
        world = self.world
        assert world is not None
        self.out.step("A connection from the Internet arrives through the forwarded port")
        self.out.say(
            "From inside the tunnel the daemon asked the server for a port (getSignature) and\n"
            "binds it every 15 minutes (bindPort); it publishes it as ForwardedPort, in a file\n"
            "and to an optional hook. The firewall lets it in from the tunnel only."
        )
        port = 0
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while not port and time.monotonic() < deadline:
            port = int(self.status().get("ForwardedPort") or 0)
            time.sleep(0.2)
        if not port:
            self.check(False, "", "no port was forwarded")
            return
        self.shell.run(self.nordwgctl("status"))
        self.shell.run(["cat", "$DEMO/world/run/forwarded-port"])
        hostname, station = self.connected_server()
        argv = self.host(self.python, "-m", "nordwgd.testing.webserver", f"--listen=0.0.0.0:{port}")
        self.out.command(self.shell.show(argv) + " &")
        real = [self.shell.expand(word) for word in argv]
        real[4] = sys.executable
        listener = subprocess.Popen(
            real,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.shell.env,
            cwd=_REPO_ROOT,
            text=True,
        )
        try:
            assert listener.stdout is not None
            listener.stdout.readline()  # "ready"
            self.out.say(f"From the router (the Internet side), to {hostname}'s public address:")
            result = self.shell.run(
                [
                    *("ip", "netns", "exec", "$ROUTER", "curl", "-sS", "--max-time", "5"),
                    f"http://{station}:{port}/",
                ]
            )
            seen = result.text.strip()
            self.check(
                seen == ROUTER_WAN,
                f"the listener in the host answered a caller from the Internet ({ROUTER_WAN}) "
                f"through {station}:{port}, the tunnel and the kill switch",
                f"the connection through the forwarded port got {seen!r}",
            )
        finally:
            listener.terminate()
            listener.wait(timeout=10)

    def show_blocked_leaks(self) -> None:
        world = self.world
        assert world is not None and world.leak_monitor is not None
        self.out.step("Leaks are blocked")
        self.out.say(
            "A leak monitor on the router's side of the host's uplink counts every packet that\n"
            "is not WireGuard to a VPN server or HTTPS to the API. It starts again from 0 now.\n"
            "First, DNS straight to the LAN resolver, bypassing the tunnel DNS:"
        )
        world.leak_monitor.reset()
        self.shell.run(
            self.host("dig", "+time=2", "+tries=1", f"@{world.lan_dns}", "web.test"), expect=False
        )
        self.out.say("Then a probe bound to the uplink, outside the tunnel:")
        self.shell.run(
            self.host(
                "curl",
                "-sS",
                "--max-time",
                "3",
                "--interface",
                world.uplink,
                f"http://{world.web_address}/",
            ),
            expect=False,
        )
        self.shell.run(
            [
                "ip",
                "netns",
                "exec",
                "$ROUTER",
                "nft",
                "list",
                "counter",
                "netdev",
                LEAK_TABLE,
                "leaked",
            ]
        )
        leaked = world.leak_monitor.count()
        self.check(
            leaked == 0,
            "0 packets leaked: both attempts died in the host's kill switch",
            f"{leaked} packets leaked: "
            + ", ".join(
                f"{x.packets} to {x.destination} {x.protocol}" for x in world.leak_monitor.leaks()
            ),
        )
        self.out.say("The kill switch is one nftables table that nordwgd replaces atomically:")
        self.shell.run(self.host("nft", "list", "tables"))

    def show_dbus_api(self) -> None:
        self.out.step("The D-Bus API")
        self.out.say(
            "Any D-Bus client can use it; busctl shows the interface (long values cut here)\n"
            "and reads properties:"
        )
        self.shell.run(
            ["busctl", "--address=$BUS", "introspect", BUS_NAME, OBJECT_PATH, INTERFACE],
            clip=100,
        )
        self.shell.run(
            [
                "busctl",
                "--address=$BUS",
                "get-property",
                BUS_NAME,
                OBJECT_PATH,
                INTERFACE,
                "State",
                "Blocking",
                "Interface",
            ]
        )

    def disconnect(self) -> None:
        assert self.world is not None
        self.out.step("Disconnect")
        self.shell.run(self.nordwgctl("disconnect"))
        self.shell.run(self.nordwgctl("status"))
        result = self.shell.run(self.host("curl", "-sS", f"http://{self.world.web_address}/"))
        self.check(
            result.text.strip() == self.world.host_address,
            "disconnected: traffic goes out directly again",
            f"after disconnecting the web server saw {result.text.strip()!r}",
        )

    def wait_for_ctrl_c(self) -> None:
        out = self.out
        out.step("Your turn")
        out.say(
            "The world and the daemon keep running. In another terminal, in a root shell "
            "(sudo -i), paste:"
        )
        exports = " ".join(
            f"{name}={shlex.quote(value)}" for name, value in self.shell.variables.items()
        )
        out.output(f"  export {exports} PATH={shlex.quote(self.shell.bin_dir)}:$PATH")
        other = (
            next(
                (country_record(s.country_code)["name"] for s in self.world.servers[1:]), "Germany"
            )
            if self.world
            else "Germany"
        )
        tries = [
            self.nordwgctl("status"),
            self.nordwgctl("monitor"),
            self.nordwgctl("servers"),
            self.nordwgctl("connect", other),
            self.nordwgctl("disconnect"),
            self.host("curl", "-sS", f"http://{self.world.web_address if self.world else ''}/"),
            self.host("nft", "list", "table", "inet", "nordwgd"),
            self.nordwgctl("exclude", "--list"),
            ["busctl", "--address=$BUS", "introspect", BUS_NAME, OBJECT_PATH],
            ["busctl", "--address=$BUS", "get-property", BUS_NAME, OBJECT_PATH, INTERFACE, "State"],
            ["busctl", "--address=$BUS", "--match=sender=" + BUS_NAME, "monitor"],
            ["tail", "-f", "$DEMO/nordwgd.log"],
        ]
        for argv in tries:
            out.output(f"  {self.shell.show(argv)}")
        out.line()
        out.title("Press Ctrl-C here to stop the daemon and remove the world.")
        try:
            while True:
                if self.daemon is not None and self.daemon.poll() is not None:
                    raise DemoFailed(f"nordwgd exited with status {self.daemon.returncode}")
                time.sleep(0.5)
        except Interrupted:
            # The way this step is meant to end, not a failure.
            out.line()

    # teardown

    def teardown(self, *, failed: bool) -> None:
        """Stop and remove everything this demo started or made; safe to call at any point."""
        out = self.out
        out.step("Tear down")
        if failed and self.log_path.exists():
            out.say("The daemon's last log lines:")
            for line in self.log_path.read_text(errors="replace").splitlines()[-25:]:
                out.output(f"  {line}")
        if self.daemon is not None:
            out.command(f"kill -TERM {self.daemon.pid}")
            code = _stop(self.daemon, DAEMON_STOP_TIMEOUT)
            self.check(code == 0, "nordwgd stopped", f"nordwgd ended with status {code}")
        for stage in (self._stop_bus, self._close_world, self._sweep):
            try:
                stage()
            except (OSError, RuntimeError, subprocess.SubprocessError) as error:
                out.bad(f"teardown: {error}")
        shutil.rmtree(self.directory, ignore_errors=True)
        left = self.leftovers()
        if left:
            out.bad("left behind: " + ", ".join(left))
            self.failures.append("leftovers")
        else:
            what = f"{len(self.namespaces)} network namespaces, " if self.namespaces else ""
            out.ok(f"removed {what}every process and {self.directory}; nothing is left behind")

    def _stop_bus(self) -> None:
        if self.bus is not None:
            self.bus.stop()

    def _close_world(self) -> None:
        if self.world is not None:
            self.world.close()

    def _sweep(self) -> None:
        """A second pass for what a failed or interrupted close left: namespaces, the
        processes in them, wireguard-go sockets and /etc/netns entries of this world."""
        if self.world is None:
            return
        cleanup_run(self.world.id)
        shutil.rmtree(Path("/etc/netns") / self.world.host_ns, ignore_errors=True)
        if self.excluded_cgroup is not None:
            # The slice cgroup a user may have made while trying split tunnelling (--keep);
            # its processes ended with the world's namespaces or are moved out first.
            children = []
            with contextlib.suppress(OSError):
                children = [p for p in self.excluded_cgroup.iterdir() if p.is_dir()]
            for directory in (*children, self.excluded_cgroup, self.excluded_cgroup.parent):
                with contextlib.suppress(OSError):
                    _empty_cgroup(directory)
                    directory.rmdir()

    def leftovers(self) -> list[str]:
        found: list[str] = []
        if self.namespaces:
            existing = set(list_netns())
            found += [f"netns {name}" for name in self.namespaces if name in existing]
        markers = [str(self.directory)]
        if self.world is not None:
            markers.append(f"{NETNS_PREFIX}-{self.world.id}")
            markers.append(self.world.interface)
        found += [f"process {pid}" for pid in _processes_mentioning(markers)]
        if self.directory.exists():
            found.append(str(self.directory))
        return found


def _stop(process: subprocess.Popen[bytes], timeout: float) -> int:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


def _processes_mentioning(markers: Sequence[str]) -> list[int]:
    """PIDs (other than this one) whose command line contains one of ``markers``."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(marker in cmdline for marker in markers):
            found.append(int(entry.name))
    return found


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into Interrupted while the tour runs."""

    def handler(signum: int, frame: FrameType | None) -> NoReturn:
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _uninterruptible() -> Iterator[None]:
    """Ignore further Ctrl-C while tearing down: a half-done teardown would leave things."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def missing_tools(tools: Sequence[str] = REQUIRED_TOOLS) -> list[str]:
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    return [tool for tool in tools if shutil.which(tool, path=path) is None]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/demo",
        description="A guided tour of nordwgd in a throw-away world of network namespaces "
        "(no NordVPN account needed; run as root).",
    )
    parser.add_argument(
        "--keep",
        "--shell",
        action="store_true",
        help="leave the world and the daemon running, print commands to try; Ctrl-C ends",
    )
    parser.add_argument(
        "--country",
        metavar="NAME",
        help="where to connect (default: the first fake server's country; PIA: uk)",
    )
    parser.add_argument(
        "--provider",
        choices=("nordvpn", "pia"),
        default="nordvpn",
        help="the VPN service to fake: NordVPN, or PIA with a forwarded port",
    )
    return parser.parse_args(argv)


def main(
    argv: Sequence[str] | None = None,
    *,
    stream: TextIO | None = None,
    color: bool | None = None,
) -> int:
    args = parse_args(argv)
    stream = stream or sys.stdout
    if color is None:
        color = stream.isatty() and not os.environ.get("NO_COLOR")
    out = Output(stream, color=color)
    if os.geteuid() != 0:
        print(
            "demo: needs root (it creates network namespaces); try: sudo scripts/demo",
            file=sys.stderr,
        )
        return EXIT_USAGE
    missing = missing_tools()
    if missing:
        print(
            f"demo: missing tools: {', '.join(missing)} (scripts/demo installs them)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    demo: Demo | None = None
    failed = True
    code = EXIT_FAILED
    try:
        with _interruptible():
            demo = Demo(out, keep=args.keep, country=args.country, provider=args.provider)
            demo.run()
        failed = bool(demo.failures)
        code = EXIT_FAILED if failed else EXIT_OK
    except Interrupted:
        out.line()
        out.say("Interrupted.")
        failed, code = False, EXIT_INTERRUPTED
    except DemoFailed as error:
        out.bad(str(error))
    except RuntimeError as error:  # the world reports its failures as RuntimeError
        out.bad(f"the world could not be built or used: {error}")
    finally:
        with _uninterruptible():
            if demo is not None:
                demo.teardown(failed=failed)
    if demo is not None and demo.failures and code == EXIT_OK:
        code = EXIT_FAILED
    if code == EXIT_OK:
        out.line()
        out.title("Done. Everything the demo made is gone again.")
    return code


if __name__ == "__main__":
    sys.exit(main())
