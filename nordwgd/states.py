"""The public vocabulary of the state machine: states, blocking status and error causes.

These string values are part of the D-Bus API (properties ``State``, ``Blocking`` and
``ErrorCause``); clients treat values they do not know as ``unknown``.
"""

from __future__ import annotations

from enum import StrEnum

from nordwgd import errors


class State(StrEnum):
    """Where the tunnel is in its life cycle; each value names a firewall policy too."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    DISCONNECTING = "disconnecting"
    ERROR = "error"


class Blocking(StrEnum):
    """What the firewall does right now."""

    OPEN = "open"
    BLOCKED = "blocked"
    BLOCK_FAILED = "block-failed"


class ErrorCause(StrEnum):
    """Why the machine is in ``error`` (empty when it is not)."""

    NONE = ""
    AUTH_FAILED = errors.AuthFailed.cause
    NOT_LOGGED_IN = errors.NotLoggedIn.cause
    NO_SERVER = errors.NoServer.cause
    UNKNOWN_LOCATION = errors.UnknownLocation.cause
    INVALID_ARGUMENT = errors.InvalidArgument.cause
    API_UNAVAILABLE = errors.ApiUnavailable.cause
    TUNNEL_FAILED = errors.TunnelFailed.cause
    ROUTING_FAILED = errors.RoutingFailed.cause
    FIREWALL_FAILED = errors.FirewallFailed.cause
    DNS_FAILED = errors.DnsFailed.cause
    OFFLINE = "offline"
    FAILED = errors.NordwgdError.cause


# Causes that may go away by themselves: the error state retries these with backoff. The others
# (a refused token, no matching server, a bad location) need the user to act.
TRANSIENT_CAUSES = frozenset(
    {
        ErrorCause.API_UNAVAILABLE,
        ErrorCause.TUNNEL_FAILED,
        ErrorCause.OFFLINE,
        ErrorCause.ROUTING_FAILED,
        ErrorCause.DNS_FAILED,
    }
)

# States in which a tunnel is wanted: the target survives a restart of the daemon.
ACTIVE_STATES = frozenset({State.CONNECTING, State.CONNECTED, State.RECONNECTING})


def cause_of(error: BaseException) -> ErrorCause:
    """The ``ErrorCause`` for an exception; anything unexpected is ``failed``."""
    if isinstance(error, errors.NordwgdError):
        try:
            return ErrorCause(error.cause)
        except ValueError:
            return ErrorCause.FAILED
    return ErrorCause.FAILED


def is_transient(cause: ErrorCause) -> bool:
    return cause in TRANSIENT_CAUSES
