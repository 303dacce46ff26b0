"""DNS while the tunnel is up: systemd-resolved when it runs, else resolv.conf.

``apply`` records a ``{"step": "dns", "mode": ...}`` step in the journal before changing
anything; ``undo`` takes that step back, from this process or from a new one after a crash.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from nordwgd.dns import resolvconf, resolved
from nordwgd.model import IPAddress
from nordwgd.runstate import Journal, Step

log = logging.getLogger(__name__)

DnsMode = Literal["resolved", "resolvconf"]


async def detect_mode() -> DnsMode:
    """``resolved`` when org.freedesktop.resolve1 is on the system bus, else ``resolvconf``."""
    return "resolved" if await resolved.is_running() else "resolvconf"


async def apply(
    journal: Journal,
    *,
    mode: DnsMode,
    ifindex: int,
    ifname: str,
    servers: Sequence[IPAddress],
    resolv_conf: Path,
) -> None:
    """Point the system's DNS at ``servers``; raises DnsFailed (the step stays recorded)."""
    if mode == "resolved":
        step: Step = {"step": "dns", "mode": "resolved", "ifindex": ifindex, "ifname": ifname}
        await asyncio.to_thread(journal.record, step)
        await resolved.apply(ifindex, ifname, servers)
    else:
        await asyncio.to_thread(resolvconf.apply, journal, resolv_conf, servers)


async def undo(step: Step) -> None:
    """Take back a recorded DNS step; raises DnsFailed."""
    if step["mode"] == "resolved":
        await resolved.revert(step["ifindex"], step["ifname"])
    else:
        await asyncio.to_thread(resolvconf.restore, step)


async def cleanup_by_name(runtime_dir: Path) -> None:
    """Without a usable journal: restore a resolv.conf backup if one was left behind.

    resolved needs nothing: it forgets a link's settings when the link is deleted.
    """
    step = await asyncio.to_thread(resolvconf.recorded_backup, runtime_dir)
    if step is not None:
        log.info("restoring %s from a leftover backup", step["path"])
        await undo(step)


__all__ = ["DnsMode", "apply", "cleanup_by_name", "detect_mode", "undo"]
