"""Pure text formatting for nordwgctl: status, tables, sizes, durations.

Every value shown comes from outside (the daemon, and through it the NordVPN API), so each is
passed through ``printable``: a city name holding an escape sequence must not retitle the
window, move the cursor or hide a line of output.
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Mapping, Sequence

KNOWN_STATES = frozenset(
    {"disconnected", "connecting", "connected", "reconnecting", "disconnecting", "error"}
)


# Characters that reorder or hide text on a terminal without being control characters.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e")
_BIDI_CONTROLS |= frozenset("\u2066\u2067\u2068\u2069")


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _is_control(char: str) -> bool:
    return unicodedata.category(char) == "Cc" or char in _BIDI_CONTROLS


def printable(value: object) -> str:
    """``value`` as text safe for a terminal: control characters (newlines too) escaped."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(_escape(char) if _is_control(char) else char for char in text)


def terminal_safe(text: str) -> str:
    """Output text with every control character but newline escaped (the last line of defence)."""
    if text.isprintable():
        return text
    return "".join(_escape(char) if char != "\n" and _is_control(char) else char for char in text)


def state_label(state: object) -> str:
    """A state as clients must show it: values this version does not know are "unknown"."""
    text = printable(state)
    return text if text in KNOWN_STATES else f"unknown ({text})"


def human_bytes(count: object) -> str:
    value = float(count) if isinstance(count, int | float) else 0.0
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}m")
    parts.append(f"{secs}s")
    return " ".join(parts)


def _since(microseconds: object, now: float) -> str | None:
    if not isinstance(microseconds, int) or microseconds <= 0:
        return None
    return human_duration(now - microseconds / 1_000_000) + " ago"


def format_status(properties: Mapping[str, object], *, now: float | None = None) -> str:
    """The human status shown by ``nordwgctl status``."""
    now = time.time() if now is None else now
    server = properties.get("Server")
    server = server if isinstance(server, Mapping) else {}
    shown = printable
    lines = [f"State:      {state_label(properties.get('State', ''))}"]
    cause = properties.get("ErrorCause")
    if cause:
        lines.append(f"Error:      {shown(cause)}")
    lines.append(f"Firewall:   {shown(properties.get('Blocking', ''))}")
    if server:
        where = ", ".join(shown(server[key]) for key in ("city", "country") if server.get(key))
        title = shown(server.get("hostname") or server.get("name") or "")
        lines.append(f"Server:     {title}" + (f" ({where})" if where else ""))
        if "load" in server:
            lines.append(f"Load:       {shown(server['load'])}%")
        if server.get("endpoint"):
            lines.append(f"Endpoint:   {shown(server['endpoint'])}")
    if properties.get("Interface"):
        address = shown(properties.get("TunnelAddress") or "")
        interface = shown(properties["Interface"])
        lines.append(f"Interface:  {interface}" + (f" {address}" if address else ""))
    connected = _since(properties.get("ConnectedSince"), now)
    if connected:
        lines.append(f"Connected:  {connected}")
    handshake = _since(properties.get("LatestHandshake"), now)
    if handshake:
        lines.append(f"Handshake:  {handshake}")
    if properties.get("RxBytes") or properties.get("TxBytes"):
        lines.append(
            f"Transfer:   {human_bytes(properties.get('RxBytes', 0))} received, "
            f"{human_bytes(properties.get('TxBytes', 0))} sent"
        )
    lines.append(f"Lockdown:   {on_off(properties.get('Lockdown'))}")
    lines.append(f"Allow LAN:  {on_off(properties.get('AllowLan'))}")
    lines.append(f"Mode:       {shown(properties.get('Mode', ''))}")
    if properties.get("Provider"):
        lines.append(f"Provider:   {shown(properties['Provider'])}")
    port = properties.get("ForwardedPort")
    if port:
        lines.append(f"Forwarded:  port {shown(port)}")
    return "\n".join(lines)


def on_off(value: object) -> str:
    return "on" if value else "off"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    cells = [[printable(cell) for cell in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))

    def line(row: Sequence[str]) -> str:
        padded = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        return "  ".join([*padded, row[-1]]).rstrip()

    return "\n".join([line(list(headers)), *(line(row) for row in cells)])


def format_mapping(mapping: Mapping[str, object], indent: int = 0) -> str:
    """Nested ``key: value`` lines (diagnostics, health details, statistics)."""
    pad = "  " * indent
    lines: list[str] = []
    for key in sorted(mapping, key=str):
        value = mapping[key]
        name = printable(key)
        if isinstance(value, Mapping):
            lines.append(f"{pad}{name}:")
            lines.append(format_mapping(value, indent + 1))
        elif isinstance(value, list) and any(isinstance(item, Mapping) for item in value):
            lines.append(f"{pad}{name}:")
            for item in value:
                if isinstance(item, Mapping):
                    lines.append(format_mapping(item, indent + 1))
                    lines.append("")
                else:
                    lines.append(f"{pad}  - {printable(item)}")
        elif isinstance(value, list):
            lines.append(f"{pad}{name}: {', '.join(printable(item) for item in value)}")
        elif isinstance(value, str) and "\n" in value:
            # Multi-line text (a ruleset, a routing table): its own lines, each one escaped.
            lines.append(f"{pad}{name}:")
            lines.extend(f"{pad}  {printable(text)}" for text in value.splitlines())
        else:
            lines.append(f"{pad}{name}: {printable(value)}")
    return "\n".join(line for line in lines if line or indent == 0)


def to_json(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)
