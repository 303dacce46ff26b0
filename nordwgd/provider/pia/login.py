"""The PIA login (username and password) and the 24-hour token kept between connects.

The login comes from the systemd credential ``pia-login`` (two lines: username, password) in
``$CREDENTIALS_DIRECTORY``, else from ``<state_dir>/pia-login``, written 0600 by
``nordwgctl login``. The token is kept in ``<state_dir>/pia-token`` (0600) with the time it was
obtained, and replaced an hour before PIA lets it lapse. Neither ever reaches a log line.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from nordwgd.errors import ConfigError, InvalidArgument, NotLoggedIn
from nordwgd.files import write_atomic
from nordwgd.model import Secret
from nordwgd.redact import register_secret
from nordwgd.token import _check_private, _read

CREDENTIAL_NAME = "pia-login"
LOGIN_FILE = "pia-login"
TOKEN_FILE = "pia-token"  # noqa: S105 - a file name
REFRESH_MARGIN = 3600.0  # a token is replaced this long before it would lapse

_USERNAME = re.compile(r"[A-Za-z0-9_.@+-]{1,128}")


@dataclass(frozen=True)
class Login:
    username: str
    password: Secret = field(repr=False)


@dataclass(frozen=True)
class KeptToken:
    token: Secret
    obtained: float  # seconds since the epoch

    def fresh(self, lifetime: float, now: float) -> bool:
        return 0 <= now - self.obtained < lifetime - min(REFRESH_MARGIN, lifetime / 4)


def validate_login(username: str, password: str) -> Login:
    user = username.strip()
    if not _USERNAME.fullmatch(user):
        raise InvalidArgument(
            "not a PIA username: expected 1 to 128 letters, digits or '_.@+-' (such as p1234567)"
        )
    if not password or "\n" in password or "\0" in password or len(password) > 1024:
        raise InvalidArgument("not a PIA password: empty, too long or with a line break")
    register_secret(password)
    return Login(user, Secret(password))


def _parse(text: str, where: str) -> Login:
    lines = text.splitlines()
    if len(lines) < 2:
        raise ConfigError(f"{where}: expected two lines, the PIA username and the password")
    try:
        return validate_login(lines[0], lines[1])
    except InvalidArgument as error:
        raise ConfigError(f"{where}: {error}") from None


def load_login(state_dir: Path, credentials_dir: Path | None = None) -> Login | None:
    """The login from the systemd credential or the stored file; None when there is none.

    Blocking (file reads): call it through ``asyncio.to_thread``.
    """
    if credentials_dir is None:
        env = os.environ.get("CREDENTIALS_DIRECTORY")
        credentials_dir = Path(env) if env else None
    if credentials_dir is not None:
        credential = credentials_dir / CREDENTIAL_NAME
        text = _read(credential, str(credential), check_private=False)
        if text is not None:
            return _parse(text, f"the systemd credential {CREDENTIAL_NAME!r}")
    stored = state_dir / LOGIN_FILE
    text = _read(stored, str(stored), check_private=True)
    return None if text is None else _parse(text, str(stored))


def store_login(state_dir: Path, login: Login) -> Path:
    """Write the login 0600 (atomically); forget any kept token of an earlier login."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = state_dir / LOGIN_FILE
    text = f"{login.username}\n{login.password.reveal()}\n"
    write_atomic(target, text.encode(), mode=0o600)
    forget_token(state_dir)
    return target


def delete_login(state_dir: Path) -> bool:
    try:
        (state_dir / LOGIN_FILE).unlink()
    except FileNotFoundError:
        return False
    return True


def load_token(state_dir: Path) -> KeptToken | None:
    """The kept token, or None (none kept, or unreadable: a new one is fetched)."""
    path = state_dir / TOKEN_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        _check_private(os.fstat(fd), path, str(path))
        data = os.read(fd, 8192)
        document = json.loads(data)
        token, obtained = document["token"], document["obtained"]
        if not isinstance(token, str) or not token or not isinstance(obtained, int | float):
            return None
    except (OSError, ConfigError, ValueError, KeyError, TypeError):
        return None
    finally:
        os.close(fd)
    register_secret(token)
    return KeptToken(Secret(token), float(obtained))


def keep_token(state_dir: Path, token: Secret, now: float | None = None) -> KeptToken:
    kept = KeptToken(token, time.time() if now is None else now)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = json.dumps({"token": token.reveal(), "obtained": kept.obtained}).encode()
    write_atomic(state_dir / TOKEN_FILE, data, mode=0o600)
    return kept


def forget_token(state_dir: Path) -> None:
    (state_dir / TOKEN_FILE).unlink(missing_ok=True)


def require_login(login: Login | None) -> Login:
    if login is None:
        raise NotLoggedIn("no PIA login: run 'nordwgctl login' (it asks for the PIA username)")
    return login
