"""The installed commands check their libraries first and name what is wrong in one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from nordwgd import launch

REPO = Path(__file__).resolve().parents[1]


def _pyproject_dependencies() -> dict[str, str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    found: dict[str, str] = {}
    for line in data["project"]["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(.*)", line)
        assert match, line
        found[match.group(1).lower()] = match.group(2)
    return found


def test_the_checked_versions_are_the_declared_ones() -> None:
    declared = _pyproject_dependencies()
    checked = {
        r.distribution: ">={},<{}".format(*(".".join(map(str, v)) for v in (r.minimum, r.below)))
        for r in launch.REQUIREMENTS
    }
    assert checked == declared


def test_every_command_a_unit_runs_is_a_console_script() -> None:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    scripts = set(data["project"]["scripts"])
    run_by_units = set()
    for unit in (REPO / "units").glob("*.service"):
        run_by_units |= set(
            re.findall(r"^Exec\w+=-?/usr/bin/(nordwg[\w-]*)", unit.read_text(), re.M)
        )
    assert run_by_units
    assert run_by_units <= scripts


def test_this_environment_passes() -> None:
    assert (
        launch.problems(
            [r.distribution for r in launch.REQUIREMENTS], launch._installed, launch._has_feature
        )
        == []
    )


def test_an_old_or_missing_library_is_named_with_the_version_needed() -> None:
    versions = {"anyio": "3.6.2", "dbus-fast": "4.1.0", "httpx": None}
    found = launch.problems(["anyio", "dbus-fast", "httpx"], versions.get, lambda requirement: True)
    assert found == [
        "anyio 3.6.2 is installed, nordwgd needs 4.10 or later, before 5",
        "httpx is not installed (nordwgd needs 0.27 or later, before 1)",
    ]


def test_a_next_major_version_is_refused() -> None:
    found = launch.problems(["dbus-fast"], lambda name: "6.0.1", lambda requirement: True)
    assert found == ["dbus-fast 6.0.1 is installed, nordwgd needs 4.0 or later, before 6"]


def test_metadata_that_lies_is_caught_by_the_feature_probe() -> None:
    found = launch.problems(["anyio"], lambda name: "4.11.0", lambda requirement: False)
    assert found == [
        "anyio 4.11.0 lacks anyio.abc.SocketStream.from_socket"
        " (nordwgd needs 4.10 or later, before 5)"
    ]


def _fake_anyio(site: Path, version: str) -> None:
    """An anyio of ``version`` without SocketStream.from_socket, as Debian 12's 3.6 is."""
    package = site / "anyio"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from . import abc\n")
    (package / "abc.py").write_text("class SocketStream:\n    pass\n")
    info = site / f"anyio-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: anyio\nVersion: {version}\n")


def test_the_daemon_stops_with_a_clear_message_on_an_old_anyio(tmp_path: Path) -> None:
    _fake_anyio(tmp_path, "3.6.2")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", "from nordwgd import launch; launch.daemon()"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == launch.EX_SOFTWARE
    assert "Traceback" not in result.stderr
    assert "nordwgd: anyio 3.6.2 is installed, nordwgd needs 4.10 or later, before 5" in (
        result.stderr
    )


def test_the_cli_does_not_need_the_daemons_libraries(tmp_path: Path) -> None:
    _fake_anyio(tmp_path, "3.6.2")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", "from nordwgd import launch; launch.cli()", "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert "anyio" not in result.stderr
