"""The namespaced test world shared by tests, benchmarks and the demo (DESIGN.md section 4).

Topology (every namespace and global name carries this run's id):

    host ns                router ns                               server ns (one per server)
    eth0 192.168.X.2/24 -- lan-host 192.168.X.1/24 (LAN resolver :53)
                           lo: 198.18.0.10, 198.18.0.11 (fake API :443)
                               198.51.100.80 (web :80), 198.51.100.53 (tunnel DNS :53)
                           srvN 203.0.113.1 peer STATION ------------ eth0 STATION peer 203.0.113.1
                                                                   wg 10.5.0.1/16, UDP 51820, NAT

The router forwards without NAT, so the web server sees the host's LAN address for traffic
outside the tunnel; each server masquerades tunnel traffic, so through a tunnel the web server
sees that server's station address. A leak monitor counts what the host sends to the router
that is not WireGuard to a station, HTTPS to the API, or link housekeeping.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Network, ip_network
from itertools import count
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from nordwgd.model import Secret
from nordwgd.testing import netns as ns
from nordwgd.testing.dnsserver import read_log
from nordwgd.testing.fleet import Fleet, ServerSpec, default_fleet, generate_keypair
from nordwgd.testing.leakmonitor import LeakMonitor
from nordwgd.testing.pki import Pki, make_pki
from nordwgd.wireguard.uapi import DeviceConfig, PeerConfig, exchange_sync, render_set, socket_path

API_ADDRESSES = ("198.18.0.10", "198.18.0.11")
API_HOST = "api.nordvpn.com"
WEB_ADDRESS = "198.51.100.80"
TUNNEL_DNS = "198.51.100.53"
ROUTER_WAN = "203.0.113.1"
CLIENT_TUNNEL_ADDRESS = "10.5.0.2"
SERVER_TUNNEL_ADDRESS = "10.5.0.1/16"
UPLINK = "eth0"
UPLINK_ROUTER = "lan-host"
_READY_TIMEOUT = 20.0
# The fake VPN servers' WireGuard: wireguard-go everywhere, or the kernel's where it has one.
ServerBackend = Literal["userspace", "kernel"]
_worlds = count()


@dataclass(frozen=True)
class WorldServer:
    """One fake VPN server of the world."""

    hostname: str
    station: str
    public_key: str
    country_code: str
    city: str
    netns: str
    interface: str
    spec: ServerSpec


@dataclass(frozen=True)
class DnsQuery:
    server: str  # the resolver address that was asked
    client: str  # the source address the resolver saw
    proto: str
    name: str
    type: int


def default_specs(n: int) -> list[ServerSpec]:
    """``n`` usable servers from the default fleet (varied countries, cities and groups)."""
    usable = [
        spec
        for spec in default_fleet().servers
        if spec.public_key and spec.status == "online" and spec.wireguard_status == "online"
    ]
    if n > len(usable):
        raise ValueError(f"at most {len(usable)} default servers, {n} asked")
    # Spread over countries first so a small world still offers several locations.
    by_country: dict[str, list[ServerSpec]] = {}
    for spec in usable:
        by_country.setdefault(spec.country_code, []).append(spec)
    ordered: list[ServerSpec] = []
    while len(ordered) < n:
        for group in by_country.values():
            if group and len(ordered) < n:
                ordered.append(group.pop(0))
    return ordered


class World:
    """Build with ``World.build(tmp_dir)`` or ``with World(tmp_dir) as world``; always close()."""

    def __init__(
        self,
        tmp_dir: Path,
        n_servers: int = 3,
        specs: Sequence[ServerSpec] | None = None,
        server_backend: ServerBackend = "userspace",
    ) -> None:
        self.id = f"{ns.RUN_ID}{next(_worlds) % 1296:02x}"
        self.tmp_dir = Path(tmp_dir)
        self.specs = list(specs) if specs is not None else default_specs(n_servers)
        self.server_backend = server_backend
        if len(self.specs) > 36:
            raise ValueError("a world has at most 36 servers")
        self.host_ns = f"{ns.NETNS_PREFIX}-{self.id}-host"
        self.router_ns = f"{ns.NETNS_PREFIX}-{self.id}-rtr"
        self.interface = f"wc{self.id}"  # for the daemon's tunnel
        lan_octet = 16 + secrets.randbelow(230)
        self.lan_network = IPv4Network(f"192.168.{lan_octet}.0/24")
        self.router_lan = f"192.168.{lan_octet}.1"
        self.host_address = f"192.168.{lan_octet}.2"
        self.lan_dns = self.router_lan
        self.api_addresses = API_ADDRESSES
        self.api_host = API_HOST
        self.web_address = WEB_ADDRESS
        self.tunnel_dns = TUNNEL_DNS
        self.uplink = UPLINK
        self.uplink_router = UPLINK_ROUTER
        self.client_private_key, self.client_public_key = (Secret(""), "")
        self.token = Secret("")
        self.servers: list[WorldServer] = []
        self.fleet: Fleet | None = None
        self.pki: Pki | None = None
        self.leak_monitor: LeakMonitor | None = None
        self._socket_dir = Path(tempfile.mkdtemp(prefix=f"nwgt-{self.id}-"))
        self.control_path = self._socket_dir / "api.sock"
        self.dns_log = self.tmp_dir / "dns.log"
        self.token_file = self.tmp_dir / "token"
        self._namespaces: list[str] = []
        self._processes: list[subprocess.Popen[Any]] = []
        self._wg_interfaces: list[str] = []
        self._closed = False

    @classmethod
    def build(
        cls,
        tmp_dir: Path,
        n_servers: int = 3,
        specs: Sequence[ServerSpec] | None = None,
        server_backend: ServerBackend = "userspace",
    ) -> World:
        world = cls(tmp_dir, n_servers=n_servers, specs=specs, server_backend=server_backend)
        try:
            world._build()
        except BaseException:
            world.close()
            raise
        return world

    def __enter__(self) -> World:
        if not self._namespaces:
            try:
                self._build()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- building ---------------------------------------------------------------------------

    def _build(self) -> None:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        private, public = generate_keypair()
        self.client_private_key, self.client_public_key = Secret(private), public
        self.token = Secret(secrets.token_hex(32))
        _write_private(self.token_file, self.token.reveal() + "\n")
        self._build_router_and_host()
        for index, spec in enumerate(self.specs):
            self.servers.append(self._build_server(index, spec))
        self.fleet = Fleet(
            servers=tuple(server.spec for server in self.servers),
            tokens={self.token.reveal(): private},
        )
        self.fleet.write(self.tmp_dir / "fleet.json")
        self.pki = make_pki(self.tmp_dir / "pki", host=API_HOST)
        self._start_services()
        self.leak_monitor = LeakMonitor(
            self.router_ns,
            UPLINK_ROUTER,
            stations=[server.station for server in self.servers],
            api_addresses=self.api_addresses,
        )
        self.leak_monitor.install()

    def _add_netns(self, name: str) -> None:
        self._namespaces.append(name)
        ns.create_netns(name)

    def _build_router_and_host(self) -> None:
        self._add_netns(self.router_ns)
        self._add_netns(self.host_ns)
        router, host = self.router_ns, self.host_ns
        ns.sysctl(router, "net.ipv4.ip_forward", "1")
        ns.veth(UPLINK_ROUTER, router, UPLINK, host)
        ns.ip(router, "addr", "add", f"{self.router_lan}/24", "dev", UPLINK_ROUTER)
        ns.ip(host, "addr", "add", f"{self.host_address}/24", "dev", UPLINK)
        ns.ip(host, "route", "add", "default", "via", self.router_lan)
        for address in (*self.api_addresses, self.web_address, self.tunnel_dns):
            ns.ip(router, "addr", "add", f"{address}/32", "dev", "lo")
        etc = Path("/etc/netns") / host
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {self.lan_dns}\n")

    def _build_server(self, index: int, spec: ServerSpec) -> WorldServer:
        name = f"{ns.NETNS_PREFIX}-{self.id}-s{index}"
        self._add_netns(name)
        router_side = f"srv{index}"
        ns.veth(router_side, self.router_ns, "eth0", name)
        ns.ip(self.router_ns, "addr", "add", ROUTER_WAN, "peer", spec.station, "dev", router_side)
        ns.ip(name, "addr", "add", spec.station, "peer", ROUTER_WAN, "dev", "eth0")
        ns.ip(name, "route", "add", "default", "via", ROUTER_WAN)
        ns.sysctl(name, "net.ipv4.ip_forward", "1")
        ns.nft(
            name,
            "table ip nwgt_nat {\n"
            "  chain postrouting { type nat hook postrouting priority 100;\n"
            '    ip saddr 10.5.0.0/16 oifname "eth0" masquerade; }\n'
            "}\n",
        )
        interface = f"ws{self.id}{_base36(index)}"
        private, public = generate_keypair()
        if self.server_backend == "kernel":
            self._start_kernel_wireguard(name, interface, Secret(private))
        else:
            self._start_wireguard(name, interface, Secret(private))
        ns.ip(name, "addr", "add", SERVER_TUNNEL_ADDRESS, "dev", interface)
        ns.ip(name, "link", "set", interface, "up")
        real_key = public if spec.public_key is not None else None
        spec = replace(spec, public_key=real_key)
        return WorldServer(
            hostname=spec.hostname,
            station=spec.station,
            public_key=public,
            country_code=spec.country_code,
            city=spec.city,
            netns=name,
            interface=interface,
            spec=spec,
        )

    def _start_wireguard(self, netns: str, interface: str, private_key: Secret) -> None:
        path = socket_path(interface)
        if path.exists():
            raise RuntimeError(f"{path} exists already")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        env["WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD"] = "1"
        log = (self.tmp_dir / f"{interface}.log").open("ab")
        self._wg_interfaces.append(interface)
        self._processes.append(
            subprocess.Popen(
                ns.exec_argv(netns, ["wireguard-go", "-f", interface]),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
        log.close()
        if not wait_listening(path, time.monotonic() + _READY_TIMEOUT):
            raise RuntimeError(f"wireguard-go for {interface} did not start")
        request = render_set(
            DeviceConfig(
                private_key=private_key,
                listen_port=51820,
                peers=self._static_peers(),
            )
        )
        reply = exchange_sync(path, request)
        if "errno=0" not in reply:
            raise RuntimeError(f"configuring {interface} failed: {reply.strip()}")

    def _static_peers(self) -> tuple[PeerConfig, ...]:
        """The peers every server knows from the start: the account's one NordLynx key."""
        return (
            PeerConfig(
                public_key=self.client_public_key,
                allowed_ips=(ip_network(f"{CLIENT_TUNNEL_ADDRESS}/32"),),
            ),
        )

    def _start_kernel_wireguard(self, netns: str, interface: str, private_key: Secret) -> None:
        ns.ip(netns, "link", "add", interface, "type", "wireguard")
        key_file = self.tmp_dir / f"{interface}.key"
        _write_private(key_file, private_key.reveal() + "\n")
        argv = ["wg", "set", interface, "listen-port", "51820", "private-key", str(key_file)]
        for peer in self._static_peers():
            allowed = ",".join(str(network) for network in peer.allowed_ips)
            argv += ["peer", peer.public_key, "allowed-ips", allowed]
        ns.ns_exec(netns, argv)

    def _start_services(self) -> None:
        assert self.pki is not None
        api_args = ["serve", "--fleet", str(self.tmp_dir / "fleet.json")]
        api_args += ["--pki-dir", str(self.tmp_dir / "pki"), "--control", str(self.control_path)]
        for address in self.api_addresses:
            api_args += ["--listen", f"{address}:443"]
        self._start_ready("fakeapi", "nordwgd.testing.fakeapi", api_args)
        self._start_ready("webserver", "nordwgd.testing.webserver", [f"--listen={WEB_ADDRESS}:80"])
        dns_args = ["--log", str(self.dns_log)]
        dns_args += ["--listen", f"{self.tunnel_dns}:53", "--listen", f"{self.lan_dns}:53"]
        dns_args += ["--record", f"web.test={self.web_address}"]
        dns_args += ["--record", f"{API_HOST}={self.api_addresses[0]}"]
        self._start_ready("dnsserver", "nordwgd.testing.dnsserver", dns_args)

    def _start_ready(self, label: str, module: str, args: list[str]) -> None:
        log_path = self.tmp_dir / f"{label}.log"
        with log_path.open("ab") as log:
            process = ns.popen_python_module(self.router_ns, module, *args, stderr=log.fileno())
        self._processes.append(process)
        assert process.stdout is not None
        _wait_ready(process, process.stdout, label, log_path)
        threading.Thread(target=_drain, args=(process.stdout, log_path), daemon=True).start()

    # --- helpers for tests --------------------------------------------------------------------

    def host_exec(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return ns.ns_exec(self.host_ns, argv, user=user, check=check, timeout=timeout, input=input)

    def host_popen(
        self, argv: Sequence[str], *, user: str | None = None, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start a process in the host namespace; the world stops it on close()."""
        process: subprocess.Popen[Any] = subprocess.Popen(
            ns.exec_argv(self.host_ns, argv, user=user), **kwargs
        )
        self._processes.append(process)
        return process

    def host_python(
        self, code: str, *args: str, input: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return ns.run_python(self.host_ns, code, *args, input=input, timeout=timeout)

    def router_exec(self, argv: Sequence[str], *, check: bool = True) -> str:
        return ns.ns_exec(self.router_ns, argv, check=check).stdout

    def http_get_from_host(
        self,
        url: str | None = None,
        *,
        via_interface: str | None = None,
        timeout: float = 5.0,
        user: str | None = None,
    ) -> str:
        """Fetch ``url`` (default: the web server) from the host namespace; returns the body,
        which for the web server is the source address it saw. RuntimeError when it fails."""
        argv = ["curl", "-sS", "--max-time", str(timeout)]
        if via_interface is not None:
            argv += ["--interface", via_interface]
        argv.append(url or f"http://{self.web_address}/")
        return self.host_exec(argv, user=user, timeout=timeout + 5).stdout.strip()

    def dns_queries(self) -> list[DnsQuery]:
        return [
            DnsQuery(entry["server"], entry["client"], entry["proto"], entry["name"], entry["type"])
            for entry in read_log(self.dns_log)
        ]

    def server(self, hostname: str) -> WorldServer:
        for server in self.servers:
            if server.hostname == hostname:
                return server
        raise KeyError(hostname)

    def silence_server(self, hostname: str) -> None:
        """Drop the server's WireGuard traffic in its namespace, as if it had died."""
        ns.nft(
            self.server(hostname).netns,
            "table inet nwgt_silence {\n"
            "  chain input { type filter hook input priority -10; udp dport 51820 drop; }\n"
            "  chain output { type filter hook output priority -10; udp sport 51820 drop; }\n"
            "}\n",
        )

    def unsilence_server(self, hostname: str) -> None:
        ns.nft(self.server(hostname).netns, "delete table inet nwgt_silence\n", check=False)

    def stop_forwarding(self, hostname: str) -> None:
        """The server keeps answering handshakes and keepalives but forwards nothing."""
        ns.nft(
            self.server(hostname).netns,
            "table inet nwgt_noforward {\n"
            "  chain forward { type filter hook forward priority -10; policy drop; }\n"
            "}\n",
        )

    def resume_forwarding(self, hostname: str) -> None:
        ns.nft(self.server(hostname).netns, "delete table inet nwgt_noforward\n", check=False)

    def blackhole_uplink(self) -> None:
        """Everything the host sends into its uplink, and everything to it, disappears."""
        ns.nft(
            self.router_ns,
            "table inet nwgt_blackhole {\n"
            "  chain pre { type filter hook prerouting priority -300;"
            f' iifname "{UPLINK_ROUTER}" drop; }}\n'
            "  chain post { type filter hook postrouting priority 300;"
            f' oifname "{UPLINK_ROUTER}" drop; }}\n'
            "}\n",
        )

    def restore_uplink(self) -> None:
        ns.nft(self.router_ns, "delete table inet nwgt_blackhole\n", check=False)

    def make_tunnels_lossy(
        self, loss: float = 0.05, delay: float = 0.05, jitter: float = 0.05
    ) -> None:
        """WireGuard to every server through a relay that drops ``loss`` of the datagrams
        and delays each by ``delay`` +- ``jitter`` seconds (``nordwgd.testing.lossy``)."""
        rules = []
        for index, server in enumerate(self.servers):
            port = 40000 + index
            self._start_ready(
                f"lossy-{index}",
                "nordwgd.testing.lossy",
                [
                    f"--listen={self.router_lan}:{port}",
                    f"--to={server.station}:51820",
                    f"--loss={loss}",
                    f"--delay={delay}",
                    f"--jitter={jitter}",
                ],
            )
            rules.append(
                f'    iifname "{UPLINK_ROUTER}" ip daddr {server.station} udp dport 51820'
                f" dnat to {self.router_lan}:{port}\n"
            )
        ns.nft(
            self.router_ns,
            "table ip nwgt_lossy {\n"
            "  chain pre { type nat hook prerouting priority -100;\n" + "".join(rules) + "  }\n}\n",
        )

    def fault(
        self, mode: str | None, *, count: int | None = None, paths: str | None = None
    ) -> None:
        """Switch a fault on the fake API (None switches faults off)."""
        self.api_control().set(mode, count=count, paths=paths)

    def api_control(self) -> Any:
        from nordwgd.testing.fakeapi import FaultControl

        return FaultControl(self.control_path)

    def api_requests(self) -> list[dict[str, Any]]:
        requests: list[dict[str, Any]] = self.api_control().requests()
        return requests

    def config_values(self, **overrides: Any) -> dict[str, Any]:
        """The nordwgd.toml content for a daemon in this world, as nested dicts.

        A keyword naming a section ("network", "api", ...) is merged into it (a value of None
        removes that key); other keywords set top-level keys.
        """
        assert self.pki is not None
        values: dict[str, Any] = {
            "token_file": str(self.token_file),
            "log_level": "debug",
            "location": {},
            "dns": {
                "servers": [self.tunnel_dns],
                # The file ip-netns-exec shows as /etc/resolv.conf: never the machine's own.
                "resolv_conf": str(Path("/etc/netns") / self.host_ns / "resolv.conf"),
            },
            "network": {
                "interface": self.interface,
                "backend": "auto",
                "lan": [str(self.lan_network)],
            },
            "health": {"urls": [f"http://{self.web_address}/health"]},
            "api": {
                "host": API_HOST,
                "addresses": list(self.api_addresses),
                "port": 443,
                "ca_file": str(self.pki.ca_cert),
                "timeout": 5.0,
            },
            "paths": {
                "state_dir": str(self.tmp_dir / "state"),
                "runtime_dir": str(self.tmp_dir / "run"),
            },
        }
        for key, value in overrides.items():
            if isinstance(value, Mapping) and isinstance(values.get(key), dict):
                for inner, inner_value in value.items():
                    if inner_value is None:
                        values[key].pop(inner, None)
                    else:
                        values[key][inner] = inner_value
            elif value is None:
                values.pop(key, None)
            else:
                values[key] = value
        return values

    def write_config(self, path: Path, **overrides: Any) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_toml(self.config_values(**overrides)))
        return path

    # --- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything this world started and remove everything it made; idempotent."""
        if self._closed:
            return
        self._closed = True
        for interface in self._wg_interfaces:
            with contextlib.suppress(FileNotFoundError):
                socket_path(interface).unlink()
        for process in reversed(self._processes):
            _stop(process)
        for name in self._namespaces:
            ns.kill_processes_in(name)
        for name in reversed(self._namespaces):
            ns.delete_netns(name)
        shutil.rmtree(Path("/etc/netns") / self.host_ns, ignore_errors=True)
        shutil.rmtree(self._socket_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            for leftover in Path("/var/run/wireguard").glob(f"*{self.id}*.sock"):
                leftover.unlink()


def wait_listening(path: Path, deadline: float) -> bool:
    """Whether the unix socket at ``path`` accepts a connection before ``deadline``.

    wireguard-go creates its socket file a moment before it listens on it: a file that exists
    is not yet a socket to talk to.
    """
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            else:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def cleanup_run() -> None:
    """Remove whatever worlds of this process left behind (namespaces, sockets, /etc/netns)."""
    ns.cleanup_run()
    with contextlib.suppress(FileNotFoundError):
        for directory in Path("/etc/netns").glob(f"{ns.NETNS_PREFIX}-{ns.RUN_ID}*"):
            shutil.rmtree(directory, ignore_errors=True)


def to_toml(values: Mapping[str, Any]) -> str:
    """Serialize flat tables of strings, numbers, booleans and lists (what nordwgd.toml uses)."""
    top = [f"{key} = {_toml_value(value)}" for key, value in values.items() if not _is_table(value)]
    lines = [*top]
    for key, value in values.items():
        if _is_table(value):
            lines += ["", f"[{key}]"]
            lines += [f"{inner} = {_toml_value(item)}" for inner, item in value.items()]
    return "\n".join(lines) + "\n"


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _base36(index: int) -> str:
    return "0123456789abcdefghijklmnopqrstuvwxyz"[index]


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    path.chmod(0o600)


def _wait_ready(process: subprocess.Popen[Any], stdout: IO[str], label: str, log: Path) -> None:
    selector = selectors.DefaultSelector()
    selector.register(stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + _READY_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if selector.select(timeout=0.1):
                line = stdout.readline()
                if line.strip() == "ready":
                    return
                if not line:
                    break
            if process.poll() is not None:
                break
    finally:
        selector.close()
    raise RuntimeError(f"{label} did not become ready; its log:\n{_tail(log)}")


def _drain(stream: IO[str], log: Path) -> None:
    with log.open("a") as out:
        for line in stream:
            out.write(line)


def _tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-20:])
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=5)
