"""Firewall commands end: a held xtables lock or a hung tool fails the change, closed.

``iptables-restore -w`` without a number waits for the lock for ever, and the daemon with it.
The tools here are stand-ins on PATH (nothing touches the system's firewall): a restore that
never ends, as one stuck behind a lock would.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from nordwgd.errors import FirewallFailed
from nordwgd.firewall import apply
from nordwgd.firewall.policy import FirewallPolicy

SAVE = "#!/bin/sh\necho '*filter'\necho 'COMMIT'\n"
# Records its arguments, then waits as if another program held the xtables lock.
HANGING_RESTORE = '#!/bin/sh\necho "$@" >> "$(dirname "$0")/argv"\nexec sleep 600\n'


def _tool(directory: Path, name: str, text: str) -> None:
    path = directory / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def hanging_iptables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for family in ("iptables", "ip6tables"):
        _tool(tmp_path, f"{family}-legacy-save", SAVE)
        _tool(tmp_path, f"{family}-legacy-restore", HANGING_RESTORE)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(apply, "COMMAND_TIMEOUT", 0.5, raising=False)
    return tmp_path


async def test_a_restore_stuck_on_the_lock_fails_the_change(hanging_iptables: Path) -> None:
    engine = apply._IptablesEngine()
    policy = FirewallPolicy(state="error", block=True)
    async with asyncio.timeout(30):  # without a deadline the apply never ends
        with pytest.raises(FirewallFailed, match="no answer"):
            await engine.apply(policy)
    argv = (hanging_iptables / "argv").read_text().split()
    wait = argv[argv.index("-w") + 1]
    assert wait.isdigit() and 0 < int(wait) < apply.COMMAND_TIMEOUT + 30, argv


async def test_a_command_that_ends_is_not_cut(tmp_path: Path) -> None:
    rc, out, err = await apply._run(["sh", "-c", "cat; echo done >&2"], "input")
    assert (rc, out, err.strip()) == (0, "input", "done")
