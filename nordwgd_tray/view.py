"""What the tray shows, derived from the daemon's properties by pure functions.

Nothing here talks to a bus: the same property dictionary always gives the same icon, tooltip,
state line and notification, so these are tested as tables.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

KNOWN_STATES = ("disconnected", "connecting", "connected", "reconnecting", "disconnecting", "error")

CAUSE_WORDS = {
    "auth-failed": "the NordVPN account refused the access token",
    "no-server": "no server matches the chosen location",
    "api-unavailable": "the NordVPN service cannot be reached",
    "tunnel-failed": "the WireGuard tunnel could not be set up",
    "firewall-failed": "the firewall rules could not be applied",
    "dns-failed": "the DNS settings could not be changed",
    "routing-failed": "the routes could not be changed",
    "not-logged-in": "no NordVPN access token is set (run: nordwgctl login)",
    "offline": "there is no network connection",
}


class Situation(Enum):
    """One icon each."""

    CONNECTED = "connected"
    CONNECTING = "connecting"
    OPEN = "open"  # disconnected, traffic flows without the VPN
    BLOCKED = "blocked"  # disconnected with lockdown: traffic blocked
    ERROR = "error"  # blocked, with a cause
    ABSENT = "absent"  # nordwgd is not on the bus


@dataclass(frozen=True)
class DaemonView:
    """The daemon's properties that the tray uses, with unknown values made safe."""

    present: bool = False
    state: str = "unknown"
    error_cause: str = ""
    blocking: str = "blocked"
    lockdown: bool = False
    allow_lan: bool = False
    server: Mapping[str, object] | None = None
    connected_since: int = 0
    recent: tuple[Mapping[str, str], ...] = ()

    @classmethod
    def from_properties(cls, properties: Mapping[str, object]) -> DaemonView:
        state = str(properties.get("State", "unknown"))
        blocking = str(properties.get("Blocking", "blocked"))
        server = properties.get("Server")
        recent = properties.get("RecentLocations")
        return cls(
            present=True,
            state=state if state in KNOWN_STATES else "unknown",
            error_cause=str(properties.get("ErrorCause", "")),
            blocking=blocking if blocking in ("open", "blocked", "block-failed") else "blocked",
            lockdown=bool(properties.get("Lockdown", False)),
            allow_lan=bool(properties.get("AllowLan", False)),
            server=dict(server) if isinstance(server, Mapping) and server else None,
            connected_since=_int(properties.get("ConnectedSince", 0)),
            recent=_locations(recent),
        )

    @property
    def situation(self) -> Situation:
        if not self.present:
            return Situation.ABSENT
        if self.state == "connected":
            return Situation.CONNECTED
        if self.state in ("connecting", "reconnecting"):
            return Situation.CONNECTING
        if self.state == "error" or self.blocking == "block-failed":
            return Situation.ERROR
        if self.state == "disconnected" and self.blocking == "open":
            return Situation.OPEN
        return Situation.BLOCKED

    @property
    def hostname(self) -> str:
        return str(self.server.get("hostname", "")) if self.server else ""


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _locations(value: object) -> tuple[Mapping[str, str], ...]:
    if not isinstance(value, list | tuple):
        return ()
    return tuple(
        {str(k): str(v) for k, v in item.items()} for item in value if isinstance(item, Mapping)
    )


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def cause_in_words(cause: str) -> str:
    if not cause:
        return "the connection failed"
    return CAUSE_WORDS.get(cause, cause.replace("-", " "))


def place(server: Mapping[str, object] | None) -> str:
    """'Germany #1001, Frankfurt' style: the server's name and city, or its hostname."""
    if not server:
        return ""
    name = str(server.get("name") or server.get("hostname") or "")
    city = str(server.get("city") or "")
    country = str(server.get("country") or "")
    where = ", ".join(part for part in (city, country) if part and part not in name)
    return f"{name} ({where})" if name and where else name or where


