"""The early-boot kill switch fails closed on a broken config: a stored Lockdown blocks whatever
the config says, a config that is TOML but invalid elsewhere still has its `network.lockdown`
read, and only when nothing can tell whether lockdown is wanted does traffic stay open, loudly.

``python -m nordwgd.killswitch`` runs as root in a network namespace made for each case (never
the machine's own), the way nordwgd-killswitch.service runs it at boot.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nordwgd.testing.netns import create_netns, delete_netns, unique_name
from tests.fixtures_dbus import PYTHON, REPO
from tests.security.ledger import ScenarioRecorder

pytestmark = pytest.mark.root

VALID = "[network]\nlockdown = {lockdown}\n"
# TOML that parses, with a value the config check refuses (health.attempts must be >= 1)
INVALID_ELSEWHERE = "[network]\nlockdown = {lockdown}\n\n[health]\nattempts = 0\n"
NOT_TOML = "[network\nlockdown = = true\n"


@dataclass(frozen=True)
class Case:
    config: str  # the config text, ``{lockdown}`` and ``{state_dir}`` filled in
    config_lockdown: bool
    stored: str | None  # settings.json content, None: nothing stored
    blocks: bool
    exit_code: int


CASES = {
    "stored lockdown, valid config without it": Case(VALID, False, '{"lockdown": true}', True, 0),
    "stored lockdown, config invalid elsewhere": Case(
        INVALID_ELSEWHERE, False, '{"lockdown": true, "allow_lan": false}', True, 78
    ),
    "config lockdown, config invalid elsewhere": Case(INVALID_ELSEWHERE, True, None, True, 78),
    "stored lockdown, config not TOML": Case(NOT_TOML, False, '{"lockdown": true}', True, 78),
    "unreadable stored choice, config not TOML": Case(NOT_TOML, False, "{not json", True, 78),
    "stored lockdown off wins over the config": Case(
        INVALID_ELSEWHERE, True, '{"lockdown": false}', False, 78
    ),
    "no lockdown anywhere, config invalid elsewhere": Case(
        INVALID_ELSEWHERE, False, None, False, 78
    ),
    "nothing can tell": Case(NOT_TOML, False, None, False, 78),
}


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (a network namespace and nftables)")
    name = unique_name("nwgt-ks", limit=40)
    create_netns(name)
    try:
        yield name
    finally:
        delete_netns(name)


def _run_killswitch(netns: str, config: Path, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "PYTHONPATH": str(REPO),
        # what systemd sets for a unit with StateDirectory=, used when the config cannot say
        "STATE_DIRECTORY": str(state_dir),
    }
    argv = ["ip", "netns", "exec", netns, PYTHON, "-m", "nordwgd.killswitch", "--config"]
    return subprocess.run(
        [*argv, str(config)], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def _blocking(netns: str) -> bool:
    listing = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "list", "table", "inet", "nordwgd"],
        capture_output=True,
        text=True,
        check=False,
    )
    return listing.returncode == 0 and "policy drop" in listing.stdout


@pytest.mark.parametrize("name", list(CASES))
def test_boot_kill_switch_reads_lockdown_through_a_broken_config(
    netns: str, tmp_path: Path, ledger: ScenarioRecorder, name: str
) -> None:
    case = CASES[name]
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    if case.stored is not None:
        (state_dir / "settings.json").write_text(case.stored)
    text = case.config.format(lockdown=str(case.config_lockdown).lower())
    if case.config is not NOT_TOML:
        text += f'\n[paths]\nstate_dir = "{state_dir}"\n'
    config = tmp_path / "nordwgd.toml"
    config.write_text(text)
    if case.exit_code:
        ledger.bad_inputs()

    result = _run_killswitch(netns, config, state_dir)

    assert result.returncode == case.exit_code, result.stderr
    assert _blocking(netns) is case.blocks, result.stderr
    assert "Traceback" not in result.stderr
    if case.exit_code:
        assert str(config) in result.stderr  # the problem is named, with the file
    if not case.blocks and case.config is NOT_TOML:
        assert "nothing tells whether lockdown is wanted: nothing blocked" in result.stderr


def test_state_directory_from_the_environment_only_when_the_config_cannot_say(
    tmp_path: Path,
) -> None:
    from nordwgd.killswitch import read_inputs

    stored = tmp_path / "stored"
    stored.mkdir()
    (stored / "settings.json").write_text(json.dumps({"lockdown": True}))
    broken = tmp_path / "broken.toml"
    broken.write_text(NOT_TOML)
    inputs = read_inputs(broken, {"STATE_DIRECTORY": str(stored)})
    assert inputs.settings is not None and inputs.settings.lockdown
    assert inputs.problem is not None and str(broken) in inputs.problem
    assert read_inputs(broken, {}).config.paths.state_dir == Path("/var/lib/nordwgd")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    invalid = tmp_path / "invalid.toml"
    invalid.write_text(
        INVALID_ELSEWHERE.format(lockdown="false") + f'\n[paths]\nstate_dir = "{elsewhere}"\n'
    )
    inputs = read_inputs(invalid, {"STATE_DIRECTORY": str(stored)})
    assert inputs.config.paths.state_dir == elsewhere
    assert inputs.settings is not None and not inputs.settings.lockdown
