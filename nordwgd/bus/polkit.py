"""Authorization of callers: root is trusted, everyone else is decided by polkit.

Fails closed: when polkit is not running, errors or does not answer, the caller is refused.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from nordwgd.errors import NotAuthorized

logger = logging.getLogger(__name__)

ACTION_CONTROL: Final = "org.nordwgd.nordwgd1.control"
ACTION_CONFIGURE: Final = "org.nordwgd.nordwgd1.configure"
ACTION_DIAGNOSE: Final = "org.nordwgd.nordwgd1.diagnose"

_POLKIT_NAME = "org.freedesktop.PolicyKit1"
_POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
_POLKIT_INTERFACE = "org.freedesktop.PolicyKit1.Authority"
_ALLOW_USER_INTERACTION = 0x1
# A password prompt may take the user a while; past this the request is refused.
INTERACTIVE_TIMEOUT = 300.0
_BUS_TIMEOUT = 10.0


class CallerGone(NotAuthorized):
    """The caller left the bus before it was authorized; nothing is done for it."""


class Authorizer:
    """Decides whether the sender of a method call may perform a polkit action."""

    def __init__(self, bus: MessageBus, *, timeout: float = INTERACTIVE_TIMEOUT) -> None:
        self._bus = bus
        self._timeout = timeout

    async def authorize(self, sender: str, action: str) -> None:
        """Return when ``sender`` may perform ``action``; raise NotAuthorized otherwise."""
        uid = await self._unix_user(sender)
        if uid != 0:
            await self._ask_polkit(sender, action)
        # Authorization can take long (a password prompt); a caller that left meanwhile
        # gets nothing done on its behalf.
        if not await self._still_connected(sender):
            raise CallerGone(f"{sender} left the bus before it was authorized")

    async def _call_bus_daemon(self, member: str, sender: str) -> Message:
        return await self._call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member=member,
                signature="s",
                body=[sender],
            ),
            _BUS_TIMEOUT,
        )

    async def _unix_user(self, sender: str) -> int:
        reply = await self._call_bus_daemon("GetConnectionUnixUser", sender)
        if reply.message_type is MessageType.ERROR:
            raise CallerGone(f"cannot identify the caller {sender}: {reply.error_name}")
        uid = reply.body[0]
        assert isinstance(uid, int)
        return uid

    async def _still_connected(self, sender: str) -> bool:
        reply = await self._call_bus_daemon("NameHasOwner", sender)
        return reply.message_type is not MessageType.ERROR and bool(reply.body[0])

    async def _ask_polkit(self, sender: str, action: str) -> None:
        request = Message(
            destination=_POLKIT_NAME,
            path=_POLKIT_PATH,
            interface=_POLKIT_INTERFACE,
            member="CheckAuthorization",
            signature="(sa{sv})sa{ss}us",
            body=[
                ["system-bus-name", {"name": Variant("s", sender)}],
                action,
                {},
                _ALLOW_USER_INTERACTION,
                "",
            ],
        )
        try:
            reply = await self._call(request, self._timeout)
        except (TimeoutError, OSError, EOFError) as error:
            logger.warning("polkit did not answer for %s (%s): %s", sender, action, error)
            raise NotAuthorized(f"{action}: polkit did not answer; refused") from None
        if reply.message_type is MessageType.ERROR:
            logger.warning("polkit failed for %s (%s): %s", sender, action, reply.error_name)
            raise NotAuthorized(f"{action}: polkit is not available ({reply.error_name}); refused")
        is_authorized, is_challenge, _details = reply.body[0]
        if not is_authorized:
            hint = " (authentication was needed but not given)" if is_challenge else ""
            logger.info("refused %s for %s%s", action, sender, hint)
            raise NotAuthorized(f"{action}: refused by polkit{hint}")
        logger.debug("polkit allowed %s for %s", action, sender)

    async def _call(self, message: Message, limit: float) -> Message:
        async with asyncio.timeout(limit):
            reply = await self._bus.call(message)
        assert reply is not None  # a method call (not NO_REPLY_EXPECTED) always gets a reply
        return reply
