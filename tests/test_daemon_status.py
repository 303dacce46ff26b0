"""The STATUS= line that `systemctl status nordwgd` shows."""

from __future__ import annotations

import pytest

from nordwgd.daemon import status_line

SERVER = {"hostname": "de1001.nordvpn.com", "city": "Frankfurt", "country": "Germany"}


@pytest.mark.parametrize(
    ("properties", "line"),
    [
        (
            {"State": "connected", "Blocking": "blocked", "Server": SERVER},
            "connected to de1001.nordvpn.com (Frankfurt, Germany); "
            "traffic outside the tunnel blocked",
        ),
        (
            {"State": "connecting", "Blocking": "blocked", "Server": SERVER},
            "connecting to de1001.nordvpn.com (Frankfurt, Germany); "
            "traffic outside the tunnel blocked",
        ),
        (
            {"State": "connecting", "Blocking": "blocked", "Server": {}},
            "connecting; traffic outside the tunnel blocked",
        ),
        (
            {"State": "error", "ErrorCause": "auth-failed", "Blocking": "blocked"},
            "error: auth-failed; traffic outside the tunnel blocked",
        ),
        (
            {"State": "error", "ErrorCause": "firewall-failed", "Blocking": "block-failed"},
            "error: firewall-failed; FIREWALL FAILED, check the journal",
        ),
        ({"State": "disconnected", "Blocking": "open"}, "disconnected; traffic open"),
        (
            {"State": "disconnected", "Blocking": "blocked", "Lockdown": True},
            "disconnected; traffic outside the tunnel blocked",
        ),
    ],
)
def test_status_line(properties: dict[str, object], line: str) -> None:
    assert status_line(properties) == line
