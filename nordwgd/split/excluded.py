"""Keeps the split table (``rules``) in step with the excluded slice and the connection.

nft resolves the slice's cgroup path to an id when the table is loaded, so the table is loaded
only once the slice exists, and again whenever the slice's directory is made anew (a new
inode is a new cgroup id). A watcher checks the directory every ``WATCH_SECONDS`` (one stat).
While the slice does not exist there is no table: excluded apps then get no exemption, which
is the safe side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Final

from nordwgd.config import Config
from nordwgd.dns.resolvconf import BACKUP_NAME
from nordwgd.errors import FirewallFailed
from nordwgd.model import IPAddress
from nordwgd.split import cgroups
from nordwgd.split.rules import SplitPolicy, apply, system_resolvers

log = logging.getLogger(__name__)

WATCH_SECONDS: Final = 2.0


class ExcludedApps:
    """The excluded slice of one daemon: its cgroup, its rules and what is in it."""

    def __init__(self, config: Config, *, mountinfo: str | None = None) -> None:
        self._config = config
        self._slice = config.split.excluded_slice
        self._hierarchy = cgroups.detect(mountinfo)
        self._connected = False
        self._applied: SplitPolicy | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        """Host and gateway mode with a cgroup v2 hierarchy (namespace mode tunnels no host)."""
        return self._hierarchy is not None and self._config.network.mode != "namespace"

    @property
    def slice_name(self) -> str:
        return self._slice

    @property
    def hierarchy(self) -> cgroups.Hierarchy | None:
        return self._hierarchy

    def match(self) -> cgroups.CgroupMatch | None:
        if self._hierarchy is None:
            return None
        return cgroups.lookup(self._hierarchy, cgroups.slice_path(self._slice))

    def units(self) -> tuple[str, ...]:
        """The units (scopes, services) in the slice right now."""
        match = self.match()
        return () if match is None else cgroups.members(match)

    def policy(self) -> SplitPolicy:
        network = self._config.network
        resolvers: tuple[IPAddress, ...] = ()
        if self._connected:
            resolvers = system_resolvers(self._config.paths.runtime_dir / BACKUP_NAME)
        return SplitPolicy(
            excluded=self.match() if self.enabled else None,
            fwmark=network.fwmark,
            tunnel_interface=network.interface,
            resolvers=resolvers,
        )

    async def sync(self, *, connected: bool | None = None) -> None:
        """Load the rules again if what they depend on changed; never raises."""
        if connected is not None:
            self._connected = connected
        async with self._lock:
            policy = await asyncio.to_thread(self.policy)
            if policy == self._applied:
                return
            # Remembered even when loading fails, so that the watcher tries again only when
            # the slice changes (and does not repeat the same failure every few seconds).
            self._applied = policy
            try:
                await apply(policy)
            except FirewallFailed as error:
                # The kill switch is untouched: excluded apps simply stay in the tunnel.
                log.warning("split tunnel: %s", error)
            except OSError as error:  # no nft binary, no libnftables: the same outcome
                log.warning("split tunnel: cannot load the rules: %s", error)
        if self.enabled and self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="excluded-slice-watch")

    async def close(self) -> None:
        """Stop watching and remove the split table."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        async with self._lock:
            if self._applied is not None and self._applied.excluded is not None:
                with contextlib.suppress(FirewallFailed):
                    await apply(SplitPolicy(None, self._config.network.fwmark, ""))
            self._applied = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            current = self._applied.excluded if self._applied is not None else None
            now = await asyncio.to_thread(self.match)
            if _identity(now) != _identity(current):
                log.info("split tunnel: %s changed; loading its rules again", self._slice)
                await self.sync()


def _identity(match: cgroups.CgroupMatch | None) -> tuple[Path, int] | None:
    return None if match is None else (match.directory, match.inode)
