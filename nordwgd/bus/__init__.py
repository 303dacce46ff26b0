"""The D-Bus adapter of nordwgd (dbus-fast). Core code never imports this package."""

from __future__ import annotations

BUS_NAME = "org.nordwgd.Nordwgd1"
OBJECT_PATH = "/org/nordwgd/Nordwgd1"
INTERFACE_NAME = "org.nordwgd.Nordwgd1.Manager"

__all__ = ["BUS_NAME", "INTERFACE_NAME", "OBJECT_PATH"]
