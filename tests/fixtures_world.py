"""pytest fixtures for the namespaced test world (nordwgd.testing.world)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nordwgd.testing.world import World, cleanup_run


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, nftables, wireguard-go)")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A fresh world per test: host, router with fake API, web and DNS, 3 VPN servers."""
    _need_root()
    built = World.build(tmp_path / "world")
    try:
        yield built
    finally:
        built.close()


@pytest.fixture(scope="module")
def shared_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One world for a whole test module; tests must undo what they change in it."""
    _need_root()
    built = World.build(tmp_path_factory.mktemp("world"))
    try:
        yield built
    finally:
        built.close()


@pytest.fixture(scope="session", autouse=True)
def _world_leftovers() -> Iterator[None]:
    yield
    if os.geteuid() == 0:
        cleanup_run()
