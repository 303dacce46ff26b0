"""Conversions between the Manager's plain Python values and D-Bus values, and argument checks.

Everything that enters from the bus is checked here before the Manager sees it: ``a{sv}``
options must use known keys whose variants hold strings of a sane length.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dbus_fast import Variant

from nordwgd.errors import InvalidArgument
from nordwgd.status import Status, location_properties, server_properties

MAX_STRING = 256
"""Longest string accepted from a caller (hostnames are at most 253 characters)."""

CONNECT_KEYS = frozenset({"country", "city", "group", "server", "region"})
FILTER_KEYS = frozenset({"country", "city", "group", "server", "region"})
DIAGNOSE_MODES = frozenset({"basic", "full"})

# Every Manager property: its signature and where its value is in the core's ``Status``, in
# the order of the introspection XML. The only place that knows the properties' names.
STATUS_PROPERTIES: dict[str, tuple[str, Callable[[Status], object]]] = {
    "State": ("s", lambda status: status.state),
    "ErrorCause": ("s", lambda status: status.error_cause),
    "Blocking": ("s", lambda status: status.blocking),
    "Lockdown": ("b", lambda status: status.lockdown),
    "AllowLan": ("b", lambda status: status.allow_lan),
    "Mode": ("s", lambda status: status.mode),
    "Server": ("a{sv}", lambda status: server_properties(status.server)),
    "Interface": ("s", lambda status: status.interface),
    "TunnelAddress": ("s", lambda status: status.tunnel_address),
    "ConnectedSince": ("t", lambda status: status.connected_since),
    "Version": ("s", lambda status: status.version),
    "LatestHandshake": ("t", lambda status: status.latest_handshake),
    "RxBytes": ("t", lambda status: status.rx_bytes),
    "TxBytes": ("t", lambda status: status.tx_bytes),
    "ForwardedPort": ("q", lambda status: status.forwarded_port),
    "RecentLocations": (
        "aa{sv}",
        lambda status: [location_properties(loc) for loc in status.recent_locations],
    ),
    "Provider": ("s", lambda status: status.provider),
}

PROPERTY_SIGNATURES: dict[str, str] = {
    name: signature for name, (signature, _) in STATUS_PROPERTIES.items()
}

# Counters change with every packet; clients poll them (or call GetStatistics) instead.
QUIET_PROPERTIES = frozenset({"LatestHandshake", "RxBytes", "TxBytes"})

_UINT_LIMITS = {"t": 2**64 - 1, "q": 2**16 - 1}


def check_string(value: str, what: str) -> str:
    if len(value) > MAX_STRING:
        raise InvalidArgument(f"{what}: longer than {MAX_STRING} characters")
    if "\0" in value:
        raise InvalidArgument(f"{what}: contains a NUL character")
    return value


def string_options(
    options: Mapping[str, Variant], allowed: frozenset[str], what: str
) -> dict[str, str]:
    """The ``a{sv}`` ``options`` as plain strings; unknown keys, non-string or empty values are
    refused."""
    result: dict[str, str] = {}
    for key, variant in options.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise InvalidArgument(f"{what}: unknown key {key[:64]!r} (known keys: {known})")
        if variant.signature != "s" or not isinstance(variant.value, str):
            raise InvalidArgument(
                f"{what}: {key!r} must be a string (D-Bus type s), not {variant.signature!r}"
            )
        value = check_string(variant.value, f"{what}: {key!r}")
        if not value.strip():
            # An empty dictionary asks for the configured default; an empty value is a
            # caller's mistake (say, an empty text field) that must not connect anywhere.
            raise InvalidArgument(f"{what}: {key!r} is empty (leave the key out instead)")
        result[key] = value
    return result


def to_variant(value: object) -> Variant:
    """A Variant for a plain Python value (str, bool, int, float, lists, dicts, None)."""
    if isinstance(value, Variant):
        return value
    if isinstance(value, bool):
        return Variant("b", value)
    if isinstance(value, int):
        if value > 2**63 - 1:
            return Variant("t", value)
        return Variant("x", value)
    if isinstance(value, float):
        return Variant("d", value)
    if isinstance(value, str):
        return Variant("s", value)
    if value is None:
        return Variant("s", "")
    if isinstance(value, Mapping):
        return Variant("a{sv}", to_vardict(value))
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        if all(isinstance(item, str) for item in items):
            return Variant("as", items)
        if all(isinstance(item, Mapping) for item in items):
            return Variant("aa{sv}", [to_vardict(item) for item in items])
        return Variant("av", [to_variant(item) for item in items])
    # Addresses, paths, enums: their text is what a client wants to see.
    return Variant("s", str(value))


def to_vardict(mapping: Mapping[str, object]) -> dict[str, Variant]:
    """An ``a{sv}`` dictionary; keys whose value is None are left out."""
    return {str(key): to_variant(value) for key, value in mapping.items() if value is not None}


def status_values(status: Status) -> dict[str, Any]:
    """Every property's D-Bus value for ``status``."""
    return {
        name: property_value(name, field(status)) for name, (_, field) in STATUS_PROPERTIES.items()
    }


def property_value(name: str, value: object) -> Any:
    """The Manager's value of property ``name`` coerced to the property's D-Bus signature."""
    signature = PROPERTY_SIGNATURES[name]
    if signature == "s":
        return "" if value is None else str(value)
    if signature == "b":
        return bool(value)
    if signature in _UINT_LIMITS:
        if value is None:
            number = 0
        elif isinstance(value, int | float | str):
            number = int(value)
        else:
            raise TypeError(f"property {name} must be a number, not {type(value).__name__}")
        return min(max(number, 0), _UINT_LIMITS[signature])
    if signature == "aa{sv}":
        if not isinstance(value, list | tuple):
            raise TypeError(f"property {name} must be a list, not {type(value).__name__}")
        if not all(isinstance(item, Mapping) for item in value):
            raise TypeError(f"property {name} must be a list of mappings")
        return [to_vardict(item) for item in value]
    if signature == "a{sv}":
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise TypeError(f"property {name} must be a mapping, not {type(value).__name__}")
        return to_vardict(value)
    raise AssertionError(f"no conversion for signature {signature}")


def plain(value: object) -> object:
    """Strip Variants recursively (client side: JSON output, formatting)."""
    if isinstance(value, Variant):
        return plain(value.value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value
