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

# Suites with a runner of their own (scripts/check-<suite>: a UML kernel, desktop roots, package
# builds) stay out of the default run; their runner sets NORDWGD_SUITE to collect them.
SUITES_WITH_OWN_RUNNER = ("uml", "desktop", "package")
collect_ignore = [s for s in SUITES_WITH_OWN_RUNNER if os.environ.get("NORDWGD_SUITE") != s]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, nftables, wireguard-go)")
    for item in items:
        if "root" in item.keywords or "nspawn" in item.keywords:
            item.add_marker(skip)
