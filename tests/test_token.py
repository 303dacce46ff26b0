"""Where the access token comes from, which files are refused, and how a login is stored."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import pytest

from nordwgd.config import Config, PathsConfig
from nordwgd.errors import ConfigError, InvalidArgument, NotLoggedIn
from nordwgd.model import Secret
from nordwgd.token import delete_token, load_token, store_token, validate_token


def new_token() -> str:
    return secrets.token_hex(32)


def config_for(tmp_path: Path, token_file: Path | None = None) -> Config:
    return Config(paths=PathsConfig(state_dir=tmp_path / "state"), token_file=token_file)


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture(autouse=True)
def no_inherited_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def test_validate_accepts_real_format_and_strips_whitespace() -> None:
    token = new_token()
    assert validate_token(f"  {token}\n") == Secret(token)
    assert validate_token("Abc_def-123456789") == Secret("Abc_def-123456789")


@pytest.mark.parametrize(
    "text",
    ["", "   ", "short", "a" * 15, "a" * 513, "token with spaces inside", "töken" * 5, "ab:cd" * 5],
)
def test_validate_refuses_without_echoing(text: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_token(text)
    if text.strip():
        assert text.strip() not in str(raised.value)
    assert "64 hexadecimal digits" in str(raised.value)


def test_nothing_configured_gives_none(tmp_path: Path) -> None:
    assert load_token(config_for(tmp_path), credentials_dir=tmp_path / "no-creds") is None


def test_precedence_credential_then_token_file_then_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credential, from_file, stored = new_token(), new_token(), new_token()
    creds = tmp_path / "creds"
    creds.mkdir()
    token_file = private_file(tmp_path / "token", from_file)
    config = config_for(tmp_path, token_file)
    store_token(config.paths.state_dir, Secret(stored))
    private_file(creds / "token", credential + "\n", mode=0o400)

    assert load_token(config, credentials_dir=creds) == Secret(credential)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_token(config) == Secret(credential)

    (creds / "token").unlink()
    assert load_token(config) == Secret(from_file)
    assert load_token(config_for(tmp_path)) == Secret(stored)
    delete_token(config.paths.state_dir)
    assert load_token(config_for(tmp_path)) is None


def test_credentials_dir_from_environment_only_when_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = new_token()
    store_token(tmp_path / "state", Secret(stored))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "empty"))
    assert load_token(config_for(tmp_path)) == Secret(stored)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666, 0o602])
def test_token_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    token = new_token()
    path = private_file(tmp_path / "token", token, mode)
    with pytest.raises(ConfigError) as raised:
        load_token(config_for(tmp_path, path), credentials_dir=tmp_path / "none")
    message = str(raised.value)
    assert f"token_file {path}" in message
    assert f"mode {mode:04o}" in message
    assert f"chmod 600 {path}" in message
    assert token not in message


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_private_token_file_is_accepted(tmp_path: Path, mode: int) -> None:
    token = new_token()
    path = private_file(tmp_path / "token", f"{token}\n", mode)
    config = config_for(tmp_path, path)
    assert load_token(config, credentials_dir=tmp_path / "none") == Secret(token)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_token_file_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    path = private_file(tmp_path / "token", new_token())
    os.chown(path, 54321, 54321)
    with pytest.raises(ConfigError, match="owned by uid 54321"):
        load_token(config_for(tmp_path, path), credentials_dir=tmp_path / "none")


def test_token_file_problems_are_config_errors(tmp_path: Path) -> None:
    config = Config(token_file=tmp_path / "missing", source=Path("/etc/nordwgd/nordwgd.toml"))
    with pytest.raises(ConfigError, match=r"set in /etc/nordwgd/nordwgd.toml.*does not exist"):
        load_token(config, credentials_dir=tmp_path / "x")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_token(config_for(tmp_path, tmp_path), credentials_dir=tmp_path / "x")
    bad = private_file(tmp_path / "bad", "not a token at all")
    with pytest.raises(ConfigError, match="not a NordVPN access token"):
        load_token(config_for(tmp_path, bad), credentials_dir=tmp_path / "x")
    huge = private_file(tmp_path / "huge", "a" * 10000)
    with pytest.raises(ConfigError, match="too large"):
        load_token(config_for(tmp_path, huge), credentials_dir=tmp_path / "x")


def test_broken_credential_names_it(tmp_path: Path) -> None:
    private_file(tmp_path / "token", "?" * 20, 0o400)
    with pytest.raises(ConfigError, match="systemd credential 'token'"):
        load_token(config_for(tmp_path), credentials_dir=tmp_path)


def test_store_creates_0600_and_replaces_atomically(tmp_path: Path) -> None:
    state = tmp_path / "state" / "nested"
    first, second = new_token(), new_token()
    old_umask = os.umask(0)  # even a permissive umask must not widen the file
    try:
        path = store_token(state, Secret(first))
    finally:
        os.umask(old_umask)
    assert path == state / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert path.read_text() == first + "\n"
    store_token(state, Secret(second))
    assert path.read_text() == second + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in state.iterdir()) == ["token"]  # no temporary left behind


def test_store_refuses_a_malformed_token(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        store_token(tmp_path, Secret("nope"))
    assert not (tmp_path / "token").exists()


def test_stored_login_with_loose_mode_or_garbage(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    path = store_token(config.paths.state_dir, Secret(new_token()))
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 0644"):
        load_token(config, credentials_dir=tmp_path / "x")
    path.chmod(0o600)
    path.write_text("garbage!")
    with pytest.raises(NotLoggedIn, match="nordwgctl login"):
        load_token(config, credentials_dir=tmp_path / "x")


def test_delete_token(tmp_path: Path) -> None:
    store_token(tmp_path, Secret(new_token()))
    assert delete_token(tmp_path) is True
    assert delete_token(tmp_path) is False
    assert not (tmp_path / "token").exists()
