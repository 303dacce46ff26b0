"""The tray: joins the daemon client, the StatusNotifierItem, its menu and notifications.

Every change reaches the tray as a D-Bus signal (PropertiesChanged, NameOwnerChanged); the tray
then recomputes its view and updates what differs. There is no timer: an idle tray sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Mapping
from typing import Any

from dbus_fast import BusType, NameFlag
from dbus_fast.aio import MessageBus

from nordwgd_tray.daemon import CallFailed, DaemonClient
from nordwgd_tray.dbusmenu import DBusMenu
from nordwgd_tray.icons import IconSet
from nordwgd_tray.menu import Actions, build_menu
from nordwgd_tray.notify import Notifier
from nordwgd_tray.sni import ITEM_PATH, MENU_PATH, Registrar, StatusNotifierItem, item_bus_name
from nordwgd_tray.view import DaemonView, Notice, Situation, notice_for, tooltip

logger = logging.getLogger(__name__)

TERMINALS = ("x-terminal-emulator", "gnome-terminal", "konsole", "xfce4-terminal", "xterm")
STATUS_COMMAND = "nordwgctl status; echo; nordwgctl monitor"


class Tray:
    def __init__(self, session: MessageBus, system: MessageBus, icons: IconSet) -> None:
        self._session = session
        self._icons = icons
        self._properties: dict[str, Any] = {}
        self._view = DaemonView()
        self._countries: list[tuple[str, str, str]] = []
        self._transfer: tuple[int, int] | None = None
        self._last_host = ""
        self._loaded = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopped = asyncio.Event()
        self.item = StatusNotifierItem("nordwgd", "NordVPN", on_activate=self._show_status)
        self.menu = DBusMenu(on_open=self._menu_opened)
        self.notifier = Notifier(session)
        self.daemon = DaemonClient(system, self._on_daemon)
        self.registrar = Registrar(session, item_bus_name())
        self._actions = Actions(
            connect=lambda options: self._spawn(self._connect(options)),
            disconnect=lambda: self._spawn(self._call("Disconnect", "disconnecting")),
            reconnect=lambda: self._spawn(self._call("Reconnect", "reconnecting")),
            set_lockdown=lambda on: self._spawn(
                self._call("SetLockdown", f"turning Lockdown {_on_off(on)}", "b", [on])
            ),
            set_allow_lan=lambda on: self._spawn(
                self._call("SetAllowLan", f"turning Allow LAN {_on_off(on)}", "b", [on])
            ),
            show_status=self._show_status,
            quit=self.stopped.set,
        )

    @property
    def view(self) -> DaemonView:
        return self._view

    async def start(self) -> None:
        self._session.export(ITEM_PATH, self.item)
        self._session.export(MENU_PATH, self.menu)
        self._render()
        await self._session.request_name(item_bus_name(), NameFlag.DO_NOT_QUEUE)
        await self.daemon.start()
        await self.registrar.start()

    def close(self) -> None:
        self.registrar.close()
        self.daemon.close()
        for task in self._tasks:
            task.cancel()

    # Daemon → view ----------------------------------------------------------------------

    def _on_daemon(self, changed: dict[str, Any] | None) -> None:
        appeared = changed is not None and not self.daemon_seen
        if changed is None:
            self._properties = {}
        else:
            self._properties.update(changed)
        before = self._view
        after = (
            DaemonView.from_properties(self._properties) if changed is not None else DaemonView()
        )
        self._view = after
        if changed is not None and (appeared or not before.present):
            self._spawn(self._load_countries())
        if after.situation is not Situation.CONNECTED:
            self._transfer = None
        notice = notice_for(before, after, self._last_host) if self._loaded else None
        self._loaded = True
        if after.situation is Situation.CONNECTED:
            self._last_host = after.hostname
        elif after.state == "disconnected" or not after.present:
            self._last_host = ""
        self._render()
        if notice is not None:
            self._notify(notice)

    @property
    def daemon_seen(self) -> bool:
        return self._view.present

    def _render(self) -> None:
        situation = self._view.situation
        self.item.update(
            icon=self._icons.name(situation),
            theme_path=self._icons.theme_path,
            tooltip=tooltip(self._view, self._transfer),
            attention=situation is Situation.ERROR,
        )
        self.menu.show(build_menu(self._view, self._countries, self._actions))

    def _notify(self, notice: Notice) -> None:
        icon = self._icons.name(notice.icon)
        self._spawn(self.notifier.notify(notice.summary, notice.body, icon, urgent=notice.urgent))

    async def _load_countries(self) -> None:
        try:
            self._countries = await self.daemon.countries()
        except CallFailed as error:
            logger.warning("cannot list countries: %s", error)
            return
        self._render()

    def _menu_opened(self) -> None:
        if self._view.situation is Situation.CONNECTED:
            self._spawn(self._refresh_transfer())

    async def _refresh_transfer(self) -> None:
        try:
            stats = await self.daemon.statistics()
        except CallFailed:
            return
        self._transfer = (int(stats.get("rx_bytes", 0)), int(stats.get("tx_bytes", 0)))
        self._render()

    # Menu → daemon ----------------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, options: Mapping[str, str]) -> None:
        where = options.get("country", "")
        await self._call_with(
            f"connecting to {where}" if where else "connecting",
            lambda: self.daemon.connect(options),
        )

    async def _call(
        self, member: str, what: str, signature: str = "", body: list[Any] | None = None
    ) -> None:
        await self._call_with(what, lambda: self.daemon.call(member, signature, body))

    async def _call_with(self, what: str, call: Any) -> None:
        try:
            await call()
        except CallFailed as error:
            logger.warning("%s failed: %s", what, error)
            if error.not_authorized:
                notice = Notice(
                    f"Not allowed: {what}",
                    f"You are not authorized for this: {error.message or error.name}.",
                    Situation.ERROR,
                    urgent=True,
                )
            else:
                notice = Notice(
                    f"VPN: {what} failed",
                    error.message or error.name.rsplit(".", 1)[-1],
                    Situation.ERROR,
                    urgent=True,
                )
            self._notify(notice)

    def _show_status(self) -> None:
        for terminal in [os.environ.get("TERMINAL", ""), *TERMINALS]:
            if terminal and shutil.which(terminal):
                self._spawn(_run_detached(terminal, "-e", "sh", "-c", STATUS_COMMAND))
                return
        title, body = tooltip(self._view, self._transfer)
        self._notify(Notice(title, body, self._view.situation))


def _on_off(on: bool) -> str:
    return "on" if on else "off"


async def _run_detached(*argv: str) -> None:
    try:
        await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as error:
        logger.warning("cannot start %s: %s", argv[0], error)


async def run(*, prefer_own_icons: bool = False) -> int:
    """Run the tray until the session bus closes or Quit is chosen."""
    try:
        session = await MessageBus(bus_type=BusType.SESSION).connect()
        system = await MessageBus(bus_type=BusType.SYSTEM).connect()
    except (OSError, ValueError) as error:
        logger.error("cannot reach the D-Bus session or system bus: %s", error)
        return 1
    tray = Tray(session, system, IconSet.discover(prefer_own=prefer_own_icons))
    await tray.start()
    ended = asyncio.get_running_loop().create_task(session.wait_for_disconnect())  # type: ignore[no-untyped-call]
    system_ended = asyncio.get_running_loop().create_task(system.wait_for_disconnect())  # type: ignore[no-untyped-call]
    quit_chosen = asyncio.get_running_loop().create_task(tray.stopped.wait())
    await asyncio.wait({ended, system_ended, quit_chosen}, return_when=asyncio.FIRST_COMPLETED)
    tray.close()
    for task in (ended, system_ended, quit_chosen):
        task.cancel()
    session.disconnect()
    system.disconnect()
    if system_ended.done() and not system_ended.cancelled():
        logger.error("the system bus closed")
        return 1
    return 0
