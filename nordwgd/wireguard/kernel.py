"""The kernel WireGuard backend: a ``wireguard`` link configured over generic netlink (pyroute2).

pyroute2 is synchronous here; every call runs in a worker thread so the event loop never waits
on netlink.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pyroute2 import IPRoute, WireGuard
from pyroute2.netlink.exceptions import NetlinkError

from nordwgd.errors import TunnelFailed
from nordwgd.model import TunnelParams
from nordwgd.wireguard import PeerStats, check_ifname

log = logging.getLogger(__name__)


def kernel_wireguard_problem() -> str | None:
    """None when the kernel can create a WireGuard link, else why not.

    Probes by creating a link of kind wireguard under a random name and removing it at once.
    The probe runs in a worker thread: pyroute2's synchronous API refuses to run on a thread
    with a running event loop.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_probe).result()


def _probe() -> str | None:
    probe = f"wgprobe{secrets.token_hex(3)}"
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=probe, kind="wireguard")
            ipr.link("del", index=ipr.link_lookup(ifname=probe)[0])
    except NetlinkError as error:
        return f"creating a wireguard link failed: {error}"
    except OSError as error:
        return f"netlink is not usable: {error}"
    return None


def _attr(message: Any, name: str, default: Any = None) -> Any:
    value = message.get_attr(name)
    return default if value is None else value


class KernelBackend:
    kind = "kernel"

    async def create(self, ifname: str) -> int:
        check_ifname(ifname)
        return await asyncio.to_thread(self._create, ifname)

    def _create(self, ifname: str) -> int:
        try:
            with IPRoute() as ipr:
                if ipr.link_lookup(ifname=ifname):
                    raise TunnelFailed(f"an interface named {ifname} exists already")
                ipr.link("add", ifname=ifname, kind="wireguard")
                index: int = ipr.link_lookup(ifname=ifname)[0]
        except NetlinkError as error:
            raise TunnelFailed(f"cannot create WireGuard interface {ifname}: {error}") from None
        log.info("[#] ip link add %s type wireguard", ifname)
        return index

    async def configure(self, ifname: str, params: TunnelParams, fwmark: int) -> None:
        await asyncio.to_thread(self._configure, ifname, params, fwmark)

    def _configure(self, ifname: str, params: TunnelParams, fwmark: int) -> None:
        peer = {
            "public_key": params.peer_public_key,
            "endpoint_addr": str(params.endpoint.address),
            "endpoint_port": params.endpoint.port,
            "persistent_keepalive": params.keepalive,
            "allowed_ips": [str(network) for network in params.allowed_ips],
            "replace_allowed_ips": True,
        }
        try:
            with WireGuard() as wg:
                # Netlink has no "replace peers" flag in pyroute2's API: remove the others first.
                for old in self._peer_keys(wg, ifname):
                    if old != params.peer_public_key:
                        wg.set(ifname, peer={"public_key": old, "remove": True})
                wg.set(
                    ifname,
                    private_key=params.private_key.reveal(),
                    fwmark=fwmark,
                    peer=peer,
                )
        except (NetlinkError, ValueError) as error:
            raise TunnelFailed(f"cannot configure WireGuard interface {ifname}: {error}") from None
        log.info(
            "[#] wg set %s peer %s endpoint %s", ifname, params.peer_public_key, params.endpoint
        )

    @staticmethod
    def _peer_keys(wg: Any, ifname: str) -> list[str]:
        keys: list[str] = []
        for message in wg.info(ifname):
            for peer in _attr(message, "WGDEVICE_A_PEERS", []):
                key = peer.get_attr("WGPEER_A_PUBLIC_KEY")
                if key is not None:
                    keys.append(key.decode() if isinstance(key, bytes) else str(key))
        return keys

    async def stats(self, ifname: str) -> PeerStats:
        return await asyncio.to_thread(self._stats, ifname)

    def _stats(self, ifname: str) -> PeerStats:
        try:
            with WireGuard() as wg:
                for message in wg.info(ifname):
                    for peer in _attr(message, "WGDEVICE_A_PEERS", []):
                        handshake = _attr(peer, "WGPEER_A_LAST_HANDSHAKE_TIME", {})
                        seconds = float(handshake.get("tv_sec", 0))
                        nanos = float(handshake.get("tv_nsec", 0))
                        return PeerStats(
                            latest_handshake=seconds + nanos / 1e9 if seconds else 0.0,
                            rx_bytes=int(_attr(peer, "WGPEER_A_RX_BYTES", 0)),
                            tx_bytes=int(_attr(peer, "WGPEER_A_TX_BYTES", 0)),
                        )
        except NetlinkError as error:
            raise TunnelFailed(f"cannot read WireGuard interface {ifname}: {error}") from None
        return PeerStats(0.0, 0, 0)

    async def destroy(self, ifname: str) -> None:
        await asyncio.to_thread(self._destroy, ifname)

    def _destroy(self, ifname: str) -> None:
        try:
            with IPRoute() as ipr:
                indexes = ipr.link_lookup(ifname=ifname)
                if indexes:
                    ipr.link("del", index=indexes[0])
                    log.info("[#] ip link del %s", ifname)
        except NetlinkError as error:
            raise TunnelFailed(f"cannot remove WireGuard interface {ifname}: {error}") from None

    async def exists(self, ifname: str) -> bool:
        try:
            socket.if_nametoindex(ifname)
        except OSError:
            return False
        return True
