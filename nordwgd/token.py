"""The NordVPN access token: where it is found, how it is checked and stored.

Sources, first found wins:
1. the systemd credential ``token`` (``LoadCredential=`` / ``SetCredentialEncrypted=``), in
   ``$CREDENTIALS_DIRECTORY``; systemd makes that directory private to the service;
2. the config's ``token_file``, accepted only when no one but its owner (root or the daemon's
   user) can read or write it;
3. the login stored by ``nordwgctl login`` in ``<state_dir>/token`` (written 0600 here).

The token never appears in messages; every token loaded is registered for log redaction.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from nordwgd.config import Config
from nordwgd.errors import ConfigError, InvalidArgument, NotLoggedIn
from nordwgd.files import remove, write_atomic
from nordwgd.model import Secret
from nordwgd.redact import register_secret

CREDENTIAL_NAME = "token"
STORED_TOKEN_NAME = "token"  # noqa: S105 - a file name
MAX_TOKEN_FILE_BYTES = 4096

# Real tokens are 64 hex digits; accept the wider alphabet of opaque bearer tokens too.
_TOKEN = re.compile(r"[0-9A-Za-z_-]{16,512}")


def validate_token(text: str) -> Secret:
    """``text`` stripped of surrounding whitespace as a Secret; InvalidArgument if malformed."""
    value = text.strip()
    if not _TOKEN.fullmatch(value):
        # The value itself is never echoed: a mistyped token is still mostly the real one.
        raise InvalidArgument(
            "not a NordVPN access token: expected 16 to 512 letters, digits, '-' or '_' "
            "(the token from the Nord Account dashboard is 64 hexadecimal digits)"
        )
    register_secret(value)
    return Secret(value)


def load_token(config: Config, credentials_dir: Path | None = None) -> Secret | None:
    """The token from the first source that has one (see the module docstring), else None.

    Reads files: from the event loop, call it through ``asyncio.to_thread``. Raises
    ConfigError for a credential or token_file that is refused or malformed, NotLoggedIn for
    a damaged stored login.
    """
    if credentials_dir is None:
        env = os.environ.get("CREDENTIALS_DIRECTORY")
        credentials_dir = Path(env) if env else None
    if credentials_dir is not None:
        credential = credentials_dir / CREDENTIAL_NAME
        text = _read(credential, str(credential), check_private=False)
        if text is not None:
            return _token_from(text, f"the systemd credential {CREDENTIAL_NAME!r} ({credential})")
    if config.token_file is not None:
        where = f"token_file {config.token_file}"
        if config.source is not None:
            where += f" (set in {config.source})"
        text = _read(config.token_file, where, check_private=True)
        if text is None:
            raise ConfigError(f"{where}: the file does not exist")
        return _token_from(text, where)
    stored = config.paths.state_dir / STORED_TOKEN_NAME
    text = _read(stored, str(stored), check_private=True)
    if text is None:
        return None
    try:
        return validate_token(text)
    except InvalidArgument:
        raise NotLoggedIn(
            f"the stored login {stored} does not hold a valid token; "
            "log in again with 'nordwgctl login'"
        ) from None


def store_token(state_dir: Path, token: Secret) -> Path:
    """Write ``token`` to ``<state_dir>/token`` atomically, mode 0600 from the first byte.

    Blocking (file I/O and fsync): from the event loop, call it through ``asyncio.to_thread``.
    """
    value = validate_token(token.reveal()).reveal()
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = state_dir / STORED_TOKEN_NAME
    write_atomic(target, (value + "\n").encode("ascii"), mode=0o600)
    return target


def delete_token(state_dir: Path) -> bool:
    """Remove the stored login; True if there was one."""
    return remove(state_dir / STORED_TOKEN_NAME)


def _token_from(text: str, where: str) -> Secret:
    try:
        return validate_token(text)
    except InvalidArgument as error:
        raise ConfigError(f"{where}: {error}") from None


def _read(path: Path, where: str, *, check_private: bool) -> str | None:
    """The file's text, None if it does not exist; ``where`` names it in messages.

    Ownership and mode are checked on the opened file, so a swapped name cannot slip through.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ConfigError(f"{where}: cannot open: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{where}: not a regular file")
        if check_private:
            _check_private(info, path, where)
        data = os.read(fd, MAX_TOKEN_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{where}: cannot read: {error.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise ConfigError(f"{where}: too large for a token file")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: does not hold a token (not ASCII text)") from None


def _check_private(info: os.stat_result, path: Path, where: str) -> None:
    if info.st_uid not in (0, os.geteuid()):
        raise ConfigError(
            f"{where}: refused: owned by uid {info.st_uid}; "
            f"it must be owned by root or uid {os.geteuid()}"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{where}: refused: mode {mode:04o} lets others read or change the token; "
            f"run: chmod 600 {path}"
        )
