"""The security suite's ledger: what every scenario ran, leaked, tried and survived.

Each scenario records into it through the ``ledger`` fixture; the suite prints one summary table
at the end of the run (see conftest.py). Leaked packets come from the world's leak monitor.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ScenarioRecord:
    name: str
    leaked: int = 0
    bad_inputs: int = 0
    faults: list[str] = field(default_factory=list)
    outcome: str = "running"


@dataclass
class Ledger:
    records: list[ScenarioRecord] = field(default_factory=list)

    def start(self, name: str) -> ScenarioRecorder:
        record = ScenarioRecord(name)
        self.records.append(record)
        return ScenarioRecorder(record)

    @property
    def leaked(self) -> int:
        return sum(r.leaked for r in self.records)

    @property
    def bad_inputs(self) -> int:
        return sum(r.bad_inputs for r in self.records)

    @property
    def faults(self) -> int:
        return sum(len(r.faults) for r in self.records if r.outcome == "passed")

    def table(self) -> list[str]:
        width = max([len(r.name) for r in self.records] + [len("scenario")])
        lines = [f"{'scenario':<{width}}  {'result':<7} {'leaked':>6} {'inputs':>6} {'faults':>6}"]
        for r in self.records:
            lines.append(
                f"{r.name:<{width}}  {r.outcome:<7} {r.leaked:>6} {r.bad_inputs:>6} "
                f"{len(r.faults):>6}"
            )
        passed = sum(1 for r in self.records if r.outcome == "passed")
        lines.append(
            f"scenarios run: {len(self.records)} (passed {passed}); packets leaked: {self.leaked}; "
            f"bad inputs tried: {self.bad_inputs}; faults survived: {self.faults}"
        )
        return lines


class ScenarioRecorder:
    """What one scenario adds to the ledger."""

    def __init__(self, record: ScenarioRecord) -> None:
        self._record = record

    def leaked(self, packets: int) -> None:
        """Add packets the leak monitor counted (the scenario should then assert it is 0)."""
        self._record.leaked += packets

    def bad_inputs(self, count: int = 1) -> None:
        self._record.bad_inputs += count

    def fault(self, description: str) -> None:
        """A fault injected that the daemon is expected to survive."""
        self._record.faults.append(description)

    def finish(self, outcome: str) -> None:
        self._record.outcome = outcome


LEDGER = Ledger()
