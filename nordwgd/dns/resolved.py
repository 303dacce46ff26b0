"""DNS through systemd-resolved: per-link servers on the tunnel, made the default route.

As resolved documents for VPNs: ``SetLinkDNS`` with the tunnel resolvers, ``SetLinkDomains``
with the routing-only domain ``.`` (every name goes to this link), ``SetLinkDefaultRoute``;
undone with ``RevertLink``. The system bus is found the usual way (``DBUS_SYSTEM_BUS_ADDRESS``,
else the well-known socket).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from typing import Any

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from nordwgd.errors import DnsFailed
from nordwgd.model import IPAddress

log = logging.getLogger(__name__)

BUS_NAME = "org.freedesktop.resolve1"
OBJECT_PATH = "/org/freedesktop/resolve1"
INTERFACE = "org.freedesktop.resolve1.Manager"
NO_SUCH_LINK = "org.freedesktop.resolve1.NoSuchLink"
CONNECT_TIMEOUT = 2.0
CALL_TIMEOUT = 10.0


async def is_running() -> bool:
    """Whether org.freedesktop.resolve1 has an owner on the system bus (False without a bus)."""
    try:
        bus = await asyncio.wait_for(MessageBus(bus_type=BusType.SYSTEM).connect(), CONNECT_TIMEOUT)
    except (OSError, EOFError, TimeoutError, ValueError) as exc:
        log.debug("no system bus (%s): systemd-resolved is not used", exc)
        return False
    try:
        reply = await asyncio.wait_for(
            bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="NameHasOwner",
                    signature="s",
                    body=[BUS_NAME],
                )
            ),
            CALL_TIMEOUT,
        )
        return bool(
            reply is not None and reply.message_type == MessageType.METHOD_RETURN and reply.body[0]
        )
    finally:
        bus.disconnect()


async def apply(ifindex: int, ifname: str, servers: Sequence[IPAddress]) -> None:
    """Send every name to the tunnel resolvers over link ``ifindex``."""
    addresses = [[_family(server), server.packed] for server in servers]
    log.info(
        "[#] resolvectl dns %s %s; domain %s ~.; default-route %s true",
        ifname,
        " ".join(map(str, servers)),
        ifname,
        ifname,
    )
    async with _connected() as bus:
        await _call(bus, "SetLinkDNS", "ia(iay)", [ifindex, addresses])
        await _call(bus, "SetLinkDomains", "ia(sb)", [ifindex, [[".", True]]])
        await _call(bus, "SetLinkDefaultRoute", "ib", [ifindex, True])


async def revert(ifindex: int, ifname: str) -> None:
    """Drop the link's DNS settings; a link that is already gone is not an error."""
    log.info("[#] resolvectl revert %s", ifname)
    async with _connected() as bus:
        await _call(bus, "RevertLink", "i", [ifindex], missing_ok=True)


class _connected:
    """``async with _connected() as bus``: a system bus connection, DnsFailed if none."""

    def __init__(self) -> None:
        self.bus: MessageBus | None = None

    async def __aenter__(self) -> MessageBus:
        try:
            self.bus = await asyncio.wait_for(
                MessageBus(bus_type=BusType.SYSTEM).connect(), CONNECT_TIMEOUT
            )
        except (OSError, EOFError, TimeoutError, ValueError) as exc:
            raise DnsFailed(f"cannot reach systemd-resolved on the system bus: {exc}") from exc
        return self.bus

    async def __aexit__(self, *exc: object) -> None:
        if self.bus is not None:
            self.bus.disconnect()


async def _call(
    bus: MessageBus, member: str, signature: str, body: list[Any], *, missing_ok: bool = False
) -> None:
    message = Message(
        destination=BUS_NAME,
        path=OBJECT_PATH,
        interface=INTERFACE,
        member=member,
        signature=signature,
        body=body,
    )
    try:
        reply = await asyncio.wait_for(bus.call(message), CALL_TIMEOUT)
    except (OSError, EOFError, TimeoutError) as exc:
        raise DnsFailed(f"systemd-resolved {member} failed: {exc}") from exc
    if reply is None:
        raise DnsFailed(f"systemd-resolved {member}: no reply")
    if reply.message_type == MessageType.ERROR:
        if missing_ok and reply.error_name == NO_SUCH_LINK:
            return
        detail = reply.body[0] if reply.body else ""
        raise DnsFailed(f"systemd-resolved {member} failed: {reply.error_name}: {detail}")


def _family(address: IPAddress) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6
