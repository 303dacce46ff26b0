"""One WireGuard connection: interface, keys and peer, address, routes and DNS, up and down.

``up`` works in a fixed order, like wg-quick: create the link, set key and peer, add the address,
MTU and bring the link up, route everything through it, point DNS at the tunnel resolvers. Each
system change is written to the runtime journal before it is made (the address, MTU and link
state need no entry: they vanish with the link), so a process killed at any point leaves a record
from which ``recover`` in a new process undoes exactly what was done. A failing step undoes the
steps before it and raises the typed error of that step. ``down`` undoes everything in reverse
order. The firewall is not touched here.

In namespace mode (``network.mode = "namespace"``) the link is moved into its own network
namespace after the peer is set, and address, route and DNS are made there instead of on the
host (see ``nordwgd.netns_mode``); the host's routes, rules and DNS stay as they are.
``down(keep_namespace=True)`` (a reconnect) removes the link but leaves the namespace and its
resolv.conf, still recorded, and the next ``up`` moves the new link into that same namespace, so
programs that joined it keep it: with loopback alone in between, they reach nothing meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute, NetlinkError

from nordwgd import dns, netns_mode, routing
from nordwgd.config import Config
from nordwgd.errors import DnsFailed, NordwgdError, RoutingFailed, TunnelFailed
from nordwgd.model import TunnelParams
from nordwgd.runstate import Journal, Step
from nordwgd.wireguard import PeerStats, WireGuardBackend

log = logging.getLogger(__name__)

TUNNEL_MTU = 1420
HANDSHAKE_POLL_SECONDS = 0.05
# The handshake takes about one round trip to the server, and reading the peer's state costs
# well under a millisecond: look often during the first half second, then at the slower pace.
HANDSHAKE_FAST_POLL_SECONDS = 0.005
HANDSHAKE_FAST_PERIOD = 0.5

_T = TypeVar("_T")
_Keep = Callable[[Step], bool]


class Connection:
    """Brings one tunnel up and down; records every change under ``runtime_dir``."""

    def __init__(self, config: Config, backend: WireGuardBackend, runtime_dir: Path) -> None:
        self._config = config
        self._backend = backend
        self._runtime_dir = runtime_dir
        self._journal = Journal(runtime_dir)
        self._lock = asyncio.Lock()
        self._params: TunnelParams | None = None
        self._dns_mode: dns.DnsMode | None = None
        self._configured_at = 0.0
        self.interface: str | None = None
        self.ifindex: int | None = None
        self.is_up = False

    async def recover(self, *, keep_namespace: bool = False) -> None:
        """Undo what an earlier (killed or stopped) process recorded, then delete the record.

        With ``keep_namespace`` (namespace mode) the namespace it made and its resolv.conf
        stay, still recorded, for the next tunnel: services that joined the namespace keep it
        across a restart of the daemon. With an unreadable record, clean up by the names in
        the config instead: the interface, rules at our priorities, routes in our table, and a
        leftover resolv.conf backup.
        """
        async with self._lock:
            await self._recover_locked(keep_namespace=keep_namespace)

    async def up(self, params: TunnelParams) -> None:
        """Bring the tunnel up; on failure undo the steps done and raise the step's error."""
        async with self._lock:
            if self.is_up:
                keep = await self._namespace_keeper(self._journal)
                await self._undo_all(self._journal, raise_errors=True, keep=keep)
                self._reset()
            await self._recover_locked(keep_namespace=True)
            # A namespace kept from the previous tunnel outlives this attempt's failure too.
            kept = await self._namespace_keeper(self._journal)
            try:
                await self._up(params)
            except BaseException as exc:
                log.warning(
                    "bringing up %s failed (%s); undoing the steps done",
                    self._config.network.interface,
                    exc,
                )
                await asyncio.shield(self._undo_all(self._journal, raise_errors=False, keep=kept))
                self._reset()
                raise

    async def down(self, *, keep_namespace: bool = False) -> None:
        """Undo every recorded change in reverse order; a second call does nothing.

        With ``keep_namespace`` (namespace mode, a reconnect) the namespace this process made
        and its resolv.conf stay, recorded, for the next ``up``; everything else goes.
        """
        async with self._lock:
            keep = await self._namespace_keeper(self._journal) if keep_namespace else None
            try:
                await self._undo_all(self._journal, raise_errors=True, keep=keep)
            finally:
                if all(keep is not None and keep(step) for step in self._journal.steps):
                    self._reset()

    async def wait_handshake(self, timeout: float) -> bool:  # noqa: ASYNC109 (pinned API)
        """True once a handshake newer than the peer's configuration came and data arrived."""
        if self.interface is None:
            return False
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout
        # Handshake times may be reported in whole seconds.
        since = math.floor(self._configured_at)
        while True:
            stats = await self._backend.stats(self.interface)
            if stats.latest_handshake >= since and stats.latest_handshake > 0 and stats.rx_bytes:
                return True
            now = loop.time()
            if now >= deadline:
                return False
            fast = now - started < HANDSHAKE_FAST_PERIOD
            pause = HANDSHAKE_FAST_POLL_SECONDS if fast else HANDSHAKE_POLL_SECONDS
            await asyncio.sleep(min(pause, deadline - now))

    async def statistics(self) -> PeerStats:
        """Handshake time and byte counters of the peer; TunnelFailed when not up."""
        if self.interface is None:
            raise TunnelFailed("no tunnel interface: not connected")
        return await self._backend.stats(self.interface)

    # -- bring-up steps, in order ---------------------------------------------------------

    async def _up(self, params: TunnelParams) -> None:
        network = self._config.network
        ifname = network.interface
        self._configured_at = time.time()
        in_namespace = network.mode == "namespace"
        if in_namespace and self._holds(netns_mode.NAMESPACE_STEP):
            log.info("reusing the namespace %s of the previous tunnel", network.namespace)
        elif in_namespace:
            await self._step(
                TunnelFailed,
                f"cannot make the namespace {network.namespace}",
                netns_mode.create(self._journal, network.namespace),
            )
        ifindex = await self._create_link(ifname)
        await self._configure_peer(ifname, params)
        if in_namespace:
            await self._step(
                TunnelFailed,
                f"cannot move {ifname} into {network.namespace}",
                netns_mode.adopt_link(
                    self._journal, network.namespace, ifname, params, mtu=TUNNEL_MTU
                ),
            )
            await self._apply_dns(params)
            self._params = params
            self.is_up = True
            log.info(
                "tunnel %s is up to %s in namespace %s", ifname, params.endpoint, network.namespace
            )
            return
        log.info(
            "[#] ip address add %s dev %s; ip link set %s mtu %d up",
            params.address,
            ifname,
            ifname,
            TUNNEL_MTU,
        )
        await self._step(
            TunnelFailed,
            f"cannot set the address of {ifname}",
            asyncio.to_thread(_configure_link, ifindex, params),
        )
        ipv6 = network.ipv6 == "tunnel" and any(n.version == 6 for n in params.allowed_ips)
        await self._step(
            RoutingFailed,
            f"cannot route through {ifname}",
            routing.apply(self._journal, network, ifname, ipv6=ipv6),
        )
        await self._apply_dns(params)
        self._params = params
        self.is_up = True
        log.info("tunnel %s is up to %s", ifname, params.endpoint)

    async def _create_link(self, ifname: str) -> int:
        """Create the WireGuard link, refusing a name that is taken, and record it once made.

        The record comes after the link: undoing a step that never happened would remove
        whatever else carries the name (another wireguard-go, another program's link).
        """
        if await self._backend.exists(ifname):
            raise TunnelFailed(
                f"network.interface: an interface named {ifname} exists already and nordwgd "
                "did not create it; nordwgd leaves it alone: choose another name in the config"
            )
        log.info("[#] create WireGuard interface %s (%s)", ifname, self._backend.kind)
        ifindex = await self._step(
            TunnelFailed, f"cannot create {ifname}", self._backend.create(ifname)
        )
        step = {"step": "link", "ifname": ifname, "backend": self._backend.kind, "ifindex": ifindex}
        try:
            await self._record(step)
        except BaseException:
            await asyncio.shield(self._backend.destroy(ifname))
            raise
        self.interface = ifname
        self.ifindex = ifindex
        return ifindex

    async def _configure_peer(self, ifname: str, params: TunnelParams) -> None:
        log.info(
            "[#] wg set %s private-key <redacted> fwmark %#x peer %s endpoint %s",
            ifname,
            self._config.network.fwmark,
            params.peer_public_key,
            params.endpoint,
        )
        await self._step(
            TunnelFailed,
            f"cannot configure the peer of {ifname}",
            self._backend.configure(ifname, params, self._config.network.fwmark),
        )

    async def _apply_dns(self, params: TunnelParams) -> None:
        assert self.interface is not None and self.ifindex is not None
        if not params.dns:
            return
        if self._config.network.mode == "namespace":
            namespace = self._config.network.namespace
            if self._holds(netns_mode.DNS_STEP):
                # Kept from the previous tunnel, whose record already says how to restore it.
                action = netns_mode.rewrite_dns(namespace, params.dns)
            else:
                action = netns_mode.write_dns(self._journal, namespace, params.dns)
            await self._step(DnsFailed, f"cannot set the DNS of namespace {namespace}", action)
            return
        if self._dns_mode is None:
            self._dns_mode = await dns.detect_mode()
        await self._step(
            DnsFailed,
            "cannot set the tunnel DNS",
            dns.apply(
                self._journal,
                mode=self._dns_mode,
                ifindex=self.ifindex,
                ifname=self.interface,
                servers=params.dns,
                resolv_conf=self._config.dns.resolv_conf,
            ),
        )

    async def _step(self, error: type[NordwgdError], context: str, action: Awaitable[_T]) -> _T:
        """Run one step; a failure becomes ``error`` with ``context`` (typed ones keep theirs)."""
        try:
            return await action
        except (TunnelFailed, RoutingFailed, DnsFailed) as exc:
            raise type(exc)(f"{context}: {exc.message}") from exc
        except (OSError, NetlinkError, ValueError) as exc:
            raise error(f"{context}: {exc}") from exc

    # -- undo -----------------------------------------------------------------------------

    async def _recover_locked(self, *, keep_namespace: bool = False) -> None:
        journal = await asyncio.to_thread(Journal.load, self._runtime_dir)
        if journal.unknown:
            await self._cleanup_by_name()
        keep = await self._namespace_keeper(journal) if keep_namespace else None
        left = [step for step in journal.steps if keep is None or not keep(step)]
        if left:
            log.info("undoing %d change(s) left by an earlier tunnel", len(left))
        await self._undo_all(journal, raise_errors=True, keep=keep)
        if not journal.steps:
            await asyncio.to_thread(journal.clear)
        self._journal = journal

    async def _namespace_keeper(self, journal: Journal) -> _Keep | None:
        """In namespace mode, which recorded steps keep the namespace (made by us, still there)."""
        network = self._config.network
        name = network.namespace
        if network.mode != "namespace" or not any(
            step["step"] == netns_mode.NAMESPACE_STEP and step.get("name") == name
            for step in journal.steps
        ):
            return None
        if not await asyncio.to_thread(netns_mode.exists, name):
            return None
        resolv_conf = str(netns_mode.resolv_conf_path(name))

        def keep(step: Step) -> bool:
            kind = step["step"]
            if kind == netns_mode.NAMESPACE_STEP:
                return bool(step.get("name") == name)
            return kind == netns_mode.DNS_STEP and step.get("path") == resolv_conf

        return keep

    def _holds(self, kind: str) -> bool:
        return any(step["step"] == kind for step in self._journal.steps)

    async def _cleanup_by_name(self) -> None:
        network = self._config.network
        await dns.cleanup_by_name(self._runtime_dir)
        await routing.cleanup_by_name(network)
        if await self._backend.exists(network.interface):
            log.info("[#] remove leftover interface %s", network.interface)
            await self._backend.destroy(network.interface)
        if network.mode == "namespace":
            await netns_mode.cleanup_by_name(network.namespace)

    async def _undo_all(
        self, journal: Journal, *, raise_errors: bool, keep: _Keep | None = None
    ) -> None:
        """Undo steps newest first, but those ``keep`` names; failures stay recorded."""
        first_error: NordwgdError | None = None
        for step in reversed(list(journal.steps)):
            if keep is not None and keep(step):
                continue
            try:
                await self._undo_step(journal, step)
            except NordwgdError as exc:
                log.error("cannot undo %s: %s", step["step"], exc)
                first_error = first_error or exc
        if first_error is not None and raise_errors:
            raise first_error

    async def _undo_step(self, journal: Journal, step: Step) -> None:
        kind = step["step"]
        if kind == "link" and not await asyncio.to_thread(_still_ours, step):
            log.warning(
                "interface %s is not the one nordwgd made (its index changed): left alone",
                step["ifname"],
            )
        elif kind == "link":
            log.info("[#] remove interface %s", step["ifname"])
            backend = await self._backend_for(step["backend"])
            try:
                await backend.destroy(step["ifname"])
            except OSError as exc:
                raise TunnelFailed(f"cannot remove {step['ifname']}: {exc}") from exc
        elif kind in routing.ROUTING_STEPS:
            await routing.undo(step)
        elif kind == "dns":
            await dns.undo(step)
        elif kind in netns_mode.NETNS_STEPS:
            await netns_mode.undo(step)
        else:
            log.warning("ignoring an unknown recorded step %r", kind)
        await asyncio.to_thread(journal.forget, step)

    async def _backend_for(self, kind: str) -> WireGuardBackend:
        if kind == self._backend.kind:
            return self._backend
        # Recorded by a process that used the other backend (the config changed since).
        from nordwgd.wireguard import open_backend

        if kind not in ("kernel", "userspace"):
            raise TunnelFailed(f"the record names an unknown WireGuard backend {kind!r}")
        # Opening the kernel backend probes netlink: not on the event loop.
        return await asyncio.to_thread(open_backend, "kernel" if kind == "kernel" else "userspace")

    async def _record(self, step: Step) -> None:
        await asyncio.to_thread(self._journal.record, step)

    def _reset(self) -> None:
        self.is_up = False
        self.interface = None
        self.ifindex = None
        self._params = None
        self._dns_mode = None


def _still_ours(step: Step) -> bool:
    """Whether the recorded link may be removed: a link of that name in this namespace with
    another index was made by someone else after ours went away (records without an index,
    from older versions, are trusted as before)."""
    recorded = step.get("ifindex")
    if not isinstance(recorded, int):
        return True
    try:
        current = socket.if_nametoindex(step["ifname"])
    except OSError:
        return True  # not here (gone, or moved into the tunnel's namespace): the backend decides
    return current == recorded


def _configure_link(ifindex: int, params: TunnelParams) -> None:
    with IPRoute() as ipr:
        address = params.address
        ipr.addr("add", index=ifindex, address=str(address.ip), prefixlen=address.network.prefixlen)
        ipr.link("set", index=ifindex, mtu=TUNNEL_MTU, state="up")
