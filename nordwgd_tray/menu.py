"""The tray's menu as a function of what it shows: state line, connect entries, toggles.

Ids are fixed per entry; countries get ids from their position in the daemon's list, so a
click always means the country that was shown under that id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from nordwgd_tray.dbusmenu import MenuItem, separator
from nordwgd_tray.view import DaemonView, Situation, state_line

STATE_LINE = 1
QUICK_CONNECT = 2
COUNTRIES = 3
DISCONNECT = 4
RECONNECT = 5
LOCKDOWN = 6
ALLOW_LAN = 7
SHOW_STATUS = 8
QUIT = 9
RECENT_BASE = 1000
RECENT_ICON = "document-open-recent-symbolic"
COUNTRY_BASE = 2000


@dataclass(frozen=True)
class Actions:
    """What the menu's entries do; the tray supplies them."""

    connect: Callable[[Mapping[str, str]], None]
    disconnect: Callable[[], None]
    reconnect: Callable[[], None]
    set_lockdown: Callable[[bool], None]
    set_allow_lan: Callable[[bool], None]
    show_status: Callable[[], None]
    quit: Callable[[], None]


def recent_countries(
    view: DaemonView, countries: Sequence[tuple[str, str, str]]
) -> list[tuple[str, str, str]]:
    """The countries of the daemon's recent locations, most recent first, without repeats."""
    by_key: dict[str, tuple[str, str, str]] = {}
    for entry in countries:
        code, name, ident = entry
        for key in (code.lower(), name.lower(), ident):
            by_key[key] = entry
    seen: list[tuple[str, str, str]] = []
    for location in view.recent:
        country = location.get("country", "").lower()
        found = by_key.get(country)
        if found is not None and found not in seen:
            seen.append(found)
    return seen


def build_menu(
    view: DaemonView, countries: Sequence[tuple[str, str, str]], actions: Actions
) -> list[MenuItem]:
    present = view.present
    connected = view.situation is Situation.CONNECTED
    busy = view.state in ("connecting", "reconnecting", "disconnecting")

    def connect_to(country: str) -> Callable[[], None]:
        return lambda: actions.connect({"country": country})

    recent = recent_countries(view, countries)
    country_items: list[MenuItem] = [
        MenuItem(
            RECENT_BASE + index,
            label=name,
            action=connect_to(code),
            icon=RECENT_ICON,
        )
        for index, (code, name, _ident) in enumerate(recent)
    ]
    if country_items:
        country_items.append(separator(RECENT_BASE + 999))
    country_items += [
        MenuItem(COUNTRY_BASE + index, label=name, action=connect_to(code))
        for index, (code, name, _ident) in enumerate(sorted(countries, key=lambda c: c[1]))
    ]
    if not country_items:
        country_items = [MenuItem(COUNTRY_BASE - 1, label="(no list yet)", enabled=False)]

    return [
        MenuItem(STATE_LINE, label=state_line(view), enabled=False),
        separator(100),
        MenuItem(
            QUICK_CONNECT,
            label="Quick connect",
            enabled=present and not connected and not busy,
            action=lambda: actions.connect({}),
        ),
        MenuItem(COUNTRIES, label="Countries", enabled=present, children=tuple(country_items)),
        MenuItem(
            DISCONNECT,
            label="Disconnect",
            enabled=present and view.state not in ("disconnected", "disconnecting"),
            action=actions.disconnect,
        ),
        MenuItem(RECONNECT, label="Reconnect", enabled=connected, action=actions.reconnect),
        separator(101),
        MenuItem(
            LOCKDOWN,
            label="Lockdown (block traffic while disconnected)",
            enabled=present,
            checked=view.lockdown,
            action=lambda: actions.set_lockdown(not view.lockdown),
        ),
        MenuItem(
            ALLOW_LAN,
            label="Allow LAN",
            enabled=present,
            checked=view.allow_lan,
            action=lambda: actions.set_allow_lan(not view.allow_lan),
        ),
        separator(102),
        MenuItem(SHOW_STATUS, label="Show status…", action=actions.show_status),
        MenuItem(QUIT, label="Quit tray", action=actions.quit),
    ]
