"""The engine: the one narrow door through which the state machine changes the system.

The machine decides *what* should be true (a state, a server); the engine makes it true with the
firewall (``nordwgd.firewall``), the WireGuard backend and the ``Connection`` (link, routes, DNS).
Keeping this door narrow lets the machine's logic be tested with a recording double and the real
engine be tested inside network namespaces.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from ipaddress import ip_address
from typing import TYPE_CHECKING, Protocol

from nordwgd.config import Config
from nordwgd.errors import FirewallFailed, InvalidArgument, TunnelFailed
from nordwgd.firewall.apply import Firewall
from nordwgd.firewall.policy import FirewallPolicy, policy_for_state
from nordwgd.model import Endpoint, IPAddress, Pinholes, TunnelParams
from nordwgd.runstate import JOURNAL_NAME
from nordwgd.split.excluded import ExcludedApps
from nordwgd.split.rules import EXCLUDED_CT_MARK
from nordwgd.states import Blocking, State
from nordwgd.wireguard import PeerStats, open_backend

if TYPE_CHECKING:
    # Imported on first use: with pyroute2 behind it, the connection code is most of an idle
    # daemon's memory, and a disconnected daemon may never need it.
    from nordwgd.connection import Connection

log = logging.getLogger(__name__)


class Engine(Protocol):
    """What the state machine needs from the system."""

    @property
    def interface(self) -> str | None:
        """The tunnel interface while it exists."""

    @property
    def tunnel_is_up(self) -> bool: ...

    @property
    def probe_namespace(self) -> str | None:
        """The network namespace whose traffic takes the tunnel, when it is not this one:
        health probes must run there to test the tunnel."""

    async def apply_policy(
        self, state: State, endpoint: Endpoint | None, *, lockdown: bool, allow_lan: bool
    ) -> Blocking:
        """Replace the firewall ruleset by the one for ``state``; raises FirewallFailed."""

    async def block_all(self) -> Blocking:
        """The strictest policy there is, used when another policy could not be applied."""

    async def remove_policy(self) -> None:
        """Drop the firewall table (clean shutdown without blocking), and any tunnel left."""

    async def tunnel_up(self, params: TunnelParams) -> None: ...

    async def tunnel_down(self) -> None:
        """Remove the tunnel; in namespace mode the namespace stays unless the last policy
        applied was disconnecting or disconnected (only a disconnect or stop removes it)."""

    async def wait_handshake(self, timeout: float) -> bool: ...  # noqa: ASYNC109

    async def statistics(self) -> PeerStats: ...

    async def recover(self) -> None:
        """Undo what a killed process left behind (never the firewall)."""

    async def is_online(self) -> bool:
        """Whether the uplink has a route to the API at all (tells ``offline`` apart)."""


EngineFactory = Callable[[Config], Engine]


class SystemEngine:
    """The real engine: the kill-switch firewall, the WireGuard backend and the Connection."""

    def __init__(
        self,
        config: Config,
        *,
        pinholes: Callable[[], Pinholes] | None = None,
        forwarded_port: Callable[[], int] | None = None,
    ) -> None:
        self._config = config
        # A provider other than NordVPN names its own API servers (and ports) as it goes.
        self._pinholes = pinholes
        self._forwarded_port = forwarded_port
        self._firewall = Firewall("auto")
        self._connection: Connection | None = None
        self._dns: tuple[IPAddress, ...] = config.dns.servers
        self._tunnel_addresses: tuple[IPAddress, ...] = ()
        # Whether the last policy was that of a state wanting a tunnel (connecting, connected,
        # reconnecting, error): a tunnel taken down then is a reconnect, and in namespace mode
        # the namespace stays for the next tunnel, so programs that joined it keep it.
        self._tunnel_wanted = False
        self.excluded = ExcludedApps(config)

    async def _get_connection(self) -> Connection:
        if self._connection is None:
            network = self._config.network
            kind = network.backend
            if network.mode == "namespace" and kind == "auto":
                # The kernel backend reads its statistics in this namespace, which the link
                # leaves in namespace mode; wireguard-go's control socket stays reachable.
                kind = "userspace"
            backend = await asyncio.to_thread(open_backend, kind)
            from nordwgd.connection import Connection

            self._connection = Connection(self._config, backend, self._config.paths.runtime_dir)
        return self._connection

    @property
    def interface(self) -> str | None:
        return None if self._connection is None else self._connection.interface

    @property
    def tunnel_is_up(self) -> bool:
        return self._connection is not None and self._connection.is_up

    @property
    def probe_namespace(self) -> str | None:
        network = self._config.network
        return network.namespace if network.mode == "namespace" else None

    def policy(
        self, state: State, endpoint: Endpoint | None, *, lockdown: bool, allow_lan: bool
    ) -> FirewallPolicy:
        network = self._config.network
        if network.mode == "namespace" and not lockdown:
            # Only the namespace uses the tunnel, and it has no other way out: the host's own
            # traffic is left alone unless lockdown asks to block it (docs/security.md).
            return FirewallPolicy(state=state.value, block=False)
        port = self._forwarded_port() if self._forwarded_port is not None else 0
        forward_to = self._config.port_forward.forward_to
        try:
            return policy_for_state(
                state.value,
                lockdown=lockdown,
                allow_lan=allow_lan,
                lan=network.lan,
                endpoint=endpoint,
                api_addresses=() if self._pinholes else self._config.api.addresses,
                api_extra=self._pinholes() if self._pinholes else (),
                forwarded_port=port if state == State.CONNECTED else 0,
                forward_port_to=_host_port(forward_to) if network.mode == "gateway" else None,
                api_port=self._config.api.port,
                fwmark=network.fwmark,
                tunnel_interface=network.interface if state == State.CONNECTED else None,
                tunnel_dns=self._dns,
                ipv6_tunnel=network.ipv6 == "tunnel",
                forward_from=network.forward_from if network.mode == "gateway" else (),
                excluded_ct_mark=EXCLUDED_CT_MARK if self.excluded.enabled else 0,
                bridges=self._config.split.bridges,
                tunnel_addresses=self._tunnel_addresses,
            )
        except InvalidArgument as error:
            raise FirewallFailed(f"no policy for {state.value}: {error}") from error

    async def apply_policy(
        self, state: State, endpoint: Endpoint | None, *, lockdown: bool, allow_lan: bool
    ) -> Blocking:
        policy = self.policy(state, endpoint, lockdown=lockdown, allow_lan=allow_lan)
        self._tunnel_wanted = state not in (State.DISCONNECTING, State.DISCONNECTED)
        await self._firewall.apply(policy)
        log.info("firewall: %s policy applied (%s)", state.value, policy.blocking)
        await self.excluded.sync(connected=state == State.CONNECTED)
        return Blocking(policy.blocking)

    async def block_all(self) -> Blocking:
        return await self.apply_policy(State.ERROR, None, lockdown=True, allow_lan=False)

    async def remove_policy(self) -> None:
        # A clean stop: a namespace kept for a reconnect that will not come goes too.
        self._tunnel_wanted = False
        try:
            await self.tunnel_down()
        finally:
            await self.excluded.close()
            await self._firewall.remove()

    async def tunnel_up(self, params: TunnelParams) -> None:
        connection = await self._get_connection()
        self._dns = params.dns or self._config.dns.servers
        self._tunnel_addresses = (params.address.ip,)
        await connection.up(params)

    async def tunnel_down(self) -> None:
        if self._connection is not None:
            keep = self._tunnel_wanted and self._config.network.mode == "namespace"
            await self._connection.down(keep_namespace=keep)

    async def wait_handshake(self, timeout: float) -> bool:  # noqa: ASYNC109 (Connection's API)
        connection = await self._get_connection()
        return await connection.wait_handshake(timeout)

    async def statistics(self) -> PeerStats:
        if self._connection is None or not self._connection.is_up:
            return PeerStats(latest_handshake=0.0, rx_bytes=0, tx_bytes=0)
        return await self._connection.statistics()

    async def recover(self) -> None:
        journal = self._config.paths.runtime_dir / JOURNAL_NAME
        if self._connection is None and not await asyncio.to_thread(journal.exists):
            # Every change is recorded before it is made: without a record nothing is left.
            return
        try:
            connection = await self._get_connection()
        except TunnelFailed as error:
            # Without a backend there is no link to clean up; the firewall still goes up.
            log.warning("recover: no WireGuard backend: %s", error)
            return
        # In namespace mode the namespace outlives the process: services that joined it keep
        # it, and the next tunnel moves into it (a disconnect or a stop without a tunnel
        # wanted removes it, as it is still recorded).
        await connection.recover(keep_namespace=self._config.network.mode == "namespace")

    async def is_online(self) -> bool:
        if self._pinholes is not None:
            addresses = tuple(address for address, _ in self._pinholes())
        else:
            addresses = self._config.api.addresses
        return await asyncio.to_thread(_has_route, addresses)


def _host_port(text: str) -> tuple[IPAddress, int] | None:
    """``port_forward.forward_to`` ("ADDRESS:PORT", checked by the config) as a pair."""
    if not text:
        return None
    host, _, port = text.rpartition(":")
    return ip_address(host.strip("[]")), int(port)


def _has_route(addresses: tuple[IPAddress, ...]) -> bool:
    """Whether the kernel has a route to any of ``addresses`` (no route: we are offline)."""
    from pyroute2 import IPRoute, NetlinkError

    with IPRoute() as ipr:
        for address in addresses:
            try:
                if ipr.route("get", dst=str(address)):
                    return True
            except NetlinkError:
                continue
    return False


def system_engine(config: Config) -> Engine:
    return SystemEngine(config)
