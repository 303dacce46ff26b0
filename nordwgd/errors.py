"""The typed error tree of nordwgd.

Every failure that reaches a user is one of these classes. Each class carries a ``nick``
(the last part of its D-Bus error name, ``org.nordwgd.Nordwgd1.Error.<nick>``) and, where the
failure explains why a connection is not up, a ``cause`` (the value of the ``ErrorCause``
property). The D-Bus layer maps them once, by ``nick``; core code never imports it.

    NordwgdError                      base; never raised itself
    ├── ConfigError                 the config file is unreadable or invalid (names file, line, key)
    ├── InvalidArgument               a caller passed a bad value (D-Bus argument, CLI option)
    │   └── UnknownLocation           a country / city / group / server that does not exist
    ├── NotAuthorized                 polkit (or the bus) refused the caller
    ├── NotLoggedIn                   no token is configured
    ├── NoServer                      no usable server matches the request
    ├── AuthFailed                    the API refused the token (HTTP 401)
    ├── ApiUnavailable                the API cannot be used now (network, TLS, 429, 5xx, bad data)
    ├── TunnelFailed                  the WireGuard interface or its handshake failed
    ├── RoutingFailed                 routes or rules could not be set or restored
    ├── FirewallFailed                the kill-switch ruleset could not be applied or verified
    └── DnsFailed                     DNS could not be set or restored
"""

from __future__ import annotations

from collections.abc import Sequence


class NordwgdError(Exception):
    """Base of every error nordwgd raises on purpose."""

    nick = "Failed"
    cause = "failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(NordwgdError):
    """The config file cannot be read, or a key in it is unknown, of the wrong type or invalid."""

    nick = "InvalidConfig"
    cause = "invalid-config"


class InvalidArgument(NordwgdError):
    """A caller passed a value that is not acceptable (wrong type, out of range, unknown key)."""

    nick = "InvalidArgument"
    cause = "invalid-argument"


class UnknownLocation(InvalidArgument):
    """A country, city, group or server name that matches nothing; carries suggestions."""

    nick = "UnknownLocation"
    cause = "unknown-location"

    def __init__(self, message: str, suggestions: Sequence[str] = ()) -> None:
        self.suggestions = tuple(suggestions)
        if self.suggestions:
            message = f"{message} (did you mean: {', '.join(self.suggestions)}?)"
        super().__init__(message)


class NotAuthorized(NordwgdError):
    """The caller is not allowed to do this (polkit said no, or could not be asked)."""

    nick = "NotAuthorized"
    cause = "not-authorized"


class NotLoggedIn(NordwgdError):
    """No NordVPN access token is configured."""

    nick = "NotLoggedIn"
    cause = "not-logged-in"


class NoServer(NordwgdError):
    """No usable NordLynx server matches the request."""

    nick = "NoServer"
    cause = "no-server"


class AuthFailed(NordwgdError):
    """The NordVPN API refused the access token."""

    nick = "AuthFailed"
    cause = "auth-failed"


class ApiUnavailable(NordwgdError):
    """The NordVPN API cannot be used now: unreachable, TLS failure, 429, 5xx, or unusable data."""

    nick = "ApiUnavailable"
    cause = "api-unavailable"


class TunnelFailed(NordwgdError):
    """The WireGuard interface could not be set up, or no handshake came."""

    nick = "TunnelFailed"
    cause = "tunnel-failed"


class RoutingFailed(NordwgdError):
    """Routes or policy rules could not be applied or restored."""

    nick = "RoutingFailed"
    cause = "routing-failed"


class FirewallFailed(NordwgdError):
    """The kill-switch ruleset could not be applied or verified."""

    nick = "FirewallFailed"
    cause = "firewall-failed"


class DnsFailed(NordwgdError):
    """DNS settings could not be applied or restored."""

    nick = "DnsFailed"
    cause = "dns-failed"


ALL_ERRORS: tuple[type[NordwgdError], ...] = (
    NordwgdError,
    ConfigError,
    InvalidArgument,
    UnknownLocation,
    NotAuthorized,
    NotLoggedIn,
    NoServer,
    AuthFailed,
    ApiUnavailable,
    TunnelFailed,
    RoutingFailed,
    FirewallFailed,
    DnsFailed,
)
