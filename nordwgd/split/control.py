"""Putting processes into the excluded slice and taking them out, always through systemd.

systemd owns the cgroup tree; nordwgd never writes a cgroup.procs file. It asks systemd's
manager over D-Bus instead:

- a command (``nordwgctl exclude -- CMD``): the calling process is put into a new transient
  scope in the slice (``StartTransientUnit`` with ``PIDs``), then it execs CMD, whose children
  stay in the scope;
- a running unit (``nordwgctl exclude --unit NAME``): its processes are moved the same way into
  a scope named after it, until it restarts (for good: ``Slice=`` in a drop-in of the unit);
- removing: the scope's processes go back into their unit when it still runs
  (``AttachProcessesToUnit``), else into a new scope in ``system.slice``.

Only root and systemd can move processes into the slice (its cgroup is root's, as systemd
makes it), and nordwgd does it only for callers that polkit lets ``configure``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from typing import Any, Final

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from nordwgd.errors import InvalidArgument, NordwgdError
from nordwgd.split.excluded import ExcludedApps

log = logging.getLogger(__name__)

SYSTEMD: Final = "org.freedesktop.systemd1"
SYSTEMD_PATH: Final = "/org/freedesktop/systemd1"
SYSTEMD_MANAGER: Final = "org.freedesktop.systemd1.Manager"
SCOPE_PREFIX: Final = "nordwgd-excluded-"
MOVE_TIMEOUT: Final = 10.0
_UNIT = re.compile(r"[A-Za-z0-9:_.\\@-]{1,250}\.(service|scope|socket|mount|swap|timer)")
_CALL_TIMEOUT = 25.0


class SplitFailed(NordwgdError):
    """systemd could not do what excluding or removing needs (the message says what)."""


def check_unit_name(name: str) -> str:
    if not _UNIT.fullmatch(name):
        raise InvalidArgument(f"{name[:64]!r} is not a unit name (like foo.service or bar.scope)")
    return name


class SplitControl:
    """What the D-Bus layer asks of split tunnelling: list, exclude, remove."""

    def __init__(self, excluded: ExcludedApps, bus: MessageBus | None = None) -> None:
        self._excluded = excluded
        self._bus = bus
        self._origins: dict[str, str] = {}  # scope -> the unit its processes came from
        self._lock = asyncio.Lock()

    @property
    def slice_name(self) -> str:
        return self._excluded.slice_name

    def units(self) -> list[str]:
        """The units in the excluded slice now."""
        return list(self._excluded.units())

    async def exclude_process(self, pid: int, what: str) -> str:
        """Move process ``pid`` (the caller's own) into a new scope in the slice."""
        self._require_enabled()
        scope = f"{SCOPE_PREFIX}{pid}-{secrets.token_hex(3)}.scope"
        await self._new_scope(scope, [pid], f"Excluded from the VPN tunnel: {what[:100]}")
        return scope

    async def exclude_unit(self, unit: str) -> str:
        """Move the processes of running ``unit`` into a scope in the slice (until it restarts)."""
        self._require_enabled()
        check_unit_name(unit)
        if unit.startswith(SCOPE_PREFIX) or unit == self.slice_name:
            raise InvalidArgument(f"{unit} is excluded already")
        processes = await self._manager_call("GetUnitProcesses", "s", [unit])
        pids = sorted({int(entry[1]) for entry in processes[0]})
        if not pids:
            raise InvalidArgument(f"{unit} has no running processes to exclude")
        scope = f"{SCOPE_PREFIX}{_escape(unit)}-{secrets.token_hex(3)}.scope"
        await self._new_scope(scope, pids, f"Excluded from the VPN tunnel: {unit}")
        self._origins[scope] = unit
        return scope

    async def remove(self, unit: str) -> None:
        """Take the processes of ``unit`` (a unit in the slice) out of it, back into the tunnel."""
        check_unit_name(unit)
        if unit not in self.units():
            raise InvalidArgument(f"{unit} is not in {self.slice_name}")
        processes = await self._manager_call("GetUnitProcesses", "s", [unit])
        pids = sorted({int(entry[1]) for entry in processes[0]})
        origin = self._origins.pop(unit, None)
        if pids and origin is not None:
            try:
                await self._manager_call("AttachProcessesToUnit", "ssau", [origin, "", pids])
                log.info("split tunnel: %s returned to %s", unit, origin)
                return
            except SplitFailed as error:
                log.info("split tunnel: %s cannot take its processes back: %s", origin, error)
        if pids:
            back = f"nordwgd-returned-{secrets.token_hex(4)}.scope"
            await self._start_scope(back, pids, "system.slice", f"Returned to the tunnel: {unit}")
            log.info("split tunnel: %s returned to the tunnel as %s", unit, back)

    # -- systemd -----------------------------------------------------------------------------

    def _require_enabled(self) -> None:
        if self._excluded.hierarchy is None:
            raise SplitFailed("excluding needs a cgroup v2 hierarchy under /sys/fs/cgroup")
        if not self._excluded.enabled:
            raise InvalidArgument("excluded apps need host or gateway mode (not namespace)")

    async def _new_scope(self, scope: str, pids: list[int], description: str) -> None:
        async with self._lock:
            await self._start_scope(scope, pids, self.slice_name, description)
            # The scope made the slice if it was missing: load its rules before replying, so
            # the caller's traffic never takes the uplink before it is really excluded.
            await self._excluded.sync()
        log.info("split tunnel: %s excluded as %s (%s)", description, scope, pids)

    async def _start_scope(self, scope: str, pids: list[int], slice_name: str, text: str) -> None:
        properties = [
            ["PIDs", Variant("au", pids)],
            ["Slice", Variant("s", slice_name)],
            ["Description", Variant("s", text)],
            ["CollectMode", Variant("s", "inactive-or-failed")],
        ]
        await self._manager_call(
            "StartTransientUnit", "ssa(sv)a(sa(sv))", [scope, "fail", properties, []]
        )
        # The call returns once the job is queued; the processes are moved when it runs.
        deadline = asyncio.get_running_loop().time() + MOVE_TIMEOUT
        while True:
            (listed,) = await self._manager_call("GetUnitProcesses", "s", [scope])
            if set(pids) & {int(entry[1]) for entry in listed}:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise SplitFailed(f"timed out waiting for systemd to move {pids} into {scope}")
            await asyncio.sleep(0.02)

    async def _wait(self, done: Any, what: str) -> None:
        deadline = asyncio.get_running_loop().time() + MOVE_TIMEOUT
        while not await asyncio.to_thread(done):
            if asyncio.get_running_loop().time() > deadline:
                raise SplitFailed(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)

    async def _manager_call(self, member: str, signature: str, body: list[Any]) -> list[Any]:
        bus = await self._connected()
        message = Message(
            destination=SYSTEMD,
            path=SYSTEMD_PATH,
            interface=SYSTEMD_MANAGER,
            member=member,
            signature=signature,
            body=body,
        )
        try:
            reply = await asyncio.wait_for(bus.call(message), _CALL_TIMEOUT)
        except (OSError, EOFError, TimeoutError) as error:
            self._bus = None
            raise SplitFailed(f"systemd did not answer {member}: {error}") from None
        if reply is None or reply.message_type is MessageType.ERROR:
            name = reply.error_name if reply is not None else "no reply"
            text = reply.body[0] if reply is not None and reply.body else ""
            if name == "org.freedesktop.systemd1.NoSuchUnit":
                raise InvalidArgument(f"{body[0]}: no such unit is running")
            if name == "org.freedesktop.DBus.Error.ServiceUnknown":
                raise SplitFailed("systemd is not running (excluding needs it)")
            raise SplitFailed(f"systemd refused {member}({body[0]}): {name}: {text}")
        return list(reply.body)

    async def _connected(self) -> MessageBus:
        if self._bus is None or not self._bus.connected:
            try:
                self._bus = await asyncio.wait_for(
                    MessageBus(bus_type=BusType.SYSTEM).connect(), _CALL_TIMEOUT
                )
            except (OSError, EOFError, TimeoutError, ValueError) as error:
                raise SplitFailed(f"cannot reach systemd on the system bus: {error}") from None
        return self._bus

    def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None


def _escape(unit: str) -> str:
    """A unit name made safe inside another unit name (as systemd-escape would, roughly)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", unit.rsplit(".", 1)[0])[:60]
