"""Every file nordwgd writes survives a crash whole: data fsynced before the rename, the
directory fsynced after it (and after a removal), the final mode from the first byte."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nordwgd import files
from nordwgd.config import Config, PathsConfig
from nordwgd.manager import Settings, save_settings, write_target
from nordwgd.model import Secret
from nordwgd.provider.nordvpn import catalog
from nordwgd.runstate import Journal
from nordwgd.target import Target
from nordwgd.testing.fleet import default_token
from nordwgd.token import delete_token, store_token


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """Every fsync, as (kind, path): "file" or "dir"."""
    seen: list[tuple[str, str]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        seen.append(("dir" if stat.S_ISDIR(mode) else "file", os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    yield seen


def _config(tmp_path: Path) -> Config:
    return Config(paths=PathsConfig(state_dir=tmp_path / "state", runtime_dir=tmp_path / "run"))


WRITERS: dict[str, Callable[[Path], Path]] = {
    "settings": lambda tmp: (
        save_settings(_config(tmp), Settings(True, False)),
        tmp / "state" / "settings.json",
    )[1],
    "target": lambda tmp: (
        write_target(_config(tmp), Target(options=(("country", "DE"),))),
        tmp / "run" / "target.json",
    )[1],
    "token": lambda tmp: store_token(tmp / "state", Secret(default_token())),
    "journal": lambda tmp: (
        (Journal(tmp / "run").record({"step": "link"}), tmp / "run")[1] / "connection.json"
    ),
    "catalog": lambda tmp: catalog.write_catalog({catalog.GROUPS: b"[]"}, tmp / "data")[0],
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_each_writer_syncs_the_file_then_its_directory(
    tmp_path: Path, synced: list[tuple[str, str]], writer: str
) -> None:
    path = WRITERS[writer](tmp_path)
    assert path.exists()
    directory = str(path.parent)
    kinds = [kind for kind, where in synced if kind == "file" or where == directory]
    assert kinds[-2:] == ["file", "dir"], synced
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_removals_sync_the_directory(tmp_path: Path, synced: list[tuple[str, str]]) -> None:
    config = _config(tmp_path)
    write_target(config, Target(options=(("country", "DE"),)))
    store_token(tmp_path / "state", Secret(default_token()))
    synced.clear()
    write_target(config, None)
    assert delete_token(tmp_path / "state")
    assert synced == [("dir", str(tmp_path / "run")), ("dir", str(tmp_path / "state"))]


def test_the_mode_holds_from_the_first_byte_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        files.write_atomic(tmp_path / "secret", b"x", mode=0o600)
        files.write_atomic(tmp_path / "public", b"y", mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "public").stat().st_mode) == 0o644
