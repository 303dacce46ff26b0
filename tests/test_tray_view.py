"""The tray's pure parts: view, notifications, menu and icon lookup, as tables."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nordwgd_tray.icons import IconSet
from nordwgd_tray.menu import Actions, build_menu, recent_countries
from nordwgd_tray.view import DaemonView, Situation, notice_for, state_line, tooltip

SERVER = {
    "hostname": "de1001.nordvpn.com",
    "name": "Germany #1001",
    "city": "Frankfurt",
    "country": "Germany",
}


def view(**properties: object) -> DaemonView:
    base: dict[str, object] = {"State": "disconnected", "Blocking": "open", "Lockdown": False}
    base.update(properties)
    return DaemonView.from_properties(base)


CONNECTED = view(
    State="connected", Blocking="blocked", Server=SERVER, ConnectedSince=1_700_000_000_000_000
)


@pytest.mark.parametrize(
    ("the_view", "situation", "line"),
    [
        (DaemonView(), Situation.ABSENT, "nordwgd is not running"),
        (view(), Situation.OPEN, "Disconnected"),
        (
            view(Blocking="blocked", Lockdown=True),
            Situation.BLOCKED,
            "Disconnected, traffic blocked (lockdown)",
        ),
        (
            view(State="connecting", Blocking="blocked", Server=SERVER),
            Situation.CONNECTING,
            "Connecting to Germany #1001 (Frankfurt)…",
        ),
        (view(State="reconnecting", Blocking="blocked"), Situation.CONNECTING, "Reconnecting…"),
        (CONNECTED, Situation.CONNECTED, "Connected to Germany #1001 (Frankfurt)"),
        (
            view(State="error", ErrorCause="auth-failed", Blocking="blocked"),
            Situation.ERROR,
            "Error: the NordVPN account refused the access token (traffic blocked)",
        ),
        (
            view(State="error", Blocking="block-failed"),
            Situation.ERROR,
            "Error: the firewall could not be applied",
        ),
        (
            view(State="teleporting", Blocking="weird"),
            Situation.BLOCKED,
            "State unknown (traffic may be blocked)",
        ),
    ],
)
def test_situation_and_state_line(the_view: DaemonView, situation: Situation, line: str) -> None:
    assert the_view.situation is situation
    assert state_line(the_view) == line


def test_tooltip_has_server_since_and_transfer() -> None:
    title, body = tooltip(CONNECTED, (2048, 10))
    assert title == "NordVPN: Connected to Germany #1001 (Frankfurt)"
    assert "Server: de1001.nordvpn.com" in body
    assert "Connected since 2023-11-" in body
    assert "Transfer: 2.0 KiB in, 10 B out" in body


@pytest.mark.parametrize(
    ("before", "after", "last_host", "summary"),
    [
        (view(State="connecting"), CONNECTED, "", "VPN connected"),
        (view(State="reconnecting"), CONNECTED, "se1.nordvpn.com", "VPN switched server"),
        (CONNECTED, CONNECTED, "de1001.nordvpn.com", None),
        (CONNECTED, view(), "de1001.nordvpn.com", "VPN disconnected"),
        (
            view(State="connecting"),
            view(State="error", ErrorCause="no-server"),
            "",
            "VPN connection failed",
        ),
        (
            view(State="error", ErrorCause="no-server"),
            view(State="error", ErrorCause="no-server"),
            "",
            None,
        ),
        (view(), DaemonView(), "", "VPN service stopped"),
        (DaemonView(), view(), "", None),
        (view(), view(AllowLan=True), "", None),
    ],
)
def test_notices(
    before: DaemonView, after: DaemonView, last_host: str, summary: str | None
) -> None:
    notice = notice_for(before, after, last_host)
    assert (notice.summary if notice else None) == summary


def test_error_notice_says_the_cause_in_words() -> None:
    notice = notice_for(view(State="connecting"), view(State="error", ErrorCause="no-server"), "")
    assert notice is not None
    assert notice.body == "No server matches the chosen location. Traffic stays blocked."


def _actions() -> Actions:
    def nothing(*_args: object) -> None:
        return None

    return Actions(nothing, nothing, nothing, nothing, nothing, nothing, nothing)


def test_recent_countries_come_first_most_recent_first() -> None:
    countries = [("DE", "Germany", "81"), ("SE", "Sweden", "208"), ("US", "United States", "228")]
    recent = view(
        RecentLocations=[
            {"country": "SE"},
            {"country": "germany", "city": "Berlin"},
            {"country": "SE"},
            {"country": "Atlantis"},
        ]
    )
    assert recent_countries(recent, countries) == [countries[1], countries[0]]
    menu = build_menu(recent, countries, _actions())
    submenu = next(item for item in menu if item.label == "Countries").children
    labels = [item.label for item in submenu]
    assert labels == ["Sweden", "Germany", "", "Germany", "Sweden", "United States"]


def test_menu_entries_are_enabled_by_state() -> None:
    enabled = {i.label: i.enabled for i in build_menu(CONNECTED, [], _actions())}
    assert enabled["Quick connect"] is False and enabled["Reconnect"] is True
    absent = {i.label: i.enabled for i in build_menu(DaemonView(), [], _actions())}
    assert absent["Disconnect"] is False and absent["Countries"] is False


def test_icon_lookup_prefers_the_theme_and_falls_back_to_ours(tmp_path: Path) -> None:
    status = tmp_path / "Adwaita" / "scalable" / "status"
    status.mkdir(parents=True)
    (status / "network-vpn-symbolic.svg").write_text("<svg/>")
    breeze = tmp_path / "breeze" / "status" / "22"
    breeze.mkdir(parents=True)
    (breeze / "network-error-symbolic.svg").write_text("<svg/>")
    icons = IconSet.discover([tmp_path, tmp_path / "missing"])
    assert icons.name(Situation.CONNECTED) == "network-vpn-symbolic"
    assert icons.name(Situation.ERROR) == "network-error-symbolic"
    assert icons.name(Situation.BLOCKED) == "nordwgd-blocked"
    assert IconSet.discover([tmp_path], prefer_own=True).name(Situation.CONNECTED) == (
        "nordwgd-connected"
    )
    repo_icons = Path(__file__).resolve().parents[1] / "data" / "icons"
    assert icons.theme_path == str(repo_icons)
    for situation in Situation:
        assert (repo_icons / "hicolor/scalable/status" / f"nordwgd-{situation.value}.svg").is_file()


@pytest.mark.root
def test_an_unreadable_icon_directory_is_a_missing_theme() -> None:
    # A user's tray meets icon directories it may not read (another user's HOME): EACCES there
    # means "no such theme", not a crash at start.
    with tempfile.TemporaryDirectory() as top:
        base = Path(top)
        base.chmod(0o755)
        (base / "locked" / "Adwaita" / "scalable" / "status").mkdir(parents=True)
        (base / "locked").chmod(0o700)
        code = (
            "import sys; from pathlib import Path; from nordwgd_tray.icons import theme_has;"
            f"print(theme_has('network-vpn-symbolic', [Path('{base}/locked')]))"
        )
        result = subprocess.run(
            [
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "--",
                sys.executable,
                "-c",
                code,
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
            env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        assert result.stdout.strip() == "False", result.stderr
