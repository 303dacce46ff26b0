"""Icon names for each situation: a themed name when the icon theme has it, else our own SVG.

Themes are looked up once, at start, in the icon directories of $XDG_DATA_HOME and
$XDG_DATA_DIRS. Our icons (data/icons/hicolor/...) are found through the item's IconThemePath
when the tray runs from a source tree, and through the hicolor theme when installed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nordwgd_tray.view import Situation

THEMED = {
    Situation.CONNECTED: "network-vpn-symbolic",
    Situation.CONNECTING: "network-vpn-acquiring-symbolic",
    Situation.OPEN: "network-vpn-disconnected-symbolic",
    Situation.BLOCKED: "network-vpn-no-route-symbolic",
    Situation.ERROR: "network-error-symbolic",
    Situation.ABSENT: "network-vpn-disabled-symbolic",
}


def own_name(situation: Situation) -> str:
    return f"nordwgd-{situation.value}"


def icon_dirs() -> list[Path]:
    home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    dirs = os.environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share"
    return [Path(d) / "icons" for d in [home, *dirs.split(":")] if d]


def bundled_theme_path() -> str:
    """Our icon directory when running from a source tree, else "" (installed in hicolor)."""
    source = Path(__file__).resolve().parents[1] / "data" / "icons"
    return str(source) if (source / "hicolor").is_dir() else ""


def theme_has(name: str, dirs: Iterable[Path]) -> bool:
    for base in dirs:
        # Freedesktop layout (Adwaita: SIZE/CONTEXT) and Breeze's (CONTEXT/SIZE).
        for pattern in (f"*/*/status/{name}.*", f"*/status/*/{name}.*"):
            try:
                if next(base.glob(pattern), None) is not None:
                    return True
            except OSError:  # a directory we may not read is a theme we do not have
                break
    return False


@dataclass(frozen=True)
class IconSet:
    names: dict[Situation, str]
    theme_path: str

    @classmethod
    def discover(cls, dirs: Iterable[Path] | None = None, *, prefer_own: bool = False) -> IconSet:
        searched = list(icon_dirs() if dirs is None else dirs)
        names = {
            situation: themed
            if not prefer_own and theme_has(themed, searched)
            else own_name(situation)
            for situation, themed in THEMED.items()
        }
        return cls(names, bundled_theme_path())

    def name(self, situation: Situation) -> str:
        return self.names[situation]
