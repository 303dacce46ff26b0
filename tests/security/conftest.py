"""The security suite: every scenario records into one ledger, printed as a table at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.security.ledger import LEDGER, ScenarioRecorder


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        item.stash[_OUTCOME] = report.outcome
    return report


_OUTCOME = pytest.StashKey[str]()


@pytest.fixture
def ledger(request: pytest.FixtureRequest) -> Iterator[ScenarioRecorder]:
    recorder = LEDGER.start(request.node.name)
    yield recorder
    recorder.finish(request.node.stash.get(_OUTCOME, "error"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not LEDGER.records:
        return
    terminalreporter.section("nordwgd security suite")
    for line in LEDGER.table():
        terminalreporter.write_line(line)