def state_line(view: DaemonView) -> str:
    """The first, disabled line of the menu and the tooltip's title."""
    situation = view.situation
    if situation is Situation.ABSENT:
        return "nordwgd is not running"
    if situation is Situation.CONNECTED:
        return f"Connected to {place(view.server)}" if view.server else "Connected"
    if view.state == "connecting":
        target = place(view.server)
        return f"Connecting to {target}…" if target else "Connecting…"
    if view.state == "reconnecting":
        return "Reconnecting…"
    if view.state == "disconnecting":
        return "Disconnecting…"
    if situation is Situation.ERROR:
        if view.blocking == "block-failed":
            return "Error: the firewall could not be applied"
        return f"Error: {cause_in_words(view.error_cause)} (traffic blocked)"
    if situation is Situation.OPEN:
        return "Disconnected"
    if view.state == "unknown":
        return "State unknown (traffic may be blocked)"
    return "Disconnected, traffic blocked (lockdown)"


def tooltip(view: DaemonView, transfer: tuple[int, int] | None = None) -> tuple[str, str]:
    """(title, body) of the tooltip: state, server, connected since, transfer (rx, tx)."""
    title = f"NordVPN: {state_line(view)}"
    lines: list[str] = []
    if view.server and view.situation in (Situation.CONNECTED, Situation.CONNECTING):
        lines.append(f"Server: {view.hostname}")
    if view.situation is Situation.CONNECTED and view.connected_since > 0:
        since = datetime.datetime.fromtimestamp(view.connected_since / 1e6).astimezone()
        lines.append(f"Connected since {since:%Y-%m-%d %H:%M}")
        if transfer is not None:
            lines.append(f"Transfer: {human_bytes(transfer[0])} in, {human_bytes(transfer[1])} out")
    lines.append(f"Lockdown: {'on' if view.lockdown else 'off'}")
    lines.append(f"LAN: {'allowed' if view.allow_lan else 'blocked'}")
    return title, "\n".join(lines)


@dataclass(frozen=True)
class Notice:
    """A desktop notification: summary, body, and whether it is urgent."""

    summary: str
    body: str
    icon: Situation
    urgent: bool = False


def notice_for(before: DaemonView, after: DaemonView, last_host: str) -> Notice | None:
    """The notification a change from ``before`` to ``after`` deserves, if any.

    ``last_host`` is the server of the last connection notified (empty when none): coming
    back connected to another server without a disconnect in between is a failover.
    Counters never change a view, so they never notify.
    """
    if before.present and not after.present:
        return Notice(
            "VPN service stopped",
            "nordwgd left the system bus; its firewall stays as it was.",
            Situation.ABSENT,
            urgent=True,
        )
    if not after.present:
        return None
    if after.situation is Situation.CONNECTED:
        if before.situation is Situation.CONNECTED and before.hostname == after.hostname:
            return None
        return _connected_notice(after, last_host)
    if after.situation is Situation.ERROR:
        if (
            before.situation is Situation.ERROR
            and before.error_cause == after.error_cause
            and before.blocking == after.blocking
        ):
            return None
        body = (
            "Traffic stays blocked: the firewall rules could not be applied."
            if after.blocking == "block-failed"
            else f"{_sentence(cause_in_words(after.error_cause))} Traffic stays blocked."
        )
        return Notice("VPN connection failed", body, Situation.ERROR, urgent=True)
    if after.state == "disconnected" and before.present and before.state != "disconnected":
        body = (
            "Traffic is blocked until you connect again (lockdown)."
            if after.situation is Situation.BLOCKED
            else "Traffic now goes out without the VPN."
        )
        return Notice("VPN disconnected", body, after.situation)
    return None


def _sentence(words: str) -> str:
    return words[:1].upper() + words[1:] + ("" if words.endswith(")") else ".")


def _connected_notice(after: DaemonView, last_host: str) -> Notice:
    where = place(after.server) or "the VPN"
    if last_host and after.hostname and after.hostname != last_host:
        return Notice("VPN switched server", f"Now connected to {where}.", Situation.CONNECTED)
    return Notice("VPN connected", f"Connected to {where}.", Situation.CONNECTED)
