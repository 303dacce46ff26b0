"""Notice when the uplink changes: a default route, a link going up or down, an address.

A laptop that changes Wi-Fi, loses its cable or gets a new DHCP lease keeps a WireGuard tunnel
that may now be dead (the endpoint's NAT mapping is gone) or blocked (the kill switch's pinhole
is fine, but the handshake waits up to two minutes for a retry). The daemon therefore checks the
tunnel as soon as the uplink changes instead of waiting for the next periodic check.

The watcher listens to rtnetlink's link, address and route groups on a non-blocking socket
served by the event loop. It reports only what concerns the uplink:

- links (not loopback, not ignored) that come up or go down, or disappear while up;
- addresses (of such links, not link-local) that appear or disappear; lifetime refreshes of a
  known address (DHCP renewals, IPv6 router advertisements) are not changes;
- default routes of the main table added or removed (unless through an ignored link).

The daemon's own tunnel interface is ignored, and so are routes outside the main table (the
tunnel's policy routing lives in its own table), so bringing the tunnel up never reports
itself. Changes come in bursts (a link going down drops its addresses and routes too), so the
callback runs once, ``debounce`` seconds after the last change of a burst (at most
``max_delay`` after its first).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass
from ipaddress import ip_address

from nordwgd import rtnetlink

log = logging.getLogger(__name__)

GROUPS = (
    rtnetlink.RTMGRP_LINK
    | rtnetlink.RTMGRP_IPV4_IFADDR
    | rtnetlink.RTMGRP_IPV6_IFADDR
    | rtnetlink.RTMGRP_IPV4_ROUTE
    | rtnetlink.RTMGRP_IPV6_ROUTE
)
MAIN_TABLE = 254
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40
RECEIVE_BUFFER = 1 << 20  # a burst (many routes at once) must not overflow the socket
READ_SIZE = 1 << 16
# The kernel reports carrier changes through its link watcher, up to a second after the link
# was set up: a shorter quiet period would split one flap into two reports.
DEBOUNCE = 1.5


@dataclass
class _Link:
    name: str
    up: bool
    loopback: bool


def _is_link_local(address: str) -> bool:
    # Every link that comes up gets one a moment later (after duplicate address detection):
    # the link change itself is what counts.
    try:
        return ip_address(address).is_link_local
    except ValueError:
        return False


def _is_up(flags: int) -> bool:
    return bool(flags & IFF_UP) and bool(flags & IFF_RUNNING)


class UplinkWatcher:
    """``await start()``; ``on_change(reason)`` is called on the loop; ``await stop()``."""

    def __init__(
        self,
        on_change: Callable[[str], None],
        *,
        ignore: Collection[str] = (),
        debounce: float = DEBOUNCE,
        max_delay: float = 5.0,
    ) -> None:
        self._on_change = on_change
        self._ignore = frozenset(ignore)
        self._debounce = debounce
        self._max_delay = max_delay
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._links: dict[int, _Link] = {}
        self._addresses: set[tuple[int, int, str, int]] = set()
        self._reasons: list[str] = []
        self._burst_started = 0.0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        return self._socket is not None

    async def start(self) -> None:
        """Subscribe, then learn the current links and addresses (they are not changes)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE
        )
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((0, GROUPS))
            # Subscribed before the dump: a change in between is seen (possibly twice).
            await self._resync()
        except BaseException:
            sock.close()
            raise
        self._loop, self._socket = loop, sock
        loop.add_reader(sock.fileno(), self._readable)
        log.debug("watching the uplink (ignoring %s)", ", ".join(sorted(self._ignore)) or "none")

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sock, self._socket = self._socket, None
        if sock is not None and self._loop is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    async def _resync(self) -> None:
        links = await asyncio.to_thread(rtnetlink.dump, rtnetlink.RTM_GETLINK)
        addresses = await asyncio.to_thread(rtnetlink.dump, rtnetlink.RTM_GETADDR)
        self._links = {}
        self._addresses = set()
        for message in links:
            if isinstance(message, rtnetlink.Link):
                self._link_changed(message, report=False)
        for message in addresses:
            if isinstance(message, rtnetlink.Address):
                self._address_changed(message, report=False)

    # -- reading -----------------------------------------------------------------------------

    def _readable(self) -> None:
        sock = self._socket
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(READ_SIZE)
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno != errno.ENOBUFS:
                    log.warning("uplink watch: %s", error)
                    return
                # Events were lost: the caches may be wrong, so learn them again and assume
                # the uplink changed.
                log.debug("uplink watch: netlink overrun; resynchronising")
                assert self._loop is not None
                self._loop.create_task(self._after_overrun())
                continue
            try:
                messages = list(rtnetlink.parse(data))
            except (ValueError, OSError) as error:  # not worth dying for
                log.debug("uplink watch: unparsable netlink data: %s", error)
                continue
            for _, message in messages:
                self._dispatch(message)

    async def _after_overrun(self) -> None:
        try:
            await self._resync()
        except OSError as error:
            log.warning("uplink watch: could not resynchronise: %s", error)
        self._changed("netlink events lost")

    def _dispatch(self, message: rtnetlink.Message | None) -> None:
        if isinstance(message, rtnetlink.Link):
            self._link_changed(message, report=True)
        elif isinstance(message, rtnetlink.Address):
            self._address_changed(message, report=True)
        elif isinstance(message, rtnetlink.Route):
            self._route_changed(message)

    # -- filtering ---------------------------------------------------------------------------

    def _relevant_link(self, index: int | None) -> _Link | None:
        link = self._links.get(index) if index is not None else None
        if link is None or link.loopback or link.name in self._ignore:
            return None
        return link

    def _link_changed(self, message: rtnetlink.Link, *, report: bool) -> None:
        index = message.index
        flags = message.flags
        name = message.name or (self._links[index].name if index in self._links else str(index))
        before = self._links.pop(index, None)
        relevant = not (flags & IFF_LOOPBACK) and name not in self._ignore
        if not message.added:
            self._addresses = {key for key in self._addresses if key[0] != index}
            if report and relevant and before is not None and before.up:
                self._changed(f"{name} removed")
            return
        link = _Link(name=name, up=_is_up(flags), loopback=bool(flags & IFF_LOOPBACK))
        self._links[index] = link
        was_up = before.up if before is not None else False
        if report and relevant and link.up != was_up:
            self._changed(f"{name} {'up' if link.up else 'down'}")

    def _address_changed(self, message: rtnetlink.Address, *, report: bool) -> None:
        index = message.index
        address = message.address
        if address is None or _is_link_local(address):
            return
        key = (index, message.family, address, message.prefixlen)
        link = self._relevant_link(index)
        if not message.added:
            known = key in self._addresses
            self._addresses.discard(key)
            if report and link is not None and known:
                self._changed(f"{link.name}: address {address}/{key[3]} removed")
            return
        new = key not in self._addresses
        self._addresses.add(key)
        if report and link is not None and new:
            self._changed(f"{link.name}: address {address}/{key[3]} added")

    def _route_changed(self, message: rtnetlink.Route) -> None:
        if message.table != MAIN_TABLE or message.dst_len != 0:
            return
        if message.oif is not None and self._relevant_link(message.oif) is None:
            return  # through the tunnel or loopback (or a link this namespace never showed)
        via = f" via {message.gateway}" if message.gateway else ""
        family = "IPv6 " if message.family == socket.AF_INET6 else ""
        self._changed(f"{family}default route{via} {'added' if message.added else 'removed'}")

    # -- debouncing --------------------------------------------------------------------------

    def _changed(self, reason: str) -> None:
        loop = self._loop
        if loop is None:
            return
        log.debug("uplink: %s", reason)
        now = loop.time()
        if not self._reasons:
            self._burst_started = now
        if reason not in self._reasons:
            self._reasons.append(reason)
        if self._timer is not None:
            self._timer.cancel()
        due = min(now + self._debounce, self._burst_started + self._max_delay)
        self._timer = loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        reasons, self._reasons = self._reasons, []
        if not reasons or self._socket is None:
            return
        summary = "; ".join(reasons)
        log.info("uplink changed: %s", summary)
        try:
            self._on_change(summary)
        except Exception:
            log.exception("the uplink change handler failed")
