"""The test world with a fake Private Internet Access instead of (beside) the fake NordVPN API.

Same topology as ``World``; in addition:

    router ns  lo: 198.18.0.20, 198.18.0.21 (PIA meta servers :443: token, signed region list)
                   198.18.0.30 (PIA token service :443, www.privateinternetaccess.com)
    server ns  STATION:1337 addKey (adds the sent key as a WireGuard peer)
               10.5.0.1:19999 getSignature / bindPort, only through the tunnel; a bound port
               is DNATed from STATION:PORT to the peer that bound it

The servers know no peer until addKey. The default regions: "uk" (UK London, two servers,
port forwarding), "us_california" (one server, no port forwarding) and "swiss" (offline).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from nordwgd.testing import netns as ns
from nordwgd.testing.fakepia import PiaSetup, RegionSpec
from nordwgd.testing.fleet import ServerSpec
from nordwgd.testing.leakmonitor import LeakMonitor
from nordwgd.testing.world import ROUTER_WAN, World, default_specs
from nordwgd.wireguard.uapi import PeerConfig

META = (("london401", "198.18.0.20"), ("zurich401", "198.18.0.21"))
TOKEN_API_ADDRESS = "198.18.0.30"  # noqa: S105 - an address
TOKEN_API_HOST = "www.privateinternetaccess.com"  # noqa: S105 - a host name
GATEWAY = "10.5.0.1"
FIRST_PEER = "10.5.0.2"
USERNAME = "p1234567"

# (region id, name, country, port forwarding, offline, server names)
DEFAULT_REGIONS: tuple[tuple[str, str, str, bool, bool, tuple[str, ...]], ...] = (
    ("uk", "UK London", "GB", True, False, ("london410", "london411")),
    ("us_california", "US California", "US", False, False, ("losangeles401",)),
    ("swiss", "Switzerland", "CH", True, True, ("zurich405",)),
)


class PiaWorld(World):
    """A world whose VPN servers are PIA servers; ``setup`` steers the fake PIA."""

    def __init__(
        self,
        tmp_dir: Path,
        regions: Sequence[tuple[str, str, str, bool, bool, tuple[str, ...]]] = DEFAULT_REGIONS,
    ) -> None:
        names = [cn for region in regions for cn in region[5]]
        stations = default_specs(len(names))
        specs = [
            replace(spec, hostname=cn, country_code="GB", city="London")
            for cn, spec in zip(names, stations, strict=True)
        ]
        super().__init__(tmp_dir, specs=specs)
        station_of = {spec.hostname: spec.station for spec in specs}
        self.region_specs = tuple(
            RegionSpec(
                id=region_id,
                name=name,
                country=country,
                port_forward=forward,
                offline=offline,
                servers=tuple((cn, station_of[cn]) for cn in servers),
                meta=(META[0],) if region_id == regions[0][0] else (META[1],),
            )
            for region_id, name, country, forward, offline, servers in regions
        )
        self.username = USERNAME
        self.password = secrets.token_urlsafe(12)
        self.setup = PiaSetup(
            Path(tmp_dir) / "pia",
            self.region_specs,
            accounts={self.username: self.password},
            api_host=TOKEN_API_HOST,
        )

    @classmethod
    def build(  # type: ignore[override]
        cls,
        tmp_dir: Path,
        regions: Sequence[tuple[str, str, str, bool, bool, tuple[str, ...]]] = DEFAULT_REGIONS,
    ) -> PiaWorld:
        world = cls(tmp_dir, regions)
        try:
            world._build()
        except BaseException:
            world.close()
            raise
        return world

    def _static_peers(self) -> tuple[PeerConfig, ...]:
        return ()  # PIA servers learn each key from addKey

    def _build(self) -> None:
        Path(self.tmp_dir).mkdir(parents=True, exist_ok=True)
        self.setup.write()
        super()._build()
        for address in (*(address for _, address in META), TOKEN_API_ADDRESS):
            ns.ip(self.router_ns, "addr", "add", f"{address}/32", "dev", "lo")
        listen = [f"--listen={name}@{address}" for name, address in META]
        listen.append(f"--listen={TOKEN_API_HOST}@{TOKEN_API_ADDRESS}")
        self._start_ready(
            "fakepia-meta",
            "nordwgd.testing.fakepia",
            ["--setup", str(self.setup.directory), "meta", *listen],
        )
        for server in self.servers:
            self._start_pia_server(server.netns, server.hostname, server.station, server.interface)
        assert self.leak_monitor is not None
        self.leak_monitor = LeakMonitor(
            self.router_ns,
            self.uplink_router,
            stations=[server.station for server in self.servers],
            api_addresses=[*self.api_addresses, *self.pia_api_addresses],
            tcp_allowed=[(server.station, 1337) for server in self.servers],
        )
        self.leak_monitor.install()

    @property
    def pia_api_addresses(self) -> list[str]:
        return [*(address for _, address in META), TOKEN_API_ADDRESS]

    def _start_pia_server(self, netns: str, cn: str, station: str, interface: str) -> None:
        args = ["--setup", str(self.setup.directory), "server", "--cn", cn]
        args += ["--station", station, "--gateway", GATEWAY, "--interface", interface]
        args += ["--peers", FIRST_PEER, "--dns", self.tunnel_dns]
        log_path = self.tmp_dir / f"fakepia-{cn}.log"
        with log_path.open("ab") as log:
            process = ns.popen_python_module(
                netns, "nordwgd.testing.fakepia", *args, stderr=log.fileno()
            )
        self._processes.append(process)
        assert process.stdout is not None
        from nordwgd.testing.world import _wait_ready

        _wait_ready(process, process.stdout, f"fakepia {cn}", log_path)

    def fault(
        self, mode: str | None, *, count: int | None = None, paths: str | None = None
    ) -> None:
        """Switch a fake PIA error on (None switches all off)."""
        self.setup.set_fault(mode, count)

    def pia_requests(self) -> list[dict[str, Any]]:
        return self.setup.requests()

    def config_values(self, **overrides: Any) -> dict[str, Any]:
        values = super().config_values()
        values.pop("token_file", None)
        values["provider"] = "pia"
        values["dns"] = {"resolv_conf": values["dns"]["resolv_conf"]}
        values["pia"] = {
            "meta": [f"{name}@{address}" for name, address in META],
            "api_host": TOKEN_API_HOST,
            "api_addresses": [],
            "api_ca_file": str(self.setup.ca_cert),
            "ca_file": str(self.setup.ca_cert),
            "regions_key_file": str(self.setup.regions_key),
            "timeout": 5.0,
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
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

    def login_text(self) -> str:
        """What ``nordwgctl login`` is typed: the username, then the password."""
        return f"{self.username}\n{self.password}\n"


__all__ = ["GATEWAY", "META", "ROUTER_WAN", "PiaWorld", "ServerSpec"]
