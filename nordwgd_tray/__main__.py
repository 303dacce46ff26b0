"""``nordwgd-tray`` (also ``python -m nordwgd_tray``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from nordwgd_tray.app import run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nordwgd-tray",
        description="A tray icon and menu for nordwgd (StatusNotifierItem; Plasma, GNOME with "
        "the AppIndicator extension, and other trays).",
    )
    parser.add_argument(
        "--log-level", default="warning", choices=("debug", "info", "warning", "error")
    )
    parser.add_argument(
        "--own-icons", action="store_true", help="use nordwgd's icons even where the theme has some"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="nordwgd-tray: %(levelname)s %(name)s: %(message)s"
    )
    try:
        return asyncio.run(run(prefer_own_icons=args.own_icons))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
