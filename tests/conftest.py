"""Shared test set-up: markers that need root skip with a clear reason when not root."""

from __future__ import annotations

import importlib.util
import os

import pytest

# Fixture modules shared by several test files (the namespaced test world, the private bus).
pytest_plugins = [
    name
    for name in ("tests.fixtures_world", "tests.fixtures_dbus")
    if importlib.util.find_spec(name) is not None
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, nftables, wireguard-go)")
    for item in items:
        if "root" in item.keywords or "nspawn" in item.keywords:
            item.add_marker(skip)
