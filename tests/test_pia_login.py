"""The PIA login and token files, the port hook: 0600, precedence, redaction, timeouts."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from nordwgd.errors import ConfigError, InvalidArgument, NotLoggedIn
from nordwgd.model import Secret
from nordwgd.provider.pia import login
from nordwgd.provider.pia.portforward import run_hook, write_port_file


def test_login_is_stored_0600_and_read_back(tmp_path: Path) -> None:
    account = login.validate_login("p1234567", "s3cret password")
    path = login.store_login(tmp_path / "state", account)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = login.load_login(tmp_path / "state", credentials_dir=tmp_path / "none")
    assert loaded == account
    assert "s3cret" not in repr(loaded)


def test_a_stored_login_others_can_read_is_refused(tmp_path: Path) -> None:
    path = login.store_login(tmp_path, login.validate_login("p1234567", "pw-pw-pw-pw"))
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        login.load_login(tmp_path, credentials_dir=tmp_path / "none")


def test_the_systemd_credential_comes_first(tmp_path: Path) -> None:
    login.store_login(tmp_path / "state", login.validate_login("p1111111", "stored-password"))
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "pia-login").write_text("p2222222\ncredential-password\n")
    found = login.load_login(tmp_path / "state", credentials_dir=credentials)
    assert found is not None and found.username == "p2222222"


@pytest.mark.parametrize(
    ("username", "password"),
    [("", "pw"), ("p 1", "pw"), ("p1234567", ""), ("p1234567", "two\nlines")],
)
def test_malformed_logins_are_refused_without_echo(username: str, password: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        login.validate_login(username, password)
    if password:
        assert password not in caught.value.message


def test_no_login_says_how_to_log_in() -> None:
    with pytest.raises(NotLoggedIn, match="nordwgctl login"):
        login.require_login(None)


def test_the_token_is_kept_0600_and_fresh_until_an_hour_before_its_end(tmp_path: Path) -> None:
    kept = login.keep_token(tmp_path, Secret("a-token-of-pia-0123456789"), now=1000.0)
    assert (tmp_path / login.TOKEN_FILE).stat().st_mode & 0o777 == 0o600
    assert login.load_token(tmp_path) == kept
    day = 86400.0
    assert kept.fresh(day, 1000.0 + day - 3601)
    assert not kept.fresh(day, 1000.0 + day - 3599)
    assert not kept.fresh(day, 999.0)  # a clock that went back: get a new one
    login.store_login(tmp_path, login.validate_login("p1234567", "another-pass"))
    assert login.load_token(tmp_path) is None  # a new login forgets the old token


def test_the_port_file_appears_and_goes(tmp_path: Path) -> None:
    write_port_file(tmp_path / "run", 47047)
    assert (tmp_path / "run" / "forwarded-port").read_text() == "47047\n"
    write_port_file(tmp_path / "run", 0)
    assert not (tmp_path / "run" / "forwarded-port").exists()


def test_the_hook_gets_only_its_variables_and_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    os.environ["NORDWGD_TEST_SECRET"] = "must-not-reach-the-hook"
    try:
        caplog.set_level(logging.INFO)
        status = asyncio.run(run_hook(("/usr/bin/env",), {"NORDWGD_PORT": "1234"}, 5.0))
    finally:
        del os.environ["NORDWGD_TEST_SECRET"]
    assert status == 0
    text = caplog.text
    assert "NORDWGD_PORT=1234" in text and "exited with status 0" in text
    assert "must-not-reach-the-hook" not in text


def test_a_hook_that_hangs_is_killed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    marker = tmp_path / "child-alive"
    script = tmp_path / "hang"
    script.write_text(f"#!/bin/sh\n(sleep 3; touch {marker}) &\nsleep 30\n")
    script.chmod(0o755)
    assert asyncio.run(run_hook((str(script),), {}, 0.5)) is None
    assert "killed after 0.5 s" in caplog.text
    asyncio.run(asyncio.sleep(3.5))
    assert not marker.exists()  # its whole process group went with it


def test_a_hook_that_cannot_start_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert asyncio.run(run_hook(("/nonexistent/hook",), {}, 1.0)) is None
    assert "could not start" in caplog.text
