"""polkit's Authority as a test machine configures it: the actions named are allowed, all
others refused. ``python -m nordwgd.testing.polkitdouble ADDRESS ACTION...`` serves it on the
bus at ADDRESS until killed (the desktop tests' private system bus has no polkitd).
"""

# No ``from __future__ import annotations``: dbus-fast reads signatures from the annotations.
import asyncio
import sys
from typing import Annotated, Any

from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method


class PolicyAuthority(ServiceInterface):
    def __init__(self, allowed: set[str]) -> None:
        super().__init__("org.freedesktop.PolicyKit1.Authority")
        self.allowed = allowed

    @dbus_method()
    def CheckAuthorization(
        self,
        subject: Annotated[list[Any], DBusSignature("(sa{sv})")],
        action_id: DBusStr,
        details: Annotated[dict[str, str], DBusSignature("a{ss}")],
        flags: DBusUInt32,
        cancel: DBusStr,
    ) -> Annotated[list[Any], DBusSignature("(bba{ss})")]:
        allowed = action_id in self.allowed
        print(f"{action_id}: {'allowed' if allowed else 'refused'}", flush=True)
        return [allowed, False, {}]


async def serve(address: str, allowed: set[str]) -> None:
    bus = await MessageBus(bus_address=address).connect()
    bus.export("/org/freedesktop/PolicyKit1/Authority", PolicyAuthority(allowed))
    await bus.request_name("org.freedesktop.PolicyKit1")
    print("ready", flush=True)
    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], set(sys.argv[2:])))
