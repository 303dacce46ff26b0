"""The one place where nordwgd errors become D-Bus errors (by their ``nick``)."""

from __future__ import annotations

from dbus_fast import DBusError

from nordwgd import errors

ERROR_PREFIX = "org.nordwgd.Nordwgd1.Error."


def error_name(error: type[errors.NordwgdError] | errors.NordwgdError) -> str:
    """The D-Bus error name of a nordwgd error class or instance."""
    return ERROR_PREFIX + error.nick


def to_dbus_error(error: errors.NordwgdError) -> DBusError:
    return DBusError(error_name(error), error.message)


def internal_error() -> DBusError:
    # The message stays generic: details of an unexpected failure go to the log, not to callers.
    return DBusError(error_name(errors.NordwgdError), "internal error; see the nordwgd log")


def from_error_name(name: str, message: str) -> errors.NordwgdError | None:
    """The nordwgd error a client should raise for a D-Bus error reply, if it is one of ours."""
    if not name.startswith(ERROR_PREFIX):
        return None
    nick = name[len(ERROR_PREFIX) :]
    for cls in errors.ALL_ERRORS:
        if cls.nick == nick:
            if cls is errors.UnknownLocation:
                return errors.UnknownLocation(message)
            return cls(message)
    return errors.NordwgdError(message)
