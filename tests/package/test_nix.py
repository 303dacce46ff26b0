"""packaging/nix: the package and the NixOS module parse, and the module evaluates as intended.

Debian's nix-bin (2.8) has no nixpkgs, so nothing is built and the module is evaluated against
packaging/nix/tests/stand-in.nix, a small stand-in for the parts of nixpkgs' lib and of the
module system that the module uses (no type checks, no list merging). Building the package and
a NixOS VM test are not done here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
NIX = REPO / "packaging" / "nix"

pytestmark = pytest.mark.slow


def _nix(*args: str) -> str:
    if shutil.which("nix-instantiate") is None:
        pytest.fail("nix-instantiate is not installed (apt-get install nix-bin)")
    result = subprocess.run(
        ["nix-instantiate", "--readonly-mode", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def evaluated() -> dict[str, Any]:
    out = _nix("--eval", "--strict", "--json", str(NIX / "tests" / "module-test.nix"))
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.mark.parametrize(
    "name", ["package.nix", "module.nix", "tests/stand-in.nix", "tests/module-test.nix"]
)
def test_parses(name: str) -> None:
    assert _nix("--parse", str(NIX / name)).strip()


def test_disabled_module_sets_nothing(evaluated: dict[str, Any]) -> None:
    assert evaluated["disabled_sets_nothing"] is True


def test_enabled_module_installs_and_starts_everything(evaluated: dict[str, Any]) -> None:
    plain = evaluated["plain"]
    assert plain["wanted_by"] == ["multi-user.target"]
    assert plain["killswitch_wanted_by"] == ["sysinit.target"]
    assert plain["timers"] == ["nordwgd-health", "nordwgd-renew"]
    assert plain["dbus"] == ["nordwgd"]
    assert plain["polkit"] is True
    # No options beyond enable: the shipped unit as it is, the daemon's defaults.
    assert plain["service_config"] == {}
    assert tomllib.loads(plain["toml"]) == {}


def test_settings_lockdown_and_namespace_are_rendered_as_toml(evaluated: dict[str, Any]) -> None:
    rendered = tomllib.loads(evaluated["full"]["toml"])
    assert rendered == {
        "location": {"country": ["Germany"]},
        "network": {
            "allow_lan": True,
            "lockdown": True,  # the lockdown option wins over settings.network.lockdown
            "mode": "namespace",
            "namespace": "vpn",
        },
        "health": {"interval": 30},
    }
    assert evaluated["full"]["restart_triggers"] == ["nordwgd.toml"]


def test_the_token_arrives_as_a_credential(evaluated: dict[str, Any]) -> None:
    # The empty entry resets the unit's own optional credential before adding the file.
    assert evaluated["full"]["credential"] == ["", "token:/run/secrets/nordvpn-token"]


def test_namespace_mode_relaxes_the_unit_as_the_shipped_drop_in_does(
    evaluated: dict[str, Any],
) -> None:
    full = evaluated["full"]
    assert full["protect_system"] == "no"
    assert full["capabilities"] == ["CAP_NET_ADMIN CAP_NET_RAW CAP_SYS_ADMIN"]
    dropin = (REPO / "data" / "systemd" / "namespace-mode.conf").read_text()
    module = (NIX / "module.nix").read_text()
    for key in re.findall(r"^(\w+)=", dropin, re.M):
        assert f"{key} = " in module, f"namespace-mode.conf sets {key}; the module does not"


def test_services_join_the_tunnels_namespace(evaluated: dict[str, Any]) -> None:
    assert evaluated["full"]["in_tunnel"] == {
        "after": ["nordwgd.service"],
        "bindsTo": ["nordwgd.service"],
        "serviceConfig": {"NetworkNamespacePath": "/run/netns/vpn"},
    }
    assert evaluated["full"]["assertions"] == [True]


def test_the_package_depends_on_what_pyproject_declares() -> None:
    package = (NIX / "package.nix").read_text()
    listed = re.search(r"dependencies = with python3Packages; \[(.*?)\];", package, re.S)
    assert listed is not None
    names = set(listed.group(1).split())
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {re.split(r"[<>=!~ ]", line)[0] for line in declared}
    # nixpkgs' attribute names; nftables and systemd are the distribution's bindings.
    assert names == wanted | {"nftables", "systemd"}
