"""The runtime journal: persisted before each change, 0600, tolerant of a corrupt file."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from nordwgd.files import write_atomic
from nordwgd.runstate import JOURNAL_NAME, Journal

LINK = {"step": "link", "ifname": "nordlynx", "backend": "userspace"}
RULE = {
    "step": "rule",
    "family": 4,
    "priority": 32765,
    "table": 51820,
    "fwmark": 51820,
    "invert": True,
}


def test_a_missing_record_is_an_empty_journal(tmp_path: Path) -> None:
    journal = Journal.load(tmp_path / "run")
    assert journal.steps == []
    assert not journal.unknown
    assert not journal


def test_steps_are_persisted_private_and_reloaded_in_order(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    journal = Journal(runtime)
    journal.record(LINK)
    journal.record(RULE)
    path = runtime / JOURNAL_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
    assert Journal.load(runtime).steps == [LINK, RULE]
    assert [p.name for p in runtime.iterdir()] == [JOURNAL_NAME], "no temporary files left"


def test_forgetting_every_step_removes_the_record(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.record(LINK)
    journal.record(RULE)
    journal.forget(RULE)
    assert Journal.load(tmp_path).steps == [LINK]
    journal.forget(LINK)
    assert not (tmp_path / JOURNAL_NAME).exists()


def test_forget_drops_only_the_newest_equal_step(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for step in (LINK, RULE, LINK):
        journal.record(step)
    journal.forget(LINK)
    assert Journal.load(tmp_path).steps == [LINK, RULE]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",
        json.dumps({"version": 99, "steps": []}).encode(),
        json.dumps({"version": 1, "steps": [{"no": "step"}]}).encode(),
        json.dumps([1, 2, 3]).encode(),
    ],
)
def test_a_corrupt_record_is_moved_aside_and_marked_unknown(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / JOURNAL_NAME).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="nordwgd.runstate"):
        journal = Journal.load(tmp_path)
    assert journal.unknown and journal.steps == []
    assert "unreadable" in caplog.text
    (aside,) = tmp_path.iterdir()
    assert aside.name.startswith(f"{JOURNAL_NAME}.corrupt-")
    assert aside.read_bytes() == content
    journal.clear()
    assert not journal


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "record"
    target.write_bytes(b"old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("nordwgd.files.os.fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, b"new", mode=0o600)
    assert target.read_bytes() == b"old"
    assert [entry.name for entry in tmp_path.iterdir()] == ["record"]
