"""Desktop notifications over org.freedesktop.Notifications on the session bus.

Each notification replaces the tray's previous one, so a flapping connection leaves one bubble,
not a pile. A missing notification server is logged once and otherwise ignored.
"""

from __future__ import annotations

import logging

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

logger = logging.getLogger(__name__)

NAME = "org.freedesktop.Notifications"
PATH = "/org/freedesktop/Notifications"
APP_NAME = "NordVPN (nordwgd)"
_URGENCY_NORMAL = 1
_URGENCY_CRITICAL = 2


class Notifier:
    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus
        self._last_id = 0
        self._warned = False

    async def notify(self, summary: str, body: str, icon: str, *, urgent: bool = False) -> None:
        hints = {
            "urgency": Variant("y", _URGENCY_CRITICAL if urgent else _URGENCY_NORMAL),
            "desktop-entry": Variant("s", "nordwgd-tray"),
        }
        reply = await self._bus.call(
            Message(
                destination=NAME,
                path=PATH,
                interface=NAME,
                member="Notify",
                signature="susssasa{sv}i",
                body=[APP_NAME, self._last_id, icon, summary, body, [], hints, -1],
            )
        )
        if reply is None or reply.message_type is MessageType.ERROR:
            if not self._warned:
                logger.warning(
                    "cannot show notifications (%s)", reply.error_name if reply else "no reply"
                )
                self._warned = True
            return
        self._last_id = int(reply.body[0])
        logger.info("notified: %s: %s", summary, body)
