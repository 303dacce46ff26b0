"""The STATUS= line that `systemctl status nordwgd` shows, and what a stop keeps."""

from __future__ import annotations

import pytest

from nordwgd.daemon import status_line
from nordwgd.machine import keep_blocking_on_stop
from nordwgd.states import Blocking, ErrorCause, State
from nordwgd.status import Status
from tests.fixtures_dbus import sample_server

SERVER = sample_server(city="Frankfurt", country="Germany")


@pytest.mark.parametrize(
    ("status", "line"),
    [
        (
            Status(state=State.CONNECTED, blocking=Blocking.BLOCKED, server=SERVER),
            "connected to de1001.nordvpn.com (Frankfurt, Germany); "
            "traffic outside the tunnel blocked",
        ),
        (
            Status(state=State.CONNECTING, blocking=Blocking.BLOCKED, server=SERVER),
            "connecting to de1001.nordvpn.com (Frankfurt, Germany); "
            "traffic outside the tunnel blocked",
        ),
        (
            Status(state=State.CONNECTING, blocking=Blocking.BLOCKED),
            "connecting; traffic outside the tunnel blocked",
        ),
        (
            Status(
                state=State.ERROR, error_cause=ErrorCause.AUTH_FAILED, blocking=Blocking.BLOCKED
            ),
            "error: auth-failed; traffic outside the tunnel blocked",
        ),
        (
            Status(
                state=State.ERROR,
                error_cause=ErrorCause.FIREWALL_FAILED,
                blocking=Blocking.BLOCK_FAILED,
            ),
            "error: firewall-failed; FIREWALL FAILED, check the journal",
        ),
        (Status(), "disconnected; traffic open"),
        (
            Status(blocking=Blocking.BLOCKED, lockdown=True),
            "disconnected; traffic outside the tunnel blocked",
        ),
    ],
)
def test_status_line(status: Status, line: str) -> None:
    assert status_line(status) == line


@pytest.mark.parametrize(
    ("status", "keep"),
    [
        (Status(), False),
        (Status(lockdown=True), True),
        (Status(state=State.CONNECTED), True),
        (Status(state=State.ERROR), True),
    ],
)
def test_keep_blocking_on_stop(status: Status, keep: bool) -> None:
    assert keep_blocking_on_stop(status) is keep
