"""Resume from sleep: logind's ``PrepareForSleep(false)`` on the system bus.

After a suspend the tunnel's peer may have forgotten the session and the uplink may be another
network; the daemon checks the tunnel at once instead of waiting for the next periodic check.
Only logind's own signal counts: the watcher follows the current owner of
``org.freedesktop.login1`` and ignores the same signal from anyone else. Without logind (no
owner and not activatable) there is nothing to watch, which is not an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

log = logging.getLogger(__name__)

LOGIN1 = "org.freedesktop.login1"
LOGIN1_PATH = "/org/freedesktop/login1"
LOGIN1_MANAGER = "org.freedesktop.login1.Manager"
_DBUS = "org.freedesktop.DBus"
_SLEEP_RULE = (
    f"type='signal',sender='{LOGIN1}',path='{LOGIN1_PATH}',"
    f"interface='{LOGIN1_MANAGER}',member='PrepareForSleep'"
)
_OWNER_RULE = f"type='signal',sender='{_DBUS}',member='NameOwnerChanged',arg0='{LOGIN1}'"


class SleepWatcher:
    """Calls ``on_resume()`` each time the machine wakes up; ``stop()`` ends the watch."""

    def __init__(self, bus: MessageBus, on_resume: Callable[[], None]) -> None:
        self._bus = bus
        self._on_resume = on_resume
        self._owner = ""

    async def start(self) -> bool:
        """Subscribe; False (and nothing to stop) when logind is not on this bus."""
        owner = await self._call_dbus("GetNameOwner", "s", [LOGIN1])
        if owner is None and not await self._activatable():
            log.debug("%s is not on the system bus: not watching for resume", LOGIN1)
            return False
        self._owner = str(owner[0]) if owner else ""
        self._bus.add_message_handler(self._handle)
        for rule in (_SLEEP_RULE, _OWNER_RULE):
            if await self._call_dbus("AddMatch", "s", [rule]) is None:
                self._bus.remove_message_handler(self._handle)
                log.warning("the bus refused to deliver logind's signals: not watching for resume")
                return False
        log.debug("watching for resume from sleep")
        return True

    async def stop(self) -> None:
        self._bus.remove_message_handler(self._handle)
        if self._bus.connected:
            for rule in (_SLEEP_RULE, _OWNER_RULE):
                await self._call_dbus("RemoveMatch", "s", [rule])

    async def _activatable(self) -> bool:
        reply = await self._call_dbus("ListActivatableNames", "", [])
        names = reply[0] if reply else []
        return isinstance(names, list) and LOGIN1 in names

    async def _call_dbus(
        self, member: str, signature: str, body: list[object]
    ) -> list[object] | None:
        """A call to the bus daemon; None when it answers with an error."""
        reply = await self._bus.call(
            Message(
                destination=_DBUS,
                path="/org/freedesktop/DBus",
                interface=_DBUS,
                member=member,
                signature=signature,
                body=body,
            )
        )
        if reply is None or reply.message_type is MessageType.ERROR:
            return None
        return list(reply.body)

    def _handle(self, message: Message) -> None:
        if message.message_type is not MessageType.SIGNAL:
            return
        if message.member == "NameOwnerChanged" and message.sender == _DBUS:
            if message.body[:1] == [LOGIN1]:
                self._owner = str(message.body[2])
            return
        if (
            message.member == "PrepareForSleep"
            and message.interface == LOGIN1_MANAGER
            and message.path == LOGIN1_PATH
            and message.signature == "b"
            and message.sender == self._owner
            and self._owner
            and message.body == [False]
        ):
            log.info("resumed from sleep: checking the tunnel")
            try:
                self._on_resume()
            except Exception:
                log.exception("the resume handler failed")
