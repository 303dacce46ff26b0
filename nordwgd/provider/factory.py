"""The one place that turns ``config.provider`` into a provider.

Each provider's modules are imported only when it is the one configured, so a PIA daemon never
loads the NordVPN catalog and a NordVPN daemon never loads PIA's region code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from nordwgd.config import Config
from nordwgd.model import Pinholes
from nordwgd.provider.base import Provider

if TYPE_CHECKING:
    from nordwgd.provider.nordvpn.api import NordVpnApi

# Called before the provider reaches servers of its own, so that the firewall lets them through.
AllowPinholes = Callable[[Pinholes], Awaitable[None]]
ProviderFactory = Callable[[Config, AllowPinholes], Awaitable[Provider]]


async def open_provider(
    config: Config, allow: AllowPinholes, *, nordvpn_api: NordVpnApi | None = None
) -> Provider:
    """The provider ``config.provider`` names; ``nordvpn_api`` replaces NordVPN's client."""
    if config.provider == "pia":
        from nordwgd.provider.pia.provider import PiaPlanner

        return PiaPlanner(config, allow=allow)
    from nordwgd.provider.nordvpn.api import NordVpnApi
    from nordwgd.provider.nordvpn.catalog import Catalog
    from nordwgd.provider.nordvpn.planner import Planner

    catalog = await asyncio.to_thread(Catalog.load)
    api = nordvpn_api or NordVpnApi(config.api, fwmark=config.network.fwmark)
    return Planner(config, api, catalog)
