"""The provider interface: what the state machine, the manager and the engine need from a
VPN service. NordVPN (``provider/nordvpn``) and PIA (``provider/pia``) are behind it, made by
``nordwgd.provider.factory`` from ``config.provider``; nothing else knows which one is in use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from nordwgd.model import Pinholes, Server, TunnelParams
from nordwgd.target import Target


class Provider(Protocol):
    """One VPN service: resolves requests, plans attempts, knows its login."""

    @property
    def name(self) -> str:
        """ "nordvpn" or "pia" (the ``Provider`` property)."""

    @property
    def pinholes(self) -> Pinholes:
        """Where the provider's API is, beyond ``[api] addresses`` (PIA's servers)."""

    def resolve(self, options: Mapping[str, object]) -> Target:
        """A target for Connect options; InvalidArgument or UnknownLocation at once."""

    async def check(self, target: Target) -> None:
        """Checks that need the provider's data (regions, server names), before connecting."""

    async def require_login(self) -> None:
        """NotLoggedIn when there is no token or login to connect with."""

    async def plan(self, target: Target, attempt: int, exclude: frozenset[str]) -> TunnelParams:
        """The parameters of the next server to try."""

    def mark_failed(self, hostname: str) -> None: ...

    async def refresh(self) -> None:
        """Renew: fresh credentials and server data (the monthly timer)."""

    async def forget_credentials(self) -> None:
        """The login changed: fetch credentials again at the next attempt."""

    async def logout(self) -> None:
        """Forget the stored login (and expire it at the provider where it can be)."""

    async def servers(self, options: Mapping[str, object], limit: int) -> list[Server]: ...

    async def countries(self) -> list[tuple[str, str, str]]:
        """(code, name, id) of the places to connect to (NordVPN: countries; PIA: regions)."""

    async def cities(self, country: str) -> list[tuple[str, str]]: ...

    async def groups(self) -> list[tuple[str, str]]: ...

    async def public_address(self, *, through_tunnel: bool) -> dict[str, object]:
        """What Diagnose("basic") reports of the address the Internet sees."""

    async def aclose(self) -> None: ...
