"""The shipped unit files, bus policy, polkit actions and installer, checked with real tools."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNITS = sorted((REPO / "units").glob("nordwgd*.*"))
SERVICES = [unit for unit in UNITS if unit.suffix == ".service"]
INSTALL = REPO / "packaging" / "install.sh"
MAX_EXPOSURE = 3.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def unit_sections(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def test_all_units_are_shipped() -> None:
    assert [unit.name for unit in UNITS] == [
        "nordwgd-health.service",
        "nordwgd-health.timer",
        "nordwgd-killswitch.service",
        "nordwgd-renew.service",
        "nordwgd-renew.timer",
        "nordwgd.service",
    ]


def test_main_service_contract() -> None:
    service = unit_sections(REPO / "units" / "nordwgd.service")["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["BusName"] == "org.nordwgd.Nordwgd1"
    assert service["ExecStart"] == "/usr/bin/nordwgd"
    assert service["StateDirectory"] == "nordwgd"
    assert "nordwgd" in service["RuntimeDirectory"].split()
    assert service["RuntimeDirectoryPreserve"] == "yes"
    assert service["Restart"] == "on-failure"  # covers watchdog timeouts too
    assert service["WatchdogSec"] == "30s"
    assert set(service["CapabilityBoundingSet"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert service["DeviceAllow"] == "/dev/net/tun rw"


def test_killswitch_runs_before_the_network() -> None:
    unit = unit_sections(REPO / "units" / "nordwgd-killswitch.service")
    assert unit["Unit"]["DefaultDependencies"] == "no"
    assert "network-pre.target" in unit["Unit"]["Before"].split()
    assert "network-pre.target" in unit["Unit"]["Wants"].split()
    assert unit["Service"]["Type"] == "oneshot"
    assert unit["Service"]["RemainAfterExit"] == "yes"
    assert unit["Install"]["WantedBy"] == "sysinit.target"


@pytest.mark.parametrize(
    ("timer", "expected"),
    [
        ("nordwgd-renew.timer", {"OnCalendar": "monthly", "Persistent": "true"}),
        ("nordwgd-health.timer", {"OnBootSec": "5min", "OnUnitActiveSec": "5min"}),
    ],
)
def test_timers(timer: str, expected: dict[str, str]) -> None:
    section = unit_sections(REPO / "units" / timer)["Timer"]
    for key, value in expected.items():
        assert section[key] == value
    assert "RandomizedDelaySec" in section
    service = REPO / "units" / timer.replace(".timer", ".service")
    start = unit_sections(service)["Service"]["ExecStart"]
    member = "Renew" if "renew" in timer else "CheckHealth"
    assert start.endswith(f"org.nordwgd.Nordwgd1.Manager {member}")


@needs_analyze
@pytest.mark.parametrize("unit", SERVICES, ids=lambda path: path.name)
def test_security_exposure(unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    print(f"{unit.name}: exposure {score} (limit {MAX_EXPOSURE})")
    assert score <= MAX_EXPOSURE


def run_install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INSTALL), "--root", str(root), "--python", sys.executable, *args],
        capture_output=True,
        text=True,
        check=True,
    )


def test_install_into_a_root(tmp_path: Path) -> None:
    run_install(tmp_path)
    expected = [
        "usr/bin/nordwgd",
        "usr/bin/nordwgctl",
        "usr/bin/nordwgd-killswitch",
        "usr/lib/systemd/system/nordwgd.service",
        "usr/lib/systemd/system/nordwgd-renew.timer",
        "usr/share/dbus-1/system.d/org.nordwgd.Nordwgd1.conf",
        "usr/share/dbus-1/system-services/org.nordwgd.Nordwgd1.service",
        "usr/share/polkit-1/actions/org.nordwgd.nordwgd1.policy",
        "usr/bin/nordwgd-tray",
        "etc/xdg/autostart/nordwgd-tray.desktop",
        "usr/share/applications/nordwgd-tray.desktop",
        "usr/share/icons/hicolor/scalable/status/nordwgd-connected.svg",
        "usr/share/icons/hicolor/scalable/status/nordwgd-error.svg",
    ]
    for name in expected:
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "usr/bin/nordwgd").stat().st_mode & 0o777 == 0o755
    assert not (tmp_path / "usr/share/polkit-1/rules.d").exists()
    if (REPO / "data/nordwgd.toml.example").exists():
        assert (tmp_path / "etc/nordwgd/nordwgd.toml").read_bytes() == (
            REPO / "data/nordwgd.toml.example"
        ).read_bytes()
    # The installed commands run the package.
    version = subprocess.run(
        [str(tmp_path / "usr/bin/nordwgd"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.startswith("nordwgd ")
    tray = subprocess.run(
        [str(tmp_path / "usr/bin/nordwgd-tray"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert tray.stdout.startswith("usage: nordwgd-tray")


def test_install_keeps_an_existing_config(tmp_path: Path) -> None:
    config = tmp_path / "etc/nordwgd/nordwgd.toml"
    config.parent.mkdir(parents=True)
    config.write_text("# mine\n")
    run_install(tmp_path, "--with-netdev-rule")
    assert config.read_text() == "# mine\n"
    assert (tmp_path / "usr/share/polkit-1/rules.d/50-org.nordwgd.nordwgd1.rules").is_file()


def test_install_rewrites_paths_for_another_prefix(tmp_path: Path) -> None:
    run_install(tmp_path, "--prefix", "/opt/nordwgd", "--no-config")
    service = tmp_path / "etc/systemd/system/nordwgd.service"
    assert "ExecStart=/opt/nordwgd/bin/nordwgd\n" in service.read_text()
    killswitch = (tmp_path / "etc/systemd/system/nordwgd-killswitch.service").read_text()
    assert "ExecStart=/opt/nordwgd/bin/nordwgd-killswitch\n" in killswitch
    assert (tmp_path / "opt/nordwgd/bin/nordwgctl").is_file()
    assert not (tmp_path / "etc/nordwgd/nordwgd.toml").exists()


def test_install_rejects_unknown_options(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(INSTALL), "--root", str(tmp_path), "--frobnicate"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown option: --frobnicate" in result.stderr


@needs_analyze
def test_verify_installed_units(tmp_path: Path) -> None:
    """systemd-analyze verify against the host's units, with the commands really present."""
    run_install(tmp_path)
    unit_dir = tmp_path / "verify"
    unit_dir.mkdir()
    installed = tmp_path / "usr/lib/systemd/system"
    for unit in installed.iterdir():
        # verify checks that ExecStart= binaries exist on this machine: point at the root.
        text = unit.read_text().replace("/usr/bin/nordwgd", f"{tmp_path}/usr/bin/nordwgd")
        (unit_dir / unit.name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", *sorted(str(path) for path in unit_dir.iterdir())],
        capture_output=True,
        text=True,
        check=False,
        env={"SYSTEMD_UNIT_PATH": f"{unit_dir}:", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # verify prints warnings for unit problems without always failing; none may concern ours.
    ours = [line for line in result.stderr.splitlines() if "nordwgd" in line]
    assert ours == []


def test_bus_policy() -> None:
    config = ET.parse(REPO / "dbus/org.nordwgd.Nordwgd1.conf").getroot()
    policies = {
        (policy.get("user") or policy.get("context")): [
            (rule.tag, dict(rule.attrib)) for rule in policy
        ]
        for policy in config.iter("policy")
    }
    assert ("allow", {"own": "org.nordwgd.Nordwgd1"}) in policies["root"]
    assert ("deny", {"own": "org.nordwgd.Nordwgd1"}) in policies["default"]
    assert ("allow", {"send_destination": "org.nordwgd.Nordwgd1"}) in policies["default"]
    # Nobody but root may own the name.
    owners = [
        who
        for who, rules in policies.items()
        if ("allow", {"own": "org.nordwgd.Nordwgd1"}) in rules
    ]
    assert owners == ["root"]


def test_activation_file() -> None:
    activation = unit_sections(REPO / "dbus/org.nordwgd.Nordwgd1.service")["D-BUS Service"]
    assert activation["Name"] == "org.nordwgd.Nordwgd1"
    assert activation["SystemdService"] == "nordwgd.service"
    assert activation["User"] == "root"


def test_polkit_actions() -> None:
    policy = ET.parse(REPO / "data/polkit/org.nordwgd.nordwgd1.policy").getroot()
    actions = {action.get("id"): action for action in policy.iter("action")}
    assert set(actions) == {
        "org.nordwgd.nordwgd1.control",
        "org.nordwgd.nordwgd1.configure",
        "org.nordwgd.nordwgd1.diagnose",
    }
    for action in actions.values():
        assert (action.findtext("description") or "").strip()
        assert (action.findtext("message") or "").strip()

    def defaults(action_id: str) -> dict[str, str]:
        node = actions[action_id].find("defaults")
        assert node is not None
        return {child.tag: (child.text or "").strip() for child in node}

    assert defaults("org.nordwgd.nordwgd1.control") == {
        "allow_any": "auth_admin",
        "allow_inactive": "yes",
        "allow_active": "yes",
    }
    assert set(defaults("org.nordwgd.nordwgd1.configure").values()) == {"auth_admin_keep"}
    # Reading the system's network details: the seat's user, else an administrator.
    assert defaults("org.nordwgd.nordwgd1.diagnose") == {
        "allow_any": "auth_admin_keep",
        "allow_inactive": "auth_admin_keep",
        "allow_active": "yes",
    }


# --- the early-boot kill switch entry, on the paths that never touch the firewall ------------


def run_killswitch(config: Path) -> subprocess.CompletedProcess[str]:
    # In a network namespace of its own: a kill switch that blocked here would cut the
    # machine off (it reads /var/lib/nordwgd when the config names no state directory).
    argv = ["unshare", "--net", "--", sys.executable, "-m", "nordwgd.killswitch"]
    return subprocess.run(
        [*argv, "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )


def test_killswitch_does_nothing_without_lockdown(tmp_path: Path) -> None:
    config = tmp_path / "nordwgd.toml"
    config.write_text("[network]\nlockdown = false\n")
    result = run_killswitch(config)
    assert result.returncode == 0, result.stderr
    assert "lockdown is off; nothing blocked" in result.stderr


def test_killswitch_reports_a_bad_config_and_blocks_nothing(tmp_path: Path) -> None:
    config = tmp_path / "nordwgd.toml"
    config.write_text("[network]\nlockdown = 'sometimes'\n")
    result = run_killswitch(config)
    assert result.returncode == 78  # EX_CONFIG
    assert str(config) in result.stderr
    assert "lockdown" in result.stderr
    assert "nothing blocked" in result.stderr
    assert "Traceback" not in result.stderr


def test_killswitch_policy_is_the_error_policy() -> None:
    from nordwgd.config import Config, NetworkConfig
    from nordwgd.killswitch import blocking_policy

    assert blocking_policy(Config()) is None
    policy = blocking_policy(Config(network=NetworkConfig(lockdown=True)))
    assert policy is not None
    assert policy.blocking == "blocked"
    assert policy.state == "error"
    assert policy.endpoint is None
    assert policy.tunnel_interface is None
    assert policy.api_addresses  # the API pinhole stays so the daemon can recover


@pytest.mark.root
def test_killswitch_refuses_to_run_unprivileged(tmp_path: Path) -> None:
    config = tmp_path / "nordwgd.toml"
    config.write_text("[network]\nlockdown = true\n")
    config.chmod(0o644)
    tmp_path.chmod(0o755)
    result = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         sys.executable, "-m", "nordwgd.killswitch", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        cwd="/",
    )  # fmt: skip
    assert result.returncode == 77, result.stderr
    assert result.stderr.strip() == "nordwgd-killswitch: must run as root (it changes the firewall)"
