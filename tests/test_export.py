"""``nordwgd export-config`` against the in-process fake NordVPN API (real HTTPS on 127.0.0.1)."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

import pytest

from nordwgd import errors
from nordwgd.config import ApiConfig, Config, DnsConfig
from nordwgd.model import Secret
from nordwgd.provider.nordvpn.export import export_config
from nordwgd.testing.fakeapi import FakeApi
from nordwgd.testing.fleet import Fleet, ServerSpec, default_fleet, default_token
from nordwgd.testing.pki import Pki, make_pki
from nordwgd.testing.world import to_toml
from tests.fixtures_dbus import PYTHON, REPO

DNS = "198.51.100.53"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return default_fleet()


@pytest.fixture
def fake(fleet: Fleet, pki: Pki) -> Iterator[FakeApi]:
    with FakeApi(fleet, pki) as api:
        yield api


def usable(fleet: Fleet) -> ServerSpec:
    return next(
        spec
        for spec in fleet.servers
        if spec.public_key and spec.status == "online" and spec.wireguard_status == "online"
    )


def config_for(fake: FakeApi, pki: Pki) -> Config:
    host, port = fake.addresses[0]
    api = ApiConfig(
        addresses=(ip_address(host),), port=port, ca_file=pki.ca_cert, timeout=5.0, attempts=1
    )
    return replace(Config(), api=api, dns=replace(DnsConfig(), servers=(ip_address(DNS),)))


def sections(text: str) -> dict[str, dict[str, str]]:
    """The wg-quick file as {section: {key: value}} (comments dropped)."""
    parsed: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = parsed.setdefault(line[1:-1], {})
        elif "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return parsed


async def test_writes_a_wg_quick_file_for_the_server(
    fake: FakeApi, pki: Pki, fleet: Fleet, tmp_path: Path
) -> None:
    spec = usable(fleet)
    output = tmp_path / "nordlynx.conf"
    token = default_token()
    short = spec.hostname.split(".")[0].upper()
    written = await export_config(config_for(fake, pki), short, output, token=Secret(token))
    assert written == spec.hostname
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    conf = sections(output.read_text())
    assert conf["Interface"] == {
        "PrivateKey": fleet.tokens[token],
        "Address": "10.5.0.2/32",
        "DNS": DNS,
    }
    assert conf["Peer"] == {
        "PublicKey": spec.public_key,
        "AllowedIPs": "0.0.0.0/0",
        "Endpoint": f"{spec.station}:51820",
        "PersistentKeepalive": "25",
    }
    assert f"# {spec.hostname} (" in output.read_text()
    # The token went to the API as a credential, never into the file.
    assert token not in output.read_text()
    assert next(r for r in fake.requests if r[1] == "/v1/users/services/credentials")[3]


async def test_replaces_an_existing_file_keeping_it_private(
    fake: FakeApi, pki: Pki, fleet: Fleet, tmp_path: Path
) -> None:
    output = tmp_path / "old.conf"
    output.write_text("stale\n")
    output.chmod(0o644)
    await export_config(
        config_for(fake, pki), usable(fleet).hostname, output, token=Secret(default_token())
    )
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert "stale" not in output.read_text()
    assert os.listdir(tmp_path) == ["old.conf"]  # no temporary file left behind


def test_a_failed_write_is_named_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nordwgd.provider.nordvpn import export

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export.os, "fsync", disk_full)
    output = tmp_path / "nord.conf"
    with pytest.raises(errors.InvalidArgument) as raised:
        export.write_private(output, "[Interface]\n")
    assert str(raised.value) == f"cannot write {output}: No space left on device"
    assert os.listdir(tmp_path) == []


async def test_unknown_server_names_close_matches_and_writes_nothing(
    fake: FakeApi, pki: Pki, fleet: Fleet, tmp_path: Path
) -> None:
    spec = usable(fleet)
    typo = spec.hostname.replace(".nordvpn.com", "9.nordvpn.com")
    output = tmp_path / "x.conf"
    with pytest.raises(errors.UnknownLocation) as raised:
        await export_config(config_for(fake, pki), typo, output, token=Secret(default_token()))
    assert "did you mean" in str(raised.value)
    assert not output.exists()


async def test_refused_token_is_auth_failed(
    fake: FakeApi, pki: Pki, fleet: Fleet, tmp_path: Path
) -> None:
    output = tmp_path / "x.conf"
    with pytest.raises(errors.AuthFailed):
        await export_config(
            config_for(fake, pki), usable(fleet).hostname, output, token=Secret("0f" * 32)
        )
    assert not output.exists()


async def test_without_a_token_is_not_logged_in(
    fake: FakeApi, pki: Pki, fleet: Fleet, tmp_path: Path
) -> None:
    config = replace(config_for(fake, pki), paths=replace(Config().paths, state_dir=tmp_path))
    with pytest.raises(errors.NotLoggedIn):
        await export_config(config, usable(fleet).hostname, tmp_path / "x.conf")


# The command line (root: it marks the API sockets like the daemon) ------------------------


def _command_config(fake: FakeApi, pki: Pki, directory: Path, token: str | None) -> Path:
    host, port = fake.addresses[0]
    values: dict[str, object] = {
        "dns": {"servers": [DNS]},
        "api": {"addresses": [host], "port": port, "ca_file": str(pki.ca_cert), "attempts": 1},
        "paths": {"state_dir": str(directory / "state"), "runtime_dir": str(directory / "run")},
    }
    if token is not None:
        token_file = directory / "token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        values["token_file"] = str(token_file)
    path = directory / "nordwgd.toml"
    path.write_text(to_toml(values))
    return path


def _nordwgd(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", "--"]
    return subprocess.run(
        [*(prefix if user else []), PYTHON, "-m", "nordwgd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)},
    )


@pytest.mark.root
def test_command_writes_the_file(fake: FakeApi, pki: Pki, fleet: Fleet, tmp_path: Path) -> None:
    token = default_token()
    config = _command_config(fake, pki, tmp_path, token)
    output = tmp_path / "out.conf"
    spec = usable(fleet)
    result = _nordwgd(
        "export-config", "--config", str(config), "--server", spec.hostname, "--output", str(output)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"wrote {output} for {spec.hostname} (mode 0600: it holds the private key)"
    )
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert sections(output.read_text())["Interface"]["PrivateKey"] == fleet.tokens[token]
    assert token not in result.stdout + result.stderr
    assert fleet.tokens[token] not in result.stdout + result.stderr


@pytest.mark.root
@pytest.mark.parametrize(
    ("server", "token", "code", "message"),
    [
        ("xx9999", "default", 2, "nordwgd export-config: unknown server 'xx9999'"),
        (None, None, 5, "nordwgd export-config: not logged in: no NordVPN access token"),
        (None, "0f" * 32, 1, "nordwgd export-config: AuthFailed: "),
    ],
)
def test_command_errors_are_one_line(
    fake: FakeApi,
    pki: Pki,
    fleet: Fleet,
    tmp_path: Path,
    server: str | None,
    token: str | None,
    code: int,
    message: str,
) -> None:
    config = _command_config(fake, pki, tmp_path, default_token() if token == "default" else token)
    output = tmp_path / "out.conf"
    result = _nordwgd(
        "export-config",
        "--config",
        str(config),
        "--server",
        server or usable(fleet).hostname,
        "--output",
        str(output),
    )
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert not output.exists()


@pytest.mark.root
def test_command_refuses_non_root(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    result = _nordwgd(
        "export-config", "--server", "de1001", "--output", str(tmp_path / "x"), user="nobody"
    )
    assert result.returncode == 4
    assert (
        result.stderr.strip()
        == "nordwgd export-config: must run as root (it reads the access token)"
    )
    assert not (tmp_path / "x").exists()


def test_command_usage_errors_exit_2() -> None:
    result = _nordwgd("export-config", "--server", "de1001")
    assert result.returncode == 2
    assert "--output" in result.stderr
    assert "Traceback" not in result.stderr
