"""The UML suite: runs inside a user-mode Linux kernel that has WireGuard (scripts/check-uml).

Everything here exists to test kernel WireGuard, so inside this suite a missing WireGuard is a
failure and so is any skip: a skipped test would hide that the kernel path never ran.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nordwgd.wireguard.kernel import kernel_wireguard_problem


@pytest.fixture(scope="session", autouse=True)
def _kernel_wireguard() -> None:
    problem = kernel_wireguard_problem()
    if problem is not None:
        pytest.fail(f"the UML suite needs kernel WireGuard: {problem}", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped inside the UML suite, which must run everything: {report.longrepr}"
        )
